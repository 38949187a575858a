"""Decode time and peak memory per latent frame of the causal VAE, chunked vs whole.

    python benchmarks/bench_vae.py [--height 480 --width 832 --width-div 8 --chunk 4 --clips 2]

Builds the HunyuanVideo-1.5 VAE architecture with every block's channels
divided by --width-div (latent channels stay 32), random weights, and decodes
a video the way WorldCompass does: the first latent alone (start of the
video), then clips of --chunk latents, each against the carried cache. It
reports compile time, steady-state seconds per latent frame, XLA's peak
buffer estimate of one step, and, for contrast, the same estimate for decoding
the whole video in one call (compiled only, not run), which grows with length.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.vae import model as vae_model
from wc_jax.models.vae.config import VAEConfig


def _mib(n: int) -> float:
  return n / 2**20


def _peak(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:  # some backends report nothing
    return {}
  out = {"temp_mib": _mib(m.temp_size_in_bytes), "args_mib": _mib(m.argument_size_in_bytes),
         "out_mib": _mib(m.output_size_in_bytes)}
  out["peak_mib"] = out["temp_mib"] + out["args_mib"] + out["out_mib"] - _mib(m.alias_size_in_bytes)
  # what the step needs beyond the weights and its inputs: scratch + outputs (frames, new cache)
  out["activation_mib"] = out["temp_mib"] + out["out_mib"]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--width-div", type=int, default=8, help="divide every block's channel count by this")
  p.add_argument("--chunk", type=int, default=4, help="latents per decode call after the first")
  p.add_argument("--clips", type=int, default=2, help="how many chunks to decode after the first latent")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--json", default=None, help="also write the figures here")
  args = p.parse_args(argv)

  base = VAEConfig()
  cfg = base.replace(block_out_channels=tuple(c // args.width_div for c in base.block_out_channels),
                     dtype=args.dtype, param_dtype=args.dtype)
  h, w = args.height // cfg.ffactor_spatial, args.width // cfg.ffactor_spatial
  model = vae_model.init_model(cfg, seed=0)
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, z, cache):
    return nnx.merge(graphdef, state).decoder(z, cache)

  rng = np.random.default_rng(0)
  z_first = jnp.asarray(rng.normal(size=(1, 1, h, w, cfg.latent_channels)), cfg.dtype)
  z_clip = jnp.asarray(rng.normal(size=(1, args.chunk, h, w, cfg.latent_channels)), cfg.dtype)

  t = time.perf_counter()
  first_c = step.lower(state, z_first, None).compile()
  compile_first = time.perf_counter() - t
  t = time.perf_counter()
  frames, cache = first_c(state, z_first, None)
  jax.block_until_ready(frames)
  time_first = time.perf_counter() - t

  t = time.perf_counter()
  clip_c = step.lower(state, z_clip, cache).compile()
  compile_clip = time.perf_counter() - t
  clip_times = []
  for _ in range(args.clips):
    t = time.perf_counter()
    frames, cache = clip_c(state, z_clip, cache)
    jax.block_until_ready(frames)
    clip_times.append(time.perf_counter() - t)
  rss_after_chunked = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

  whole = {}
  for n in sorted({1 + args.chunk, 1 + args.chunk * args.clips, 1 + 2 * args.chunk * args.clips}):
    zw = jax.ShapeDtypeStruct((1, n, h, w, cfg.latent_channels), jnp.dtype(cfg.dtype))
    whole[n] = _peak(step.lower(state, zw, None).compile())

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  cache_mib = _mib(sum(x.nbytes for x in jax.tree.leaves(cache)))
  per_latent = min(clip_times) / args.chunk
  report = {
      "device": str(jax.devices()[0].platform),
      "frame": [args.height, args.width], "latent": [h, w], "block_out_channels": list(cfg.block_out_channels),
      "dtype": cfg.dtype, "params_m": n_params / 1e6, "chunk_latents": args.chunk,
      "compile_s": {"first_latent": compile_first, "clip": compile_clip},
      "first_latent_s": time_first, "clip_s": clip_times, "s_per_latent_frame": per_latent,
      "s_per_video_frame": per_latent / cfg.ffactor_temporal,
      "step_memory": {"first_latent": _peak(first_c), "clip": _peak(clip_c)},
      "step_activation_mib_per_latent": _peak(clip_c).get("activation_mib", float("nan")) / args.chunk,
      "cache_mib": cache_mib,
      "whole_video_memory_by_latents": whole,
      "process_max_rss_mib": rss_after_chunked,
  }
  print(json.dumps(report, indent=1))
  clip_mem = report["step_memory"]["clip"]
  print(f"decode {args.height}x{args.width}, channels {list(cfg.block_out_channels)} ({cfg.dtype}, "
        f"{jax.devices()[0].platform}): {per_latent:.2f} s per latent frame in clips of {args.chunk}; "
        f"one clip step: peak {clip_mem.get('peak_mib', float('nan')):.0f} MiB, activations "
        f"{clip_mem.get('activation_mib', float('nan')):.0f} MiB "
        f"({report['step_activation_mib_per_latent']:.0f} MiB per latent, cache {cache_mib:.0f} MiB), "
        f"whatever the video length; whole-video decode activations: "
        + ", ".join(f"{v.get('activation_mib', float('nan')):.0f} MiB for {k} latents" for k, v in whole.items()),
        file=sys.stderr)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
