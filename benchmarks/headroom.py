"""How much can RL gain? Best-of-G selection by the reward, scored by the judge.

WorldCompass RL distils the reward's preference among G candidates into the policy, so
the judge's accuracy of the candidate the reward ranks first (best-of-G) is a rough
ceiling for what one round of RL can reach, and the correlation between reward and
judge says whether the reward is informative at all. Run after benchmarks/reproduce.py
(it reads the workdir's base model, latent map and IDMs):

    python benchmarks/headroom.py --workdir=/tmp/wc_repro [--candidates=8] [--trajectories=16]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import reproduce as RP  # noqa: E402
from wc_jax.rewards.idm import idm_reward  # noqa: E402
from wc_jax.world import evaluate as E  # noqa: E402
from wc_jax.world import reward as R  # noqa: E402
from wc_jax.world.latent import PatchLatent  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default=str(REPO / "configs" / "synthetic.py"))
  ap.add_argument("--workdir", default="/tmp/wc_repro")
  ap.add_argument("--checkpoint", default="", help="model to sample (default: the workdir's base model)")
  ap.add_argument("--candidates", type=int, default=8)
  ap.add_argument("--trajectories", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  cfg = RP.load_config(args.config)
  wd = pathlib.Path(args.workdir)
  for need in ("base/latent.json", "idm_reward.npz", "idm_judge.npz"):
    if not (wd / need).exists():
      raise SystemExit(f"headroom: {wd / need} is missing; run benchmarks/reproduce.py --workdir={wd} first")
  latent = PatchLatent.from_dict(json.loads((wd / "base" / "latent.json").read_text()))
  apply, params = RP.params_of(cfg, args.checkpoint or str(wd / "base" / "model"))
  reward_idm, judge = R.load_idm(wd / "idm_reward.npz", cfg), R.load_idm(wd / "idm_judge.npz", cfg)
  horizon = int(cfg.model.chunk_latents * cfg.rl.max_clip)
  clips = E.eval_clips(cfg, args.seed, args.trajectories, horizon)
  acts = jnp.asarray(clips.actions, jnp.int32)
  rewards, accs = [], []
  for g in range(args.candidates):
    frames = E.rollout(apply, params, cfg, latent, clips, 1000 * args.seed + 100 + g)
    rewards.append(np.asarray(jax.vmap(lambda f, a: idm_reward(f, a, reward_idm))(jnp.asarray(frames), acts)))
    pred = np.asarray(R.predicted_actions(judge, jnp.asarray(frames)))
    accs.append(100 * (pred == clips.actions[:, 1:]).mean(-1))
  r, acc = np.stack(rewards), np.stack(accs)                       # [G, N]
  n = np.arange(r.shape[1])
  rows = {"mean candidate": acc.mean(), f"best of {args.candidates} by reward": acc[r.argmax(0), n].mean(),
          f"worst of {args.candidates} by reward": acc[r.argmin(0), n].mean(),
          f"best of {args.candidates} by the judge (oracle)": acc.max(0).mean()}
  print(f"| judge exact action accuracy (%), {args.trajectories} held-out trajectories x {horizon} latents | |")
  print("|---|---|")
  for k, v in rows.items():
    print(f"| {k} | {v:.1f} |")
  print(f"\ncorrelation(reward, judge accuracy) over candidates: {np.corrcoef(r.ravel(), acc.ravel())[0, 1]:.2f}; "
        f"reward within-group std {r.std(0).mean():.2f}")
  print(f"command: python benchmarks/headroom.py --workdir={args.workdir} --candidates={args.candidates} "
        f"--trajectories={args.trajectories}")


if __name__ == "__main__":
  main()
