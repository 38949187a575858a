"""Which clip of the trajectory an RL step trains on (1-indexed, clip n = latents 4(n-1)..4n-1).

min2max (the paper's horizon curriculum): n = 1 + ((step - 1) mod max_clip), step from 1.
"""
from __future__ import annotations

import numpy as np

KINDS = ("min2max", "fixed", "random")


def target_clip(step: int, kind: str = "min2max", max_clip: int = 16, fixed_clip: int = 1, seed: int = 0) -> int:
  if step < 1:
    raise ValueError(f"RL steps count from 1, got {step}")
  if max_clip < 1:
    raise ValueError(f"max_clip must be >= 1, got {max_clip}")
  if kind == "min2max":
    return 1 + (step - 1) % max_clip
  if kind == "fixed":
    if not 1 <= fixed_clip <= max_clip:
      raise ValueError(f"fixed_clip {fixed_clip} outside 1..{max_clip}")
    return fixed_clip
  if kind == "random":
    return int(np.random.default_rng([seed, step]).integers(1, max_clip + 1))
  raise ValueError(f"unknown curriculum {kind!r}; choose one of {KINDS}")
