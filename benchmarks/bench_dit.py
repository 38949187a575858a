"""DiT throughput: forward and forward+backward of the AR target pass and the full forward.

    python benchmarks/bench_dit.py                       # CPU, reduced width
    python benchmarks/bench_dit.py --hidden 2048 --heads 16 --layers 4 --impls xla,cudnn   # GPU, 8B width

Times are over --reps calls (median, min and spread = (max - min) / median); compile is timed apart.
--dtype auto = bfloat16 on an accelerator (MFU is then against the bf16 peak), float32 on CPU.

Shapes follow the real model: 1560 tokens per latent frame (480x832), an AR chunk of 4
latents against 20 context latents (ar), or 24 latents chunk-causal (full). FLOPs come from
wc_jax.models.worldplay.flops (analytic: XLA's cost analysis counts a scanned layer once);
MFU = achieved model FLOP/s / --peak-tflops (known for GPUs/TPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.models.worldplay import flops as flops_lib
from wc_jax.models.worldplay.config import DiTConfig
from wc_jax.models.worldplay.model import TextCache, TextTokens, VisionCache, WorldPlayDiT, functional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402  (benchmarks/timing.py, beside this script)

PEAKS = {"cpu": None, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0,
         "TPU v6 lite": 918.0}


def make_inputs(cfg: DiTConfig, path: str, h: int, w: int, ctx: int, text_len: int, key, batch: int = 1):
  ks = jax.random.split(key, 8)
  dt = cfg.compute_dtype
  chunk, b = cfg.chunk_latents, batch
  frames = chunk if path == "ar" else ctx + chunk
  hs = jax.random.normal(ks[0], (b, cfg.in_channels, frames, h, w), jnp.float32)
  t = jnp.full((b, frames), 500.0)
  action = jnp.zeros((b, frames))
  vm = jnp.broadcast_to(jnp.eye(4), (b, frames, 4, 4))
  K = jnp.broadcast_to(jnp.array([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1.0]]), (b, frames, 3, 3))
  if path == "full":
    text = TextTokens(jax.random.normal(ks[1], (b, text_len, cfg.hidden_size), dt), jnp.ones((b, text_len), bool),
                      jax.random.normal(ks[2], (b, cfg.hidden_size), dt))
    return dict(hs=hs, t=t, action=action, vm=vm, K=K, text=text)
  # one text + context cache shared by every row (the rollout's G candidates share their clip's caches)
  L, H, D = cfg.depth, cfg.heads, cfg.head_dim
  n = ctx * h * w
  tc = TextCache(jax.random.normal(ks[3], (L, 1, text_len, H, D), dt), jax.random.normal(ks[4], (L, 1, text_len, H, D), dt),
                 jnp.ones((1, text_len), bool))
  vc = VisionCache(jax.random.normal(ks[5], (L, 2, 1, n, H, D), dt), jax.random.normal(ks[6], (L, 2, 1, n, H, D), dt),
                   jnp.ones((1, n), bool), jnp.array([ctx], jnp.int32))
  return dict(hs=hs, t=t, action=action, vm=vm, K=K, tc=tc, vc=vc)


def build_fns(apply, path):
  def fwd(state, x):
    if path == "full":
      return apply(state, "forward", x["hs"], x["t"], x["text"], action=x["action"], viewmats=x["vm"], Ks=x["K"],
                   causal=True)
    return apply(state, "denoise_chunk", x["hs"], x["t"], x["action"], x["vm"], x["K"], x["tc"], x["vc"])

  def loss(state, x):
    return jnp.mean(jnp.square(fwd(state, x).astype(jnp.float32)))

  return jax.jit(fwd), jax.jit(jax.grad(loss))


def compile_fn(fn, *args):
  """(compiled, compile seconds, first-call seconds)."""
  compiled, secs = timing.timed(lambda: fn.lower(*args).compile())
  _, first = timing.timed(lambda: jax.block_until_ready(compiled(*args)))
  return compiled, secs, first


def default_dtype() -> str:
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--height", type=int, default=30)
  p.add_argument("--width", type=int, default=52)
  p.add_argument("--context", type=int, default=20)
  p.add_argument("--text", type=int, default=256, help="conditioning tokens (8B: up to ~2000)")
  p.add_argument("--batch", type=int, default=1, help="rows per call (ar: rollout candidates denoised together)")
  p.add_argument("--dtype", default="auto", help="auto = bfloat16 on an accelerator, float32 on CPU")
  p.add_argument("--impls", default="xla,xla_flash")
  p.add_argument("--paths", default="ar,full")
  p.add_argument("--passes", default="fwd,fwd+bwd")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--peak-tflops", type=float, default=None)
  p.add_argument("--json", default="", help="also write the rows here")
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  peak = args.peak_tflops or PEAKS.get(getattr(dev, "device_kind", "cpu"))
  dtype = default_dtype() if args.dtype == "auto" else args.dtype
  head_dim = args.hidden // args.heads
  dt = head_dim // 8
  rope_dims = (dt, (head_dim - dt) // 2, head_dim - dt - (head_dim - dt) // 2)
  if any(r % 2 for r in rope_dims):
    rope_dims = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
  print(f"# command: python benchmarks/bench_dit.py {' '.join(argv if argv is not None else sys.argv[1:])}")
  print(f"# device: {dev.device_kind} x{len(jax.devices())}  hidden={args.hidden} heads={args.heads} "
        f"layers={args.layers} tokens/frame={args.height * args.width} ctx={args.context} batch={args.batch} "
        f"dtype={dtype} reps={args.reps} load={timing.load():.2f}")
  print(f"{'impl':10s} {'path':5s} {'pass':8s} {'median ms':>10s} {'min ms':>10s} {'spread':>7s} {'compile s':>9s} "
        f"{'TFLOP':>8s} {'TFLOP/s':>8s}" + ("  MFU" if peak else ""))
  rows = []
  for impl in args.impls.split(","):
    cfg = DiTConfig(latent_channels=32, out_channels=32, hidden_size=args.hidden, heads=args.heads, depth=args.layers,
                    rope_dims=rope_dims, text_dim=64, byt5_in_dim=32, byt5_hidden_dim=64, byt5_out_dim=64,
                    vision_dim=32, dtype=dtype, attention_impl=impl, remat_policy="full")
    model = WorldPlayDiT(cfg, rngs=nnx.Rngs(0))
    apply, state = functional(model)
    for path in args.paths.split(","):
      x = make_inputs(cfg, path, args.height, args.width, args.context, args.text, jax.random.key(0), args.batch)
      fwd, grad = build_fns(apply, path)
      tpf = args.height * args.width
      if path == "ar":
        fwd_flops = flops_lib.ar_chunk_flops(cfg, tpf, cfg.chunk_latents, args.context, args.text, args.batch)
      else:
        fwd_flops = flops_lib.full_flops(cfg, tpf, args.context + cfg.chunk_latents, args.text, True, args.batch)
      # model FLOPs (fwd+bwd = 3x forward; the remat recompute is not counted, as in MFU)
      wanted = [(n, f, fl) for n, f, fl in (("fwd", fwd, fwd_flops), ("fwd+bwd", grad, 3 * fwd_flops))
                if n in args.passes.split(",")]
      compiled = {n: compile_fn(f, state, x) for n, f, _ in wanted}
      stats = timing.interleaved({n: (lambda c=compiled[n][0]: jax.block_until_ready(c(state, x)))
                                  for n, _, _ in wanted}, args.reps)
      for name, _, flops in wanted:
        st = stats[name]
        secs = st["median_ms"] / 1e3
        tflops = flops / secs / 1e12
        row = dict(impl=impl, path=path, pass_=name, batch=args.batch, dtype=dtype, **st,
                   compile_s=round(compiled[name][1], 2), tflop=round(flops / 1e12, 4),
                   tflops_per_s=round(tflops, 3), mfu=round(tflops / peak, 4) if peak else None)
        rows.append(row)
        print(f"{impl:10s} {path:5s} {name:8s} {st['median_ms']:10.1f} {st['min_ms']:10.1f} {st['spread']:7.2f} "
              f"{row['compile_s']:9.1f} {row['tflop']:8.3f} {row['tflops_per_s']:8.3f}"
              + (f"  {row['mfu']:.1%}" if peak else ""))
  print(json.dumps(rows))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(dict(device=dev.device_kind, load=timing.load(), rows=rows), f, indent=1)
  return rows


if __name__ == "__main__":
  main()
