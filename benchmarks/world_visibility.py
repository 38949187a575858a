"""How visible each motion primitive of the synthetic world is: the mean squared pixel change
of a candidate motion's render against standing still (and of yaw against strafe), over
held-out clips. A motion the renders barely show is one a small base cannot learn.

    python benchmarks/world_visibility.py                                   # configs/synthetic.py
    python benchmarks/world_visibility.py --wall_panel=1.5 --sky_contrast=0.5
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import pathlib

import numpy as np

from wc_jax.world import data as D
from wc_jax.world import judge as J
from wc_jax.world.base_train import world_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def visibility(wcfg: D.WorldConfig, clips: int = 16, latents: int = 6, seed: int = 777) -> dict:
  c = D.make_clips(clips, latents, range(10000, 10000 + clips), seed, wcfg)
  r = J.candidate_renders(c, wcfg)
  f = r.frames.astype(np.float32) / 255.0
  idx = {n: k for k, n in enumerate(r.names)}
  vs = lambda a, b: float(np.square(f[:, :, idx[a]] - f[:, :, idx[b]]).mean())
  out = {f"{n} vs still": vs(n, J.STILL) for n in r.names if n != J.STILL}
  out.update({"right vs d": vs("right", "d"), "left vs a": vs("left", "a")})
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default=str(REPO / "configs" / "synthetic.py"))
  ap.add_argument("--wall_panel", type=float, default=None)
  ap.add_argument("--sky_contrast", type=float, default=None)
  args = ap.parse_args()
  spec = importlib.util.spec_from_file_location("cfg", args.config)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  wcfg = world_config(mod.get_config())
  over = {k: v for k, v in (("wall_panel", args.wall_panel), ("sky_contrast", args.sky_contrast)) if v is not None}
  wcfg = dataclasses.replace(wcfg, **over)
  print(f"world: wall_panel={wcfg.wall_panel} sky_contrast={wcfg.sky_contrast}")
  print("| render vs … | mean squared change |\n|---|---|")
  for k, v in visibility(wcfg).items():
    print(f"| {k} | {v:.4f} |")


if __name__ == "__main__":
  main()
