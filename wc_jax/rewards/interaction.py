"""Interaction-following reward (the reference's `fine_action` / `action` rewards).

Chain: decoded clip frames -> pose model -> per-frame w2c poses -> 81-way labels
at each move threshold -> accuracy against the commanded latent labels.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks, _model
from wc_jax.rewards.accuracy import ActionAccuracy, action_accuracy
from wc_jax.rewards.labels import (REWARD_MOVE_THRESHOLDS, REWARD_ROT_THRESHOLD_DEG,
                                   reward_action_labels)

PoseModel = Callable[[jax.Array], jax.Array]
KINDS = ("fine_action", "action")


@jax.jit
def interaction_scores(w2c, commanded_actions, move_thresholds=REWARD_MOVE_THRESHOLDS,
                       rot_threshold_deg=REWARD_ROT_THRESHOLD_DEG) -> ActionAccuracy:
  """Action accuracies of a window from its estimated poses.

  Args:
    w2c: [F,3,4] or [F,4,4] estimated world-to-camera poses of the window's
      frames (F = 4L+1 for a later chunk, 4L-3 for the first chunk).
    commanded_actions: int [L] commanded 81-way labels of the window's latents.
    move_thresholds: [K] move thresholds tried (default 0.002, 0.005, 0.01).
    rot_threshold_deg: rotation threshold in degrees (default 0.2).

  Returns:
    ActionAccuracy (vmap this function over candidates for [N,...] fields).
  """
  _checks.check_ndim("interaction_scores", "commanded_actions", commanded_actions, 1,
                     "[L] integer action labels")
  pred = reward_action_labels(w2c, move_thresholds, rot_threshold_deg)
  return action_accuracy(pred, commanded_actions)


def _interaction_impl(pose_model, frames, commanded_actions, move_thresholds, rot_threshold_deg,
                      *, kind):
  fn = "interaction_reward"
  _checks.check_images(fn, "frames", frames)
  _checks.check_ndim(fn, "commanded_actions", commanded_actions, 1, "[L] integer action labels")
  _checks.check_integer(fn, "commanded_actions", commanded_actions, "[L] integer action labels")
  n = frames.shape[0]
  w2c = pose_model(frames)
  s = _checks.shape_of(w2c)
  if s not in ((n, 3, 4), (n, 4, 4)):
    raise ValueError(f"{fn}: pose_model must map [F,H,W,3] frames to [F,3,4] w2c poses "
                     f"(F={n}), got shape {s}")
  scores = interaction_scores(w2c, commanded_actions, move_thresholds, rot_threshold_deg)
  return scores.fine_action_acc if kind == "fine_action" else scores.action_acc


def interaction_reward(frames, commanded_actions, pose_model: PoseModel, *,
                       kind: str = "fine_action", move_thresholds=REWARD_MOVE_THRESHOLDS,
                       rot_threshold_deg=REWARD_ROT_THRESHOLD_DEG):
  """Interaction-following reward of one candidate clip (jit-compiled).

  Args:
    frames: [F,H,W,3] float decoded frames of the window, F = 4L+1 (later
      chunk: last frame of the previous chunk + 4L new) or 4L-3 (first chunk).
    commanded_actions: int [L] commanded 81-way labels of the window's latents.
    pose_model: frames [F,H,W,3] -> w2c poses [F,3,4] (or [F,4,4]); an
      nnx.Module (weights traced) or a hashable callable (static). Any
      preprocessing (resize, normalisation) is the pose model's business.
    kind: "fine_action" (mean of translation and rotation accuracy; the
      released training config) or "action" (81-way accuracy).
    move_thresholds, rot_threshold_deg: reward labeller thresholds.

  Returns:
    float32 scalar in [0,1]. Use jax.vmap over a candidate axis of `frames`
    and `commanded_actions` to score a group.
  """
  if kind not in KINDS:
    raise ValueError(f"interaction_reward: kind must be one of {KINDS}, got {kind!r}")
  return _model.call_with_model(
      _interaction_impl, pose_model,
      (frames, commanded_actions, jnp.asarray(move_thresholds, jnp.float32),
       jnp.asarray(rot_threshold_deg, jnp.float32)),
      {"kind": kind})
