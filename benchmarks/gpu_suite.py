"""The GPU suite's driver (run it through benchmarks/gpu_suite.sh): one table of

  - the DiT train step (the RL update's AR-target forward+backward) at the 8B width: hidden 2048,
    16 heads, 1560 tokens per latent (480x832), 20 context latents, ~2000 conditioning tokens,
    --layers of the 54 blocks, bf16, MFU against the peak (989 TFLOP/s dense bf16, H100/H200);
  - the AR chunk latency (one denoise step of a 4-latent chunk against the caches) and rollout
    candidates per second (G candidates denoised together, --steps Euler steps per chunk);
  - the causal VAE's decode time per latent frame (480x832, full channels);
  - the side by side against the PyTorch reference (benchmarks/side_by_side.py) with --reference.

--tiny runs every part at toy sizes on CPU (the CI test), installing and downloading nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_dit  # noqa: E402
import timing  # noqa: E402

H200_PEAK_TFLOPS = 989.0


def dit_rows(args, tiny: bool) -> list[dict]:
  if tiny:
    size = ["--hidden", "64", "--heads", "2", "--layers", "1", "--height", "4", "--width", "6", "--context", "4",
            "--text", "16"]
  else:
    size = ["--hidden", "2048", "--heads", "16", "--layers", str(args.layers), "--height", "30", "--width", "52",
            "--context", "20", "--text", "1985"]
  common = size + ["--paths", "ar", "--impls", args.impls, "--reps", str(args.reps), "--dtype", args.dtype]
  if args.peak_tflops:
    common += ["--peak-tflops", str(args.peak_tflops)]
  rows = bench_dit.main(common + ["--passes", "fwd,fwd+bwd"])
  group = bench_dit.main(common + ["--passes", "fwd", "--batch", str(args.group)])
  for r in group:
    r["candidates_per_s"] = round(args.group / (args.steps * r["median_ms"] / 1e3), 3)
  return rows + group


def vae_row(args, tiny: bool) -> dict:
  from wc_jax.models.vae import model as vae_model
  from wc_jax.models.vae.config import VAEConfig
  base = VAEConfig()
  div, (height, width) = (16, (32, 32)) if tiny else (1, (480, 832))
  dtype = args.dtype if args.dtype != "auto" else bench_dit.default_dtype()
  cfg = base.replace(block_out_channels=tuple(c // div for c in base.block_out_channels), dtype=dtype)
  h, w = height // cfg.ffactor_spatial, width // cfg.ffactor_spatial
  graphdef, state = nnx.split(vae_model.init_model(cfg, seed=0))
  step = jax.jit(lambda st, z, cache: nnx.merge(graphdef, st).decoder(z, cache))
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=(1, 1, h, w, cfg.latent_channels)), cfg.dtype)
  zc = jnp.asarray(rng.normal(size=(1, 4, h, w, cfg.latent_channels)), cfg.dtype)
  _, cache = jax.block_until_ready(step(state, z0, None))
  clip, compile_s = timing.timed(lambda: step.lower(state, zc, cache).compile())
  jax.block_until_ready(clip(state, zc, cache))
  st = timing.interleaved({"clip": lambda: jax.block_until_ready(clip(state, zc, cache))}, args.reps)["clip"]
  return dict(part="vae decode", frame=[height, width], channels=list(cfg.block_out_channels), dtype=dtype,
              compile_s=round(compile_s, 2), ms_per_latent=round(st["median_ms"] / 4, 2), **st)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tiny", action="store_true", help="toy sizes on CPU (the CI check)")
  p.add_argument("--reference", default="", help="a local HY-WorldPlay checkout: also run the side by side")
  p.add_argument("--layers", type=int, default=16, help="DiT blocks at the 8B width (54 in the model)")
  p.add_argument("--impls", default="", help="attention impls (default: cudnn,xla_flash on GPU, xla on CPU)")
  p.add_argument("--dtype", default="auto")
  p.add_argument("--group", type=int, default=12, help="rollout candidates denoised together")
  p.add_argument("--steps", type=int, default=40, help="Euler steps per rollout chunk")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--peak-tflops", type=float, default=None)
  p.add_argument("--json", default="", help="also write every row here")
  args = p.parse_args(argv)
  tiny = args.tiny
  gpu = jax.default_backend() == "gpu"
  if not args.impls:
    args.impls = "cudnn,xla_flash" if gpu else "xla"
  if gpu and not args.peak_tflops:
    args.peak_tflops = H200_PEAK_TFLOPS
  if tiny:
    args.group, args.steps, args.reps = 2, 2, min(args.reps, 3)
  t0 = time.perf_counter()
  dev = jax.devices()[0]
  print(f"# gpu suite on {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, tiny={tiny}, "
        f"load {timing.load():.2f}", flush=True)
  report = {"device": dev.device_kind, "tiny": tiny, "dit": dit_rows(args, tiny), "vae": vae_row(args, tiny)}
  if args.reference:
    import side_by_side
    sbs = ["--reference", args.reference, "--reps", str(args.reps)] + (["--tiny"] if tiny else [])
    try:   # torch (and the reference's few packages) must already be importable: nothing is installed
      report["side_by_side"] = side_by_side.main(sbs)
    except ImportError as e:
      print(f"# side by side skipped: {e} (set WC_JAX_TORCH_PATH to a folder with torch, einops, loguru, diffusers)")
  print("\n## summary")
  print("| part | impl | batch | median ms | min ms | spread | TFLOP/s | MFU | candidates/s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in report["dit"]:
    part = "DiT train step (ar fwd+bwd)" if r["pass_"] == "fwd+bwd" else "AR chunk denoise step (fwd)"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
    print(f"| {part} | {r['impl']} | {r['batch']} | {r['median_ms']} | {r['min_ms']} | {r['spread']} | "
          f"{r['tflops_per_s']} | {mfu} | {r.get('candidates_per_s', '-')} |")
  v = report["vae"]
  print(f"| VAE decode, 4 latents {v['frame'][0]}x{v['frame'][1]} | - | 1 | {v['median_ms']} | {v['min_ms']} | "
        f"{v['spread']} | - | - | - |")
  for r in report.get("side_by_side") or []:
    print(f"| side by side: {r['case']} (wc_jax / reference = {r['ratio']}) | {r['impl']} | 1 | {r['wc_jax']['median_ms']} | "
          f"{r['wc_jax']['min_ms']} | {r['wc_jax']['spread']} | - | - | - |")
  print(f"# total {time.perf_counter() - t0:.0f} s")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
