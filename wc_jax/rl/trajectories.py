"""A small commanded-trajectory sampler for the RL loop's synthetic data.

Per latent: one of forward / backward / left / right / yaw / pitch moves (0.1 translation,
2 degrees rotation) in segments, turned into w2c poses; labels follow from the poses with
the dataset's labeller, so commanded labels and cameras always agree.
"""
from __future__ import annotations

import numpy as np

from wc_jax.rewards.labels import gt_action_labels

_MOVES = {
    "w": (np.array([0, 0, 0.1]), None), "s": (np.array([0, 0, -0.1]), None),
    "d": (np.array([0.1, 0, 0]), None), "a": (np.array([-0.1, 0, 0]), None),
    "right": (None, ("y", 2.0)), "left": (None, ("y", -2.0)), "up": (None, ("x", 2.0)), "down": (None, ("x", -2.0)),
}


def _rot(axis: str, deg: float) -> np.ndarray:
  t = np.radians(deg)
  c, s = np.cos(t), np.sin(t)
  if axis == "y":
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def random_trajectory(n: int, rng: np.random.Generator, min_seg: int = 2, max_seg: int = 8):
  """(labels [n] int, w2c [n,4,4] float64) for n latents."""
  names = list(_MOVES)
  c2w = [np.eye(4)]
  while len(c2w) < n:
    name = names[rng.integers(len(names))]
    for _ in range(int(rng.integers(min_seg, max_seg + 1))):
      if len(c2w) >= n:
        break
      trans, rot = _MOVES[name]
      rel = np.eye(4)
      if trans is not None:
        rel[:3, 3] = trans
      if rot is not None:
        rel[:3, :3] = _rot(*rot)
      c2w.append(c2w[-1] @ rel)
  c2w = np.stack(c2w)
  labels = np.asarray(gt_action_labels(c2w.astype(np.float32)))
  return labels, np.linalg.inv(c2w)
