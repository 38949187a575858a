"""Camera poses -> discrete 81-way action labels (translation * 9 + rotation).

One labeller serves both sides of the interaction reward, as in the reference:
the ground-truth labels of a commanded trajectory (per latent, thresholds
`GT_THRESHOLDS`) and the labels of poses estimated from a generated clip (per
video frame, thresholds `REWARD_MOVE_THRESHOLDS` x `REWARD_ROT_THRESHOLD_DEG`).

Rules for the step i-1 -> i (all comparisons strict), with the relative motion
`D = inv(c2w[i-1]) @ c2w[i]` expressed in the frame of camera i-1
(OpenCV axes: +x right, +y down, +z forward):

* translation t = D[:3,3]: if |t| > move_threshold, take the angles between
  t/|t| and the axes; forward if angle(+z) < 60 deg, backward if > 120 deg;
  right if angle(+x) < 60 deg, left if > 120 deg. Motion along y alone: none.
* rotation R = D[:3,:3], ZYX Euler angles pitch x = atan2(R21, R22) and yaw
  y = atan2(-R20, hypot(R00, R10)) in degrees (scipy's `as_euler("xyz")`):
  yaw right if y > rot_threshold, left if y < -rot_threshold; pitch up if
  x > rot_threshold, down if x < -rot_threshold. Roll is ignored.
* each part is a 4-bit one-hot turned into 0..8 by
  0000->0, 1000->1, 0100->2, 0010->3, 0001->4, 1010->5, 1001->6, 0110->7, 0101->8
  (bits [forward, backward, right, left] and [yaw right, yaw left, up, down]).
* index 0 of a sequence always gets label 0.

Everything is elementwise float32 arithmetic (no dot products), so the result
does not depend on the accelerator's matmul precision (TF32 / bf16 passes would
move 1 %-margin cases across a threshold).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks

# the vocabulary itself is wc_jax.actions; re-exported here for the reward API
from wc_jax.actions import NUM_ACTIONS, NUM_ROT, NUM_TRANS, ROT_NAMES, TRANS_NAMES, merge_action, split_action  # noqa: F401


class Thresholds(NamedTuple):
  """Labeller thresholds: translation norm (pose units) and rotation (degrees)."""
  move: float
  rot_deg: float


# Ground-truth labeller of the dataset (per latent of a commanded trajectory).
GT_THRESHOLDS = Thresholds(move=1e-4, rot_deg=0.05)
# Reward labeller (per video frame of a generated clip); every move threshold is tried.
REWARD_MOVE_THRESHOLDS = (0.002, 0.005, 0.01)
REWARD_ROT_THRESHOLD_DEG = 0.2

# PAIR_TABLE[first, second]: first/second = 0 (neither bit), 1 (first bit of the
# pair), 2 (second bit). Pairs: (forward, backward) x (right, left) for
# translation, (yaw right, yaw left) x (pitch up, pitch down) for rotation.
_PAIR_TABLE = ((0, 3, 4), (1, 5, 6), (2, 7, 8))

_POSES_EXPECTED = "[F,3,4] or [F,4,4] camera poses (F >= 1)"


def _matmul3(a, b):
  """[...,3,3] @ [...,3,k] without a dot op (exact f32 on every backend)."""
  return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _inv3(a):
  """Inverse of [...,3,3] by the adjugate; poses are far from singular."""
  c00 = a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1]
  c01 = a[..., 1, 2] * a[..., 2, 0] - a[..., 1, 0] * a[..., 2, 2]
  c02 = a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]
  c10 = a[..., 0, 2] * a[..., 2, 1] - a[..., 0, 1] * a[..., 2, 2]
  c11 = a[..., 0, 0] * a[..., 2, 2] - a[..., 0, 2] * a[..., 2, 0]
  c12 = a[..., 0, 1] * a[..., 2, 0] - a[..., 0, 0] * a[..., 2, 1]
  c20 = a[..., 0, 1] * a[..., 1, 2] - a[..., 0, 2] * a[..., 1, 1]
  c21 = a[..., 0, 2] * a[..., 1, 0] - a[..., 0, 0] * a[..., 1, 2]
  c22 = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
  det = a[..., 0, 0] * c00 + a[..., 0, 1] * c01 + a[..., 0, 2] * c02
  adj = jnp.stack([jnp.stack([c00, c10, c20], -1),
                   jnp.stack([c01, c11, c21], -1),
                   jnp.stack([c02, c12, c22], -1)], -2)
  return adj / det[..., None, None]


def check_poses(fn: str, poses) -> None:
  _checks.check_trailing(fn, "poses", poses, [(3, 4), (4, 4)], 3, _POSES_EXPECTED)
  if _checks.shape_of(poses)[0] < 1:
    _checks.fail(fn, "poses", _POSES_EXPECTED, poses)
  _checks.check_floating(fn, "poses", poses, _POSES_EXPECTED)


def relative_motion(poses, convention: str = "w2c"):
  """Relative motions D_i = inv(c2w[i-1]) @ c2w[i] for i = 1..F-1.

  Args:
    poses: [F,3,4] or [F,4,4] float; the bottom row of a 4x4 is ignored.
    convention: "w2c" (estimator output, e.g. Depth Anything 3 extrinsics) or
      "c2w" (commanded trajectories, the generator's "extrinsic").

  Returns:
    (R [F-1,3,3], t [F-1,3]) float32, both in the frame of camera i-1.
  """
  if convention not in ("w2c", "c2w"):
    raise ValueError(f"relative_motion: convention must be 'w2c' or 'c2w', got {convention!r}")
  check_poses("relative_motion", poses)
  poses = jnp.asarray(poses, jnp.float32)
  a, t = poses[:, :3, :3], poses[:, :3, 3]
  if convention == "c2w":
    # D = [A_{i-1}^-1 A_i, A_{i-1}^-1 (t_i - t_{i-1})]
    inv_prev = _inv3(a[:-1])
    rot = _matmul3(inv_prev, a[1:])
    trans = _matmul3(inv_prev, (t[1:] - t[:-1])[..., None])[..., 0]
  else:
    # c2w = inv(w2c) so D = w2c_{i-1} @ inv(w2c_i) = [A_{i-1} A_i^-1, t_{i-1} - A_{i-1} A_i^-1 t_i]
    rot = _matmul3(a[:-1], _inv3(a[1:]))
    trans = t[:-1] - _matmul3(rot, t[1:, :, None])[..., 0]
  return rot, trans


def _pair_label(first_pos, first_neg, second_pos, second_neg):
  first = jnp.where(first_pos, 1, jnp.where(first_neg, 2, 0))
  second = jnp.where(second_pos, 1, jnp.where(second_neg, 2, 0))
  return jnp.asarray(_PAIR_TABLE, jnp.int32)[first, second]


def _labels_from_motion(rot, trans, move_threshold, rot_threshold_deg):
  move_threshold = jnp.asarray(move_threshold, jnp.float32)
  rot_threshold_deg = jnp.asarray(rot_threshold_deg, jnp.float32)
  norm = jnp.sqrt(jnp.sum(trans * trans, axis=-1))
  moved = norm > move_threshold
  direction = trans / jnp.where(norm > 0, norm, 1.0)[..., None]
  ang = jnp.degrees(jnp.arccos(jnp.clip(direction, -1.0, 1.0)))
  trans_label = _pair_label(moved & (ang[..., 2] < 60), moved & (ang[..., 2] > 120),
                            moved & (ang[..., 0] < 60), moved & (ang[..., 0] > 120))
  sy = jnp.sqrt(rot[..., 0, 0] ** 2 + rot[..., 1, 0] ** 2)
  # The reference's gimbal branch (sy <= 1e-6, i.e. |pitch about y| = 90 deg).
  pitch = jnp.where(sy > 1e-6, jnp.arctan2(rot[..., 2, 1], rot[..., 2, 2]),
                    jnp.arctan2(-rot[..., 1, 2], rot[..., 1, 1]))
  yaw = jnp.arctan2(-rot[..., 2, 0], sy)
  pitch, yaw = jnp.degrees(pitch), jnp.degrees(yaw)
  rot_label = _pair_label(yaw > rot_threshold_deg, yaw < -rot_threshold_deg,
                          pitch > rot_threshold_deg, pitch < -rot_threshold_deg)
  return trans_label, rot_label


@functools.partial(jax.jit, static_argnames=("convention",))
def action_labels(poses, move_threshold, rot_threshold_deg, *, convention: str = "w2c"):
  """Per-step 81-way action labels of a pose sequence.

  Args:
    poses: [F,3,4] or [F,4,4] camera poses, w2c (default) or c2w; any float
      dtype, computed in float32.
    move_threshold: scalar; translation norms <= it count as no motion.
    rot_threshold_deg: scalar, degrees; |Euler angle| <= it counts as no turn.
    convention: "w2c" or "c2w" (static).

  Returns:
    int32 [F]: trans * 9 + rot per step; index 0 is always 0.
  """
  trans_label, rot_label = step_labels(poses, move_threshold, rot_threshold_deg,
                                       convention=convention)
  return trans_label * NUM_ROT + rot_label


@functools.partial(jax.jit, static_argnames=("convention",))
def step_labels(poses, move_threshold, rot_threshold_deg, *, convention: str = "w2c"):
  """Like `action_labels`, split: (translation label [F], rotation label [F]), int32 0..8."""
  check_poses("action_labels", poses)
  _scalar("action_labels", "move_threshold", move_threshold)
  _scalar("action_labels", "rot_threshold_deg", rot_threshold_deg)
  rot, trans = relative_motion(poses, convention)
  trans_label, rot_label = _labels_from_motion(rot, trans, move_threshold, rot_threshold_deg)
  zero = jnp.zeros((1,), jnp.int32)
  return jnp.concatenate([zero, trans_label]), jnp.concatenate([zero, rot_label])


def _scalar(fn, arg, x):
  if _checks.shape_of(x) != ():
    _checks.fail(fn, arg, "a scalar", x)


def gt_action_labels(c2w):
  """Ground-truth labels of a commanded trajectory, one per latent (dataset rule).

  Args:
    c2w: [L,3,4] or [L,4,4] camera-to-world poses, one per latent.
  Returns:
    int32 [L], label 0 at index 0.
  """
  return action_labels(c2w, GT_THRESHOLDS.move, GT_THRESHOLDS.rot_deg, convention="c2w")


@functools.partial(jax.jit, static_argnames=("convention",))
def reward_action_labels(poses, move_thresholds=REWARD_MOVE_THRESHOLDS,
                         rot_threshold_deg=REWARD_ROT_THRESHOLD_DEG, *, convention: str = "w2c"):
  """Per-frame labels of estimated poses at every reward move threshold.

  Args:
    poses: [F,3,4] or [F,4,4] estimated poses (w2c by default, DA3's format).
    move_thresholds: [K] move thresholds (default 0.002, 0.005, 0.01).
    rot_threshold_deg: scalar rotation threshold in degrees (default 0.2).

  Returns:
    int32 [K,F].
  """
  check_poses("reward_action_labels", poses)
  thr = jnp.asarray(move_thresholds, jnp.float32)
  if thr.ndim != 1 or thr.shape[0] < 1:
    _checks.fail("reward_action_labels", "move_thresholds", "a non-empty 1-D sequence", thr)
  _scalar("reward_action_labels", "rot_threshold_deg", rot_threshold_deg)
  rot, trans = relative_motion(poses, convention)

  def one(m):
    tl, rl = _labels_from_motion(rot, trans, m, rot_threshold_deg)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), tl * NUM_ROT + rl])
  return jax.vmap(one)(thr)
