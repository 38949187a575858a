"""Throughput of the conditioning encoders and the HPSv3 reward at a mid size (random weights).

    python benchmarks/bench_encoders.py [--repeats 5 --layers 2 --dtype float32 --json out.json]

What runs (one call = what write_records / the reward stage runs per item):
  qwen25vl_text  the Qwen2.5-VL text path on one templated prompt: 1000 + 108 tokens
                 (max_length + video crop_start, every position runs, padding included);
                 width 512 (real 3584), ffn 2048 (18944), 8 heads / 2 KV (28 / 4), --layers
                 decoder layers (real 26 kept of 28), vocabulary 4096 (real 152064; the lookup
                 cost does not depend on it).                          -> tokens/s
  byt5           the ByT5 encoder on one 256-byte glyph text: width 736 (byt5-small 1472),
                 6 heads of 64, gated-gelu ffn 1792 (3584), 2 x --layers layers (12).  -> tokens/s
  siglip         `encode_reference_image` on one 480x832 uint8 image: the 480p bucket
                 LANCZOS resize + crop and the processor's bicubic resize (NumPy), then the
                 tower at 384 px / patch 14 = 729 tokens, width 576 (1152), ffn 2152
                 (4304), 8 heads (16), --layers layers (27).              -> images/s
  hpsv3          `HPSv3Scorer` under jit on 2 float frames 480x832, WorldCompass's quality prompt:
                 processor (bicubic to 336x588, 252 visual tokens per image), Qwen2-VL
                 vision tower width 320 (1280), 5 heads (16), --layers blocks (32); LM width
                 512 (3584), --layers layers (28), the real 151658-row vocabulary (the
                 prompt's ids are real ids).                               -> images/s

Compile time is reported apart: the first call (trace + compile + one run). Then
--repeats rounds, each timing one call of every model in turn (interleaved, so a load
change on a shared machine hits all of them alike); the table gives the median, the min
and the spread (max - min) / median of the per-call seconds, and throughput at the median.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


def _qwen(layers: int, dtype: str):
  from wc_jax.models.encoders.qwen_text import MAX_LENGTH, QwenTextConfig, QwenTextEncoder
  from wc_jax.models.qwen2vl.language import Qwen2LMConfig
  lm = Qwen2LMConfig(vocab_size=4096, hidden_size=512, intermediate_size=2048, num_hidden_layers=layers,
                     num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12), dtype=dtype)
  cfg = QwenTextConfig(lm=lm, num_hidden_layers_full=layers + 2, max_length=MAX_LENGTH, crop_start=108)
  model = QwenTextEncoder(cfg, rngs=nnx.Rngs(0))
  n = cfg.sequence_length
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, 4096, (1, n)), jnp.int32)
  mask = jnp.asarray((np.arange(n) < 300)[None], jnp.int32)          # a 190-token prompt, then padding
  run = nnx.jit(lambda m, i, k: m(i, k))
  return (lambda: run(model, ids, mask)), n, "tokens/s", f"width 512, {layers} layers, {n} tokens"


def _byt5(layers: int, dtype: str):
  from wc_jax.models.encoders.t5 import T5Config, T5Encoder
  cfg = T5Config(d_model=736, d_kv=64, d_ff=1792, num_heads=6, num_layers=2 * layers, dtype=dtype)
  model = T5Encoder(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(3, 259, (1, 256)), jnp.int32)
  mask = jnp.ones((1, 256), jnp.int32)
  run = nnx.jit(lambda m, i, k: m(i, k))
  return (lambda: run(model, ids, mask)), 256, "tokens/s", f"width 736, {2 * layers} layers, 256 tokens"


def _siglip(layers: int, dtype: str):
  from wc_jax.models.encoders.conditioning import encode_reference_image
  from wc_jax.models.encoders.siglip import SiglipConfig, SiglipVisionTower
  cfg = SiglipConfig(hidden_size=576, intermediate_size=2152, num_hidden_layers=layers, num_attention_heads=8,
                     dtype=dtype)
  model = SiglipVisionTower(cfg, rngs=nnx.Rngs(0))
  image = np.random.default_rng(2).integers(0, 256, (480, 832, 3), dtype=np.uint8)
  return (lambda: encode_reference_image(model, image, cfg=False)), 1, "images/s", \
      f"width 576, {layers} layers, 729 tokens, resize incl."


def _hpsv3(layers: int, dtype: str):
  try:
    from wc_jax.models.qwen2vl import hpsv3 as hm
    from wc_jax.models.qwen2vl.language import Qwen2LMConfig
    from wc_jax.models.qwen2vl.vision import VisionConfig
    from wc_jax.rewards.hpsv3 import HPSv3Scorer, random_hpsv3
  except ImportError:
    return None
  text = Qwen2LMConfig(vocab_size=151658, hidden_size=512, intermediate_size=2048, num_hidden_layers=layers,
                       num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12), dtype=dtype)
  vision = VisionConfig(depth=layers, embed_dim=320, num_heads=5, intermediate_size=1280, out_hidden_size=512,
                        dtype=dtype)
  model = random_hpsv3(hm.HPSv3Config(text=text, vision=vision), seed=0)
  scorer = HPSv3Scorer(model)
  frames = jnp.asarray(np.random.default_rng(3).random((2, 480, 832, 3)), jnp.float32)
  run = nnx.jit(lambda s, f: s(f))          # as the reward stage traces it
  return (lambda: run(scorer, frames)), 2, "images/s", f"LM 512 x {layers}, vision 320 x {layers}, 2 frames/call"


BENCHES = {"qwen25vl_text": _qwen, "byt5": _byt5, "siglip": _siglip, "hpsv3": _hpsv3}


def _timed(fn) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--layers", type=int, default=2, help="transformer layers of each model (ByT5: twice)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BENCHES))
  p.add_argument("--json", default=None, help="also write the figures here")
  a = p.parse_args(argv)
  if a.repeats < 5:
    print(f"note: --repeats {a.repeats} < 5 gives a weak median", file=sys.stderr)
  names = [n for n in BENCHES if not a.only or n in a.only.split(",")]
  print("command: python benchmarks/bench_encoders.py " + " ".join(argv if argv is not None else sys.argv[1:]))
  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), {len(jax.devices())} device(s), "
        f"dtype {a.dtype}, random weights")
  benches, compile_s = {}, {}
  for name in names:
    made = BENCHES[name](a.layers, a.dtype)
    if made is None:
      print(f"{name}: skipped (not importable)")
      continue
    benches[name] = made
    compile_s[name] = _timed(made[0])
  times = {n: [] for n in benches}
  for _ in range(a.repeats):
    for name, (fn, *_rest) in benches.items():
      times[name].append(_timed(fn))
  rows = {}
  print(f"\n{'model':<14} {'size':<44} {'first call s':>12} {'median s':>9} {'min s':>8} {'spread':>7} "
        f"{'throughput':>18}")
  for name, (_, units, unit, size) in benches.items():
    t = np.asarray(times[name])
    med = float(np.median(t))
    row = dict(size=size, compile_s=compile_s[name], median_s=med, min_s=float(t.min()),
               spread=float((t.max() - t.min()) / med), throughput=units / med, unit=unit, times=t.tolist())
    rows[name] = row
    print(f"{name:<14} {size:<44} {row['compile_s']:>12.2f} {med:>9.3f} {row['min_s']:>8.3f} "
          f"{row['spread']:>6.0%} {row['throughput']:>9.1f} {unit:<8}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(dict(args=vars(a), backend=jax.default_backend(), rows=rows), f, indent=2)
  return rows


if __name__ == "__main__":
  main()
