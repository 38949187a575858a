"""What a synthetic-world base can and cannot do, beyond the capability gate's one number.

    python benchmarks/base_probe.py --config=configs/synthetic.py:lowpass --base=W/base --workdir=W

Three measurements on the held-out set of `--eval_seed` (cached in the workdir like the study's):
  judge    the render-and-compare judge on ground truth degraded without moving it (pixel noise,
           4x4-token blotches, blur) and on a copy of the previous frame: whether the judge or the
           base's motion is what fails;
  sampled  the base's AR videos at 1x (the capability gate's numbers, per primitive);
  x0       the base's one-shot x0 prediction of latents 1..chunk-1 from noise level sigma (1.0: pure
           noise, the first frame as the i2v condition), judged like a video: what the base knows
           about the motion before sampling adds its own choices.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import uniform_filter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce as RP  # noqa: E402
from wc_jax.world import base_train as B  # noqa: E402
from wc_jax.world import data as D  # noqa: E402
from wc_jax.world import evaluate as E  # noqa: E402
from wc_jax.world import judge as J  # noqa: E402
from wc_jax.world.latent import PatchLatent  # noqa: E402


def judged(frames, clips, renders) -> tuple[float, dict]:
  """(exact %, per-primitive exact %) of frames [N, L, H, W, 3] over steps 1..L-1."""
  steps = frames.shape[1] - 1
  sub = J.CandidateRenders(renders.frames[:, :steps], renders.labels[:, :steps], renders.names,
                           renders.commanded[:, :steps])
  pred, _ = J.judge(frames, sub)
  ok = pred == clips.actions[:, 1:steps + 1]
  cmd = sub.commanded
  prim = {n: round(100 * float(ok[cmd == i].mean())) for i, n in enumerate(sub.names) if (cmd == i).any()}
  return 100 * float(ok.mean()), prim


def x0_prediction(apply, params, cfg, latent, clips, sigma: float, seed: int) -> np.ndarray:
  """Frames of the one-shot x0 prediction at noise level sigma of the first chunk (frame 0: truth)."""
  chunk = int(cfg.model.chunk_latents)
  x0 = jnp.asarray(latent.encode(clips.frames[:, :chunk]))
  n = x0.shape[0]
  cond = B.build_cond(x0[:, :, 0], chunk)
  states = {k: jnp.asarray(v) for k, v in D.conditioning(cfg.model, cfg.text).items()}
  text = B.encode_text_tokens(apply, params, states)
  text = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape[1:]), text)
  x_t = (1 - sigma) * x0 + sigma * jax.random.normal(jax.random.key(seed), x0.shape)
  v = apply(params, "forward", jnp.concatenate([x_t, cond], 1), jnp.full((n, chunk), 1000.0 * sigma), text,
            action=jnp.asarray(clips.actions[:, :chunk], jnp.float32), viewmats=jnp.asarray(clips.w2c[:, :chunk]),
            Ks=jnp.asarray(clips.Ks[:, :chunk]), causal=True)
  frames = np.array(latent.decode(x_t - sigma * v))
  frames[:, 0] = clips.frames[:, 0]
  return frames


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=str(RP.REPO / "configs" / "synthetic.py") + ":lowpass", help="path[:variant]")
  ap.add_argument("--base", required=True, help="a base folder: model/ and latent.json (base_train's workdir)")
  ap.add_argument("--workdir", required=True, help="where the held-out set is cached")
  ap.add_argument("--eval_seed", type=int, default=0)
  ap.add_argument("--trajectories", type=int, default=48)
  ap.add_argument("--sigmas", default="1.0", help="comma-separated noise levels of the x0 probe")
  args = ap.parse_args(argv)
  cfg = RP.load_config(args.config)
  base = pathlib.Path(args.base)
  if not (base / "model").is_dir() or not (base / "latent.json").is_file():
    raise SystemExit(f"base_probe: {base} has no model/ and latent.json (a base_train workdir)")
  wd = pathlib.Path(args.workdir)
  wd.mkdir(parents=True, exist_ok=True)
  horizon = int(cfg.model.chunk_latents) * int(cfg.rl.max_clip)
  clips, renders = RP.stage_eval_set(cfg, wd, args.eval_seed, args.trajectories, horizon, print)
  rng = np.random.default_rng(args.eval_seed)
  gt = clips.frames
  h, w = gt.shape[2:4]
  p = int(cfg.world.patch)
  blotch = rng.standard_normal(gt.shape[:2] + (h // p, w // p, 3)).repeat(p, 2).repeat(p, 3)
  previous = gt.copy()
  previous[:, 1:] = gt[:, :-1]
  print("| judge input | exact (%) | PSNR to truth (dB) |\n|---|---|---|")
  for name, frames in (("ground truth", gt),
                       ("+ pixel noise 0.1", np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)),
                       ("+ pixel noise 0.2", np.clip(gt + 0.2 * rng.standard_normal(gt.shape), 0, 1)),
                       ("+ token blotches 0.15", np.clip(gt + 0.15 * blotch, 0, 1)),
                       ("blurred (5x5 box)", uniform_filter(gt, size=(1, 1, 5, 5, 1))),
                       ("previous frame (no motion)", previous)):
    exact, _ = judged(frames, clips, renders)
    print(f"| {name} | {exact:.1f} | {np.mean(J.psnr(frames, gt)[:, 1:]):.1f} |")
  apply, params = RP.params_of(cfg, base / "model")
  latent = PatchLatent.from_dict(json.loads((base / "latent.json").read_text()))
  frames = E.rollout(apply, params, cfg, latent, clips, args.eval_seed)
  exact, prim = judged(frames, clips, renders)
  print(f"\nsampled at 1x ({horizon} latents): exact {exact:.1f} %, PSNR {np.mean(J.psnr(frames, gt)[:, 1:]):.2f} dB, "
        f"per primitive {prim}")
  for sigma in (float(s) for s in args.sigmas.split(",")):
    x0 = x0_prediction(apply, params, cfg, latent, clips, sigma, args.eval_seed)
    exact, prim = judged(x0, clips, renders)
    print(f"x0 prediction at sigma {sigma}: exact {exact:.1f} %, per primitive {prim}")


if __name__ == "__main__":
  main()
