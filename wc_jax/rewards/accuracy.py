"""Frame/latent alignment and the action accuracies of the interaction reward.

A clip window of F decoded frames covers L latents (4 frames per latent).
Commanded labels are per latent; estimated labels are per frame.

* Later chunk: F = 4L+1 (the last frame of the previous chunk plus 4L new
  frames). Each latent label is repeated 4 times (4L frame labels) and compared
  with the last 4L estimated labels (the leading 0 is dropped).
* First chunk: F = 4L-3 (the first latent decodes to one frame). The repeated
  labels are cut to [4:] (4L-4 labels) and compared with the last 4L-4
  estimated labels.

`action_acc` is the frame accuracy maximised over the move thresholds (ties go
to the first, i.e. smallest, threshold); `fine_action_acc` averages the
translation and rotation accuracies at that same threshold.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks
from wc_jax.rewards.labels import NUM_ROT

FRAMES_PER_LATENT = 4


class ActionAccuracy(NamedTuple):
  """Scores of one clip; M = number of compared frames (4L or 4L-4)."""
  acc_per_threshold: jax.Array  # [K] float32
  best_index: jax.Array         # [] int32, first argmax over thresholds
  action_acc: jax.Array         # [] float32
  fine_action_acc: jax.Array    # [] float32
  pred_action: jax.Array        # [M] int32, at the best threshold
  gt_action: jax.Array          # [M] int32, commanded labels per frame


def compared_frames(num_frames: int, num_latents: int) -> int:
  """Number of frame labels compared for a window of `num_frames` frames over
  `num_latents` latents; raises ValueError for any other window length."""
  later, first = FRAMES_PER_LATENT * num_latents + 1, FRAMES_PER_LATENT * num_latents - 3
  if num_frames == later:
    return FRAMES_PER_LATENT * num_latents
  if num_frames == first and num_latents >= 2:
    return FRAMES_PER_LATENT * (num_latents - 1)
  raise ValueError(
      f"a window over {num_latents} latents must hold {later} frames (later chunk) or "
      f"{first} frames (first chunk, needs >= 2 latents), got {num_frames}")


@functools.partial(jax.jit, static_argnames=("num_frames",))
def latent_to_frame_labels(latent_actions, num_frames: int):
  """Commanded per-latent labels [L] -> the per-frame labels [M] they are compared with.

  Args:
    latent_actions: int [L] 81-way labels of the window's latents.
    num_frames: F, the window length (4L+1 or 4L-3; static).
  Returns:
    int32 [M]: repeat x4, cut to [4:] for the first chunk.
  """
  _checks.check_ndim("latent_to_frame_labels", "latent_actions", latent_actions, 1,
                     "[L] integer action labels")
  _checks.check_integer("latent_to_frame_labels", "latent_actions", latent_actions,
                        "[L] integer action labels")
  n_lat = _checks.shape_of(latent_actions)[0]
  try:
    m = compared_frames(int(num_frames), n_lat)
  except ValueError as e:
    raise ValueError(f"latent_to_frame_labels: {e}") from None
  rep = jnp.repeat(jnp.asarray(latent_actions, jnp.int32), FRAMES_PER_LATENT)
  return rep[rep.shape[0] - m:]


@jax.jit
def action_accuracy(pred_labels, latent_actions):
  """Action accuracies of estimated labels against commanded latent labels.

  Args:
    pred_labels: int [K,F] estimated per-frame labels, one row per move
      threshold (as from `reward_action_labels`), or [F] for one threshold.
    latent_actions: int [L] commanded labels of the window's latents.

  Returns:
    ActionAccuracy.
  """
  fn = "action_accuracy"
  exp = "[K,F] or [F] integer frame labels"
  s = _checks.shape_of(pred_labels)
  if len(s) not in (1, 2):
    _checks.fail(fn, "pred_labels", exp, pred_labels)
  _checks.check_integer(fn, "pred_labels", pred_labels, exp)
  pred = jnp.asarray(pred_labels, jnp.int32)
  if pred.ndim == 1:
    pred = pred[None]
  try:
    gt = latent_to_frame_labels(latent_actions, pred.shape[1])
  except ValueError as e:
    raise ValueError(f"{fn}: {e}".replace("latent_to_frame_labels: ", "")) from None
  m = gt.shape[0]
  pred = pred[:, pred.shape[1] - m:]
  acc = jnp.mean((pred == gt[None]).astype(jnp.float32), axis=1)
  best = jnp.argmax(acc).astype(jnp.int32)
  p = pred[best]
  fine = 0.5 * (jnp.mean((p // NUM_ROT == gt // NUM_ROT).astype(jnp.float32))
                + jnp.mean((p % NUM_ROT == gt % NUM_ROT).astype(jnp.float32)))
  return ActionAccuracy(acc, best, acc[best], fine, p, gt)
