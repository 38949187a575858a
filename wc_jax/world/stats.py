"""Statistics of the study: paired bootstrap confidence intervals and headroom numbers.

Why paired: every model is evaluated on the same held-out trajectories with the same
initial noises, so the per-trajectory difference (after - before) removes the spread
between easy and hard trajectories, which is most of the variance of an accuracy.
The bootstrap resamples both levels the result should generalise over: the runs
(RL seeds, base seeds) and the trajectories (shared by every run, so one draw of
trajectory indices serves all runs).
"""
from __future__ import annotations

import numpy as np


def paired_bootstrap(after, before, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple:
  """Mean difference and its bootstrap CI.

  Args:
    after, before: [R, N] per-trajectory values of R runs on the same N trajectories
      (or [N]: one run). `before` may be [1, N] or [N] (one base for every run).
    n_boot: bootstrap draws; level: the CI's coverage.

  Returns:
    (mean, lo, hi) of mean(after - before) over runs and trajectories.
  """
  a = np.atleast_2d(np.asarray(after, np.float64))
  b = np.atleast_2d(np.asarray(before, np.float64))
  if a.shape[1:] != b.shape[1:] or b.shape[0] not in (1, a.shape[0]):
    raise ValueError(f"paired_bootstrap: after {a.shape} and before {b.shape} must be [R, N] on the same N "
                     f"trajectories (before [1, N] or [R, N])")
  if not 0.0 < level < 1.0:
    raise ValueError(f"paired_bootstrap: level must be in (0, 1), got {level}")
  d = a - b                                                                   # [R, N]
  r, n = d.shape
  rng = np.random.default_rng(seed)
  runs = rng.integers(0, r, (n_boot, r)) if r > 1 else np.zeros((n_boot, 1), np.int64)
  traj = rng.integers(0, n, (n_boot, n))
  # mean over a run draw x trajectory draw: average the run-resampled rows, then the columns
  rows = d[runs]                                                              # [B, R, N]
  stats = np.take_along_axis(rows, np.broadcast_to(traj[:, None, :], rows.shape), axis=2).mean((1, 2))
  lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
  return float(d.mean()), float(lo), float(hi)


def headroom(rewards, accuracy) -> dict:
  """Best-of-G numbers of G candidates per trajectory: rewards and judge accuracies [G, N].

  `within_corr` is what RL uses: the correlation of reward and accuracy after removing
  each trajectory's means (a pooled correlation also credits the reward for telling easy
  trajectories from hard ones, which no group advantage sees).
  """
  r = np.asarray(rewards, np.float64)
  acc = np.asarray(accuracy, np.float64)
  if r.shape != acc.shape or r.ndim != 2 or r.shape[0] < 2:
    raise ValueError(f"headroom: rewards and accuracy must both be [G >= 2, N], got {r.shape} and {acc.shape}")
  n = np.arange(r.shape[1])
  rc, ac = r - r.mean(0), acc - acc.mean(0)
  den = np.sqrt((rc ** 2).sum() * (ac ** 2).sum())
  return {"mean": float(acc.mean()), "best_by_reward": float(acc[r.argmax(0), n].mean()),
          "worst_by_reward": float(acc[r.argmin(0), n].mean()), "oracle": float(acc.max(0).mean()),
          "within_corr": float((rc * ac).sum() / den) if den > 0 else float("nan"),
          "pooled_corr": float(np.corrcoef(r.ravel(), acc.ravel())[0, 1]) if r.std() > 0 and acc.std() > 0
          else float("nan")}
