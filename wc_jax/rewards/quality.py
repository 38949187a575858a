"""Visual-quality rewards: quality drift against the video's first frame, and mean quality.

The reference scores frames 3, 7, 11, 15 of the window (`window[3::4]`; 3, 7,
11 for a 13-frame first-chunk window) with HPSv3 and the fixed prompt
`QUALITY_PROMPT`, and the first frame of the whole video likewise:

    drift = -mean_k |Q(window[k]) - Q(first frame)|

Any scorer works: images [N,H,W,3] -> scores [N] (or [N,1]). wc_jax ships a
CLIP-aesthetic scorer (`wc_jax.models.quality.ClipAestheticScorer`).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks, _model

QUALITY_PROMPT = "A high-quality, ultra-detailed and well-structured image."
FRAME_OFFSET = 3
FRAME_STRIDE = 4

Scorer = Callable[[jax.Array], jax.Array]


def scored_frame_indices(num_frames: int, offset: int = FRAME_OFFSET, stride: int = FRAME_STRIDE):
  """Window frames the quality rewards look at: range(offset, F, stride)."""
  idx = list(range(offset, num_frames, stride))
  if not idx:
    raise ValueError(f"a window of {num_frames} frames has no frame at {offset}::{stride}")
  return idx


def _drift_impl(scorer, frames, first, *, first_is_score, offset, stride):
  fn = "quality_drift_reward"
  _checks.check_images(fn, "frames", frames)
  try:
    idx = scored_frame_indices(frames.shape[0], offset, stride)
  except ValueError as e:
    raise ValueError(f"{fn}: {e}") from None
  picked = frames[jnp.asarray(idx)]
  if first_is_score:
    if _checks.shape_of(first) != ():
      _checks.fail(fn, "first_score", "a scalar", first)
    q = _checks.as_scores(fn, "scorer", scorer(picked), len(idx))
    q0 = jnp.asarray(first, jnp.float32)
  else:
    _checks.check_images(fn, "first_frame", first, batched=False)
    if first.shape != frames.shape[1:]:
      raise ValueError(f"{fn}: first_frame must match the frames' [H,W,3] = {tuple(frames.shape[1:])}, "
                       f"got shape {tuple(first.shape)}")
    both = jnp.concatenate([first[None].astype(picked.dtype), picked], axis=0)
    qs = _checks.as_scores(fn, "scorer", scorer(both), len(idx) + 1)
    q0, q = qs[0], qs[1:]
  return -jnp.mean(jnp.abs(q - q0))


def quality_drift_reward(frames, scorer: Scorer, first_frame=None, *, first_score=None,
                         offset: int = FRAME_OFFSET, stride: int = FRAME_STRIDE):
  """Visual-quality drift reward of one candidate window (jit-compiled).

  Args:
    frames: [F,H,W,3] decoded frames of the window (F = 17 or 13 in training).
    scorer: images [N,H,W,3] -> [N] or [N,1] quality scores; an nnx.Module
      (weights traced) or a hashable callable.
    first_frame: [H,W,3] first frame of the whole video (scored with the same
      scorer in the same call), or
    first_score: its precomputed score (scalar), to score it once per group.
    offset, stride: which window frames are scored (default 3::4).

  Returns:
    float32 scalar <= 0: -mean_k |Q(frames[k]) - Q(first frame)|.
  """
  if (first_frame is None) == (first_score is None):
    raise ValueError("quality_drift_reward: pass exactly one of first_frame and first_score")
  first = first_frame if first_score is None else jnp.asarray(first_score, jnp.float32)
  return _model.call_with_model(
      _drift_impl, scorer, (frames, first),
      {"first_is_score": first_score is not None, "offset": offset, "stride": stride})


def _mean_impl(scorer, frames, *, offset, stride):
  fn = "quality_reward"
  _checks.check_images(fn, "frames", frames)
  try:
    idx = scored_frame_indices(frames.shape[0], offset, stride)
  except ValueError as e:
    raise ValueError(f"{fn}: {e}") from None
  q = _checks.as_scores(fn, "scorer", scorer(frames[jnp.asarray(idx)]), len(idx))
  return jnp.mean(q)


def quality_reward(frames, scorer: Scorer, *, offset: int = FRAME_OFFSET,
                   stride: int = FRAME_STRIDE):
  """Mean quality score over frames offset::stride of the window (the reference's
  `hpsv3` / `hpsv3_quality` rewards, weight 0 in the released config).

  Args:
    frames: [F,H,W,3] decoded frames of the window.
    scorer: images [N,H,W,3] -> [N] or [N,1] scores.
  Returns:
    float32 scalar.
  """
  return _model.call_with_model(_mean_impl, scorer, (frames,), {"offset": offset, "stride": stride})
