"""How much can RL gain? Best-of-G selection by the reward, scored by the render-and-compare judge.

WorldCompass RL distils the reward's preference among G candidates into the policy, so
the judge's accuracy of the candidate the reward ranks first (best-of-G) is a rough
ceiling for what one round of RL can reach, and the within-group correlation between
reward and judge (what a group advantage sees) says whether the reward is informative.
The study's headroom gate: best-of-G by reward >= +25 points over a random candidate and
within-group correlation >= 0.5. Uses benchmarks/reproduce.py's cached stages (the base
model: the workdir's or the committed one; IDMs; held-out set):

    python benchmarks/headroom.py --workdir=/tmp/wc_repro [--candidates=12] [--trajectories=64] [--eval_seed=0]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import reproduce as RP  # noqa: E402
from wc_jax.world import stats as S  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default=str(REPO / "configs" / "synthetic.py") + ":lowpass",
                  help="path[:variant]; the default variant has a committed base (benchmarks/assets)")
  ap.add_argument("--workdir", default="/tmp/wc_repro")
  ap.add_argument("--base_seed", type=int, default=0)
  ap.add_argument("--candidates", type=int, default=0, help="G (default: study.best_of)")
  ap.add_argument("--trajectories", type=int, default=0, help="held-out trajectories (default: eval.trajectories)")
  ap.add_argument("--eval_seed", type=int, default=0)
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args(argv)
  cfg = RP.load_config(args.config)
  if args.quick:
    cfg = RP.quick(cfg)
  if args.candidates:
    if args.candidates < 2:
      raise SystemExit(f"headroom: --candidates must be >= 2, got {args.candidates}")
    cfg.study.best_of = args.candidates
  wd = pathlib.Path(args.workdir)
  wd.mkdir(parents=True, exist_ok=True)
  log = print
  base = RP.stage_base(cfg, wd, args.base_seed, log)
  idms = RP.stage_idms(cfg, wd, log)
  h = int(cfg.model.chunk_latents * cfg.rl.max_clip)
  n = int(args.trajectories or cfg.eval.trajectories)
  clips, renders = RP.stage_eval_set(cfg, wd, args.eval_seed, n, h, log)
  bo = RP.stage_best_of(cfg, wd, base, args.base_seed, idms, clips, renders, args.eval_seed, log)
  hr = S.headroom(bo["score"], bo["exact"])
  g = cfg.study.best_of
  print(f"\n| render-judge exact action accuracy (%), {n} held-out trajectories x {h} latents | |")
  print("|---|---|")
  for k, label in (("mean", "mean candidate"), ("best_by_reward", f"best of {g} by reward"),
                   ("worst_by_reward", f"worst of {g} by reward"), ("oracle", f"best of {g} by the judge (oracle)")):
    print(f"| {label} | {hr[k]:.1f} |")
  print(f"\nwithin-group correlation(reward, judge accuracy) {hr['within_corr']:.2f} (pooled {hr['pooled_corr']:.2f}); "
        f"gate (best-of-{g} >= +25, within >= 0.5): "
        f"{'met' if hr['best_by_reward'] - hr['mean'] >= 25 and hr['within_corr'] >= 0.5 else 'not met'}")
  print(f"command: python benchmarks/headroom.py --workdir={args.workdir} --candidates={g} --trajectories={n} "
        f"--eval_seed={args.eval_seed}" + (" --quick" if args.quick else ""))
  return hr


if __name__ == "__main__":
  main()
