"""Commanded camera trajectories: motions -> per-latent and per-frame poses -> action labels.

A trajectory is a sequence of per-latent *motions*. A motion moves the camera in
its own frame (OpenCV axes: +x right, +y down, +z forward): first yaw
(`rot_y`), then pitch (`rot_x`), then translate forward, right, backward, left
along the rotated axes. This is the reference's `action_to_pose`, reproduced
bit for bit in float64 (the same NumPy operations in the same order), because
labels and the fixtures depend on the last bits of near-threshold motions.

Two ways to get motions, both as in the reference:

* `random_motions(num, rng)`: the training generator. Segments of 2..16
  latents, each repeating one of 32 weighted primitives (single moves, single
  turns, and compound moves such as forward + yaw), 0.1 per latent translation
  and 2 degrees per latent rotation. It draws from Python's `random` in the
  reference's call order, so `random.seed(s)` reproduces the reference's
  trajectories exactly.
* `parse_action_string("w-8, right-4, d-8")`: the inference CLI's pose
  strings (0.08 per latent, 3 degrees per latent by default).

Motion arrays are [N, 6] float64 with columns `MOTION_KEYS`; a zero entry means
"not applied", exactly like a key missing from the reference's motion dict.
"""
from __future__ import annotations

import dataclasses
import random as _random
from typing import Mapping

import numpy as np

from wc_jax.actions import ROT_NAMES, TRANS_NAMES, split_action

MOTION_KEYS = ("forward", "backward", "right", "left", "yaw", "pitch")
FRAMES_PER_LATENT = 4

# Training generator (reference `generate_random_action`).
STEP = 0.1
ANGLE = np.deg2rad(2)  # a NumPy float64, as in the reference
MIN_SEGMENT, MAX_SEGMENT = 2, 16

# Inference CLI (reference `parse_pose_string`).
CLI_STEP = 0.08
CLI_ANGLE_DEG = 3.0

# Reference intrinsics of the 1920x1080 pose files; normalised to fx/W, fy/H, 0.5, 0.5.
REFERENCE_K = np.array([[969.6969696969696, 0.0, 960.0],
                        [0.0, 969.6969696969696, 540.0],
                        [0.0, 0.0, 1.0]])


def _primitives():
  s, a = STEP, ANGLE
  return (
      # single translations (weight 4)
      {"forward": s}, {"backward": s}, {"left": s}, {"right": s},
      # single rotations (yaw 4, pitch 2)
      {"yaw": a}, {"yaw": -a}, {"pitch": a}, {"pitch": -a},
      # two translations (6)
      {"forward": s, "right": s}, {"forward": s, "left": s},
      {"backward": s, "right": s}, {"backward": s, "left": s},
      # yaw + pitch (2)
      {"yaw": a, "pitch": a}, {"yaw": a, "pitch": -a},
      {"yaw": -a, "pitch": a}, {"yaw": -a, "pitch": -a},
      # translation + yaw (6)
      {"forward": s, "yaw": a}, {"forward": s, "yaw": -a},
      {"backward": s, "yaw": a}, {"backward": s, "yaw": -a},
      {"left": s, "yaw": a}, {"left": s, "yaw": -a},
      {"right": s, "yaw": a}, {"right": s, "yaw": -a},
      # translation + pitch (1)
      {"forward": s, "pitch": a}, {"forward": s, "pitch": -a},
      {"backward": s, "pitch": a}, {"backward": s, "pitch": -a},
      {"left": s, "pitch": a}, {"left": s, "pitch": -a},
      {"right": s, "pitch": a}, {"right": s, "pitch": -a},
  )


PRIMITIVES: tuple[dict, ...] = _primitives()
PRIMITIVE_WEIGHTS: tuple[int, ...] = (4, 4, 4, 4, 4, 4, 2, 2, 6, 6, 6, 6, 2, 2, 2, 2,
                                      6, 6, 6, 6, 6, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1, 1)


# ----------------------------------------------------------------------------- motions

def random_motions(num: int, rng: _random.Random | None = None) -> list[dict]:
  """The reference training generator: `num` per-latent motion dicts.

  Args:
    num: number of latents (motions) to draw, >= 1.
    rng: a `random.Random`; default the global `random` module, so
      `random.seed(s); random_motions(n)` equals the reference's
      `random.seed(s); generate_random_action(n)`.
  """
  if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
    raise ValueError(f"random_motions: num must be an integer >= 1, got {num!r}")
  rng = _random if rng is None else rng
  out: list[dict] = []
  while len(out) < num:
    # Same draws as the reference: choices(..., k=1) then randint(2, 16).
    index = rng.choices(range(len(PRIMITIVES)), weights=PRIMITIVE_WEIGHTS, k=1)[0]
    length = min(rng.randint(MIN_SEGMENT, MAX_SEGMENT), num - len(out))
    out.extend(dict(PRIMITIVES[index]) for _ in range(length))
  return out


def motions_to_array(motions) -> np.ndarray:
  """Motion dicts (or an [N,6] array) -> [N,6] float64 with columns `MOTION_KEYS`."""
  if isinstance(motions, np.ndarray):
    if motions.ndim != 2 or motions.shape[1] != len(MOTION_KEYS):
      raise ValueError(f"motions must be [N,{len(MOTION_KEYS)}] with columns {MOTION_KEYS}, "
                       f"got shape {motions.shape}")
    return np.asarray(motions, np.float64)
  rows = []
  for i, m in enumerate(motions):
    if not isinstance(m, Mapping):
      raise ValueError(f"motion {i} must be a dict with keys from {MOTION_KEYS}, got {m!r}")
    unknown = set(m) - set(MOTION_KEYS)
    if unknown:
      raise ValueError(f"motion {i} has unknown keys {sorted(unknown)}; known: {MOTION_KEYS}")
    rows.append([float(m.get(k, 0.0)) for k in MOTION_KEYS])
  return np.asarray(rows, np.float64).reshape(len(rows), len(MOTION_KEYS))


def array_to_motions(motions: np.ndarray) -> list[dict]:
  """[N,6] motion array -> motion dicts without the zero entries."""
  arr = motions_to_array(motions)
  return [{k: float(v) for k, v in zip(MOTION_KEYS, row) if v != 0} for row in arr]


# ----------------------------------------------------------------------------- poses

def _rot_x(theta):
  c, s = np.cos(theta), np.sin(theta)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(theta):
  c, s = np.cos(theta), np.sin(theta)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


_AXES = {"forward": (2, 1.0), "right": (0, 1.0), "backward": (2, -1.0), "left": (0, -1.0)}


def _apply(pose: np.ndarray, row: np.ndarray) -> None:
  """One motion applied in place to a 4x4 c2w, in the reference's operation order."""
  yaw, pitch = row[4], row[5]
  if yaw != 0:
    pose[:3, :3] = pose[:3, :3] @ _rot_y(yaw)
  if pitch != 0:
    pose[:3, :3] = pose[:3, :3] @ _rot_x(pitch)
  for key in ("forward", "right", "backward", "left"):
    amount = row[MOTION_KEYS.index(key)]
    if amount != 0:
      axis, sign = _AXES[key]
      local = np.zeros(3)
      local[axis] = sign * amount
      pose[:3, 3] += pose[:3, :3] @ local


def _check_pose(name: str, pose) -> np.ndarray:
  pose = np.asarray(pose, np.float64)
  if pose.shape != (4, 4):
    raise ValueError(f"{name} must be a 4x4 c2w matrix, got shape {pose.shape}")
  return pose


def motions_to_poses(motions, start=None) -> np.ndarray:
  """c2w after each motion, [N,4,4] float64 (reference `action_to_pose`).

  Args:
    motions: motion dicts or an [N,6] array.
    start: optional 4x4 c2w to continue from (default identity). It is not
      part of the output: pose i is the camera after motion i.
  """
  arr = motions_to_array(motions)
  pose = np.eye(4) if start is None else _check_pose("start", start).copy()
  out = np.empty((len(arr), 4, 4))
  for i, row in enumerate(arr):
    _apply(pose, row)
    out[i] = pose
  return out


def frame_poses(motions, start=None) -> np.ndarray:
  """Per-video-frame c2w, [4N-3,4,4] float64.

  Frame 0 is latent 0 (the camera after motion 0). Every later latent spans 4
  frames: its motion is split into 4 quarter motions applied one after the
  other, continuing from the previous frame. So frame 4k is latent k up to
  the order of rotation and translation within the latent.
  """
  arr = motions_to_array(motions)
  if len(arr) < 1:
    raise ValueError("frame_poses: need at least one motion")
  pose = np.eye(4) if start is None else _check_pose("start", start).copy()
  _apply(pose, arr[0])
  out = [pose.copy()]
  for row in arr[1:]:
    quarter = row / FRAMES_PER_LATENT
    for _ in range(FRAMES_PER_LATENT):
      _apply(pose, quarter)
      out.append(pose.copy())
  return np.stack(out)


def normalized_intrinsics(k=REFERENCE_K, num: int = 1) -> np.ndarray:
  """Pixel intrinsics -> the model's normalised form [num,3,3]: fx/W, fy/H, 0.5, 0.5.

  Like the reference, W and H are taken as 2*cx and 2*cy.
  """
  k = np.array(k, np.float64)
  if k.shape != (3, 3):
    raise ValueError(f"intrinsics must be a 3x3 matrix, got shape {k.shape}")
  if k[0, 2] <= 0 or k[1, 2] <= 0:
    raise ValueError(f"intrinsics need a positive principal point (cx, cy), got "
                     f"{k[0, 2]}, {k[1, 2]}")
  k[0, 0] /= k[0, 2] * 2
  k[1, 1] /= k[1, 2] * 2
  k[0, 2] = 0.5
  k[1, 2] = 0.5
  return np.repeat(k[None], num, axis=0)


def invert_poses(poses: np.ndarray) -> np.ndarray:
  """c2w <-> w2c for [...,4,4] float64 (np.linalg.inv, as the reference's dataset)."""
  return np.linalg.inv(np.asarray(poses, np.float64))


def gt_labels(c2w: np.ndarray) -> np.ndarray:
  """Ground-truth per-latent 81-way labels of c2w poses (dataset thresholds), int32 [L]."""
  import jax
  from wc_jax.rewards.labels import gt_action_labels
  # Host-side data work stays on the CPU backend, off the trainer's accelerator.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    return np.asarray(gt_action_labels(np.asarray(c2w)), np.int32)


# ----------------------------------------------------------------------------- trajectory

@dataclasses.dataclass(frozen=True)
class Trajectory:
  """A commanded trajectory of L latents (F = 4L-3 video frames).

  Attributes:
    motions: [L,6] float64, motion i takes latent i-1 to latent i (motion 0
      takes the identity to latent 0); NaN when the trajectory was given as
      poses (`trajectory_from_poses`).
    c2w: [L,4,4] float64 per-latent camera-to-world poses.
    frame_c2w: [F,4,4] float64 per-frame poses; None when given as poses.
    actions: [L] int32 81-way labels (trans * 9 + rot); actions[0] = 0.
    intrinsics: [L,3,3] float64 normalised intrinsics.
  """
  motions: np.ndarray
  c2w: np.ndarray
  frame_c2w: np.ndarray
  actions: np.ndarray
  intrinsics: np.ndarray

  @property
  def num_latents(self) -> int:
    return int(self.c2w.shape[0])

  @property
  def num_frames(self) -> int:
    return FRAMES_PER_LATENT * self.num_latents - 3

  @property
  def w2c(self) -> np.ndarray:
    return invert_poses(self.c2w)

  @property
  def frame_w2c(self) -> np.ndarray | None:
    return None if self.frame_c2w is None else invert_poses(self.frame_c2w)

  @property
  def trans_labels(self) -> np.ndarray:
    return self.actions // 9

  @property
  def rot_labels(self) -> np.ndarray:
    return self.actions % 9

  @property
  def frame_actions(self) -> np.ndarray:
    """Labels per frame as the reward aligns them: latent labels repeated x4, cut to F."""
    return np.repeat(self.actions, FRAMES_PER_LATENT)[FRAMES_PER_LATENT - 1:]

  def window(self, start: int, length: int) -> "Trajectory":
    """Latents [start, start+length) as a trajectory of their own (poses kept as they are).

    Its frames are 4*start .. 4*(start+length-1): 4L-3 of them, the first being
    the last frame of latent `start`, like a clip that starts there.
    """
    if start < 0 or length < 1 or start + length > self.num_latents:
      raise ValueError(f"window [{start}, {start + length}) is outside the trajectory's "
                       f"{self.num_latents} latents")
    f0 = FRAMES_PER_LATENT * start
    f1 = FRAMES_PER_LATENT * (start + length - 1) + 1
    frames = None if self.frame_c2w is None else self.frame_c2w[f0:f1]
    return Trajectory(self.motions[start:start + length], self.c2w[start:start + length],
                      frames, self.actions[start:start + length].copy(),
                      self.intrinsics[start:start + length])

  def describe(self) -> list[str]:
    """Human-readable label per latent, e.g. 'forward / yaw_right'."""
    return [f"{TRANS_NAMES[t]} / {ROT_NAMES[r]}" for t, r in map(split_action, self.actions)]


def trajectory_from_motions(motions, start=None, k=REFERENCE_K) -> Trajectory:
  """Poses, per-frame poses, labels and intrinsics of a motion sequence."""
  arr = motions_to_array(motions)
  if len(arr) < 1:
    raise ValueError("trajectory_from_motions: need at least one motion")
  c2w = motions_to_poses(arr, start)
  return Trajectory(motions=arr, c2w=c2w, frame_c2w=frame_poses(arr, start),
                    actions=gt_labels(c2w), intrinsics=normalized_intrinsics(k, len(arr)))


def trajectory_from_poses(c2w, k=REFERENCE_K) -> Trajectory:
  """A trajectory given as per-latent c2w poses (e.g. a reference pose file).

  Labels follow from the poses; motions are NaN and per-frame poses None,
  since neither can be recovered from latent poses alone.
  """
  c2w = np.asarray(c2w, np.float64)
  if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] < 1:
    raise ValueError(f"trajectory_from_poses: c2w must be [L,4,4], got shape {c2w.shape}")
  k = np.asarray(k, np.float64)
  ks = normalized_intrinsics(k, len(c2w)) if k.ndim == 2 else \
      np.stack([normalized_intrinsics(x)[0] for x in k])
  if len(ks) != len(c2w):
    raise ValueError(f"trajectory_from_poses: {len(ks)} intrinsics for {len(c2w)} poses")
  return Trajectory(motions=np.full((len(c2w), len(MOTION_KEYS)), np.nan), c2w=c2w,
                    frame_c2w=None, actions=gt_labels(c2w), intrinsics=ks)


def load_pose_json(obj) -> list[Trajectory]:
  """Trajectories from the reference's pose JSON: {"0": {"extrinsic": c2w, "K": K}, ...},
  or a list of such dicts (e.g. its harder_random_poses.json); a path or the loaded object."""
  import json
  if isinstance(obj, str):
    with open(obj) as f:
      obj = json.load(f)
  items = obj if isinstance(obj, list) else [obj]
  out = []
  for n, item in enumerate(items):
    if not isinstance(item, Mapping) or not item:
      raise ValueError(f"pose JSON entry {n} must be a non-empty dict index -> "
                       f"{{'extrinsic', 'K'}}")
    try:
      frames = [item[key] for key in item]
      c2w = np.array([f["extrinsic"] for f in frames], np.float64)
      ks = np.array([f["K"] for f in frames], np.float64)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"pose JSON entry {n}: every pose needs 'extrinsic' (4x4 c2w) and "
                       f"'K' (3x3): {e}") from None
    out.append(trajectory_from_poses(c2w, ks))
  return out


def random_trajectory(seed: int, num_latents: int = 64, generator_num: int | None = None,
                      k=REFERENCE_K) -> Trajectory:
  """The reference's random trajectory for `seed`: `random.seed(seed)`,
  `generate_random_action(generator_num)`, first `num_latents` kept.

  Uses a private `random.Random(seed)`, whose stream equals the global one
  after `random.seed(seed)`; the global state is left alone.
  """
  if not isinstance(num_latents, (int, np.integer)) or num_latents < 1:
    raise ValueError(f"random_trajectory: num_latents must be an integer >= 1, got {num_latents!r}")
  generator_num = num_latents if generator_num is None else generator_num
  if generator_num < num_latents:
    raise ValueError(f"random_trajectory: generator_num ({generator_num}) must be >= "
                     f"num_latents ({num_latents})")
  motions = random_motions(generator_num, _random.Random(seed))[:num_latents]
  return trajectory_from_motions(motions, k=k)


# ----------------------------------------------------------------------------- pose strings

_STRING_KEYS = {
    # key: (motion column, sign, kind)
    "w": ("forward", 1.0, "move"), "s": ("backward", 1.0, "move"),
    "d": ("right", 1.0, "move"), "a": ("left", 1.0, "move"),
    "right": ("yaw", 1.0, "turn"), "left": ("yaw", -1.0, "turn"),
    "up": ("pitch", 1.0, "turn"), "down": ("pitch", -1.0, "turn"),
}
_OPPOSITES = ({"w", "s"}, {"a", "d"}, {"left", "right"}, {"up", "down"})


def parse_action_string(text: str, *, step: float = CLI_STEP,
                        angle_deg: float = CLI_ANGLE_DEG) -> list[dict]:
  """Parses a pose string like the reference CLI: "w-8, right-4, d-8".

  Commands are `key-latents`, comma separated: w forward, s backward, a left,
  d right (translation, `step` per latent); left/right yaw, up/down pitch
  (`angle_deg` per latent). Extension over the reference: compound commands
  join keys with '+', e.g. "w+right-4" (forward while turning right).
  Durations must be whole latents >= 1 (the reference silently truncates
  "right-0.5" to nothing; here it is an error).

  Returns:
    One motion dict per latent of movement (the starting latent is not
    included: see `trajectory_from_string`).
  """
  if not isinstance(text, str):
    raise ValueError(f"pose string must be a str, got {type(text).__name__}")
  angle = np.deg2rad(angle_deg)
  motions: list[dict] = []
  for cmd in (c.strip() for c in text.split(",")):
    if not cmd:
      continue
    parts = cmd.split("-")
    if len(parts) != 2 or not parts[0].strip():
      raise ValueError(f"invalid pose command {cmd!r}: expected 'key-latents', e.g. 'w-4'")
    head, count = parts
    try:
      n = int(count.strip())
    except ValueError:
      raise ValueError(f"invalid duration in pose command {cmd!r}: durations are whole "
                       f"latents >= 1") from None
    if n < 1:
      raise ValueError(f"invalid duration in pose command {cmd!r}: durations are whole "
                       f"latents >= 1")
    keys = [k.strip() for k in head.split("+")]
    for key in keys:
      if key not in _STRING_KEYS:
        raise ValueError(f"unknown action {key!r} in pose command {cmd!r}; supported: "
                         f"{', '.join(_STRING_KEYS)} (join with '+' to combine)")
    if len(set(keys)) != len(keys) or any(o <= set(keys) for o in _OPPOSITES):
      raise ValueError(f"pose command {cmd!r} repeats a key or combines opposite keys "
                       f"(w/s, a/d, left/right, up/down)")
    motion: dict = {}
    for key in keys:
      column, sign, kind = _STRING_KEYS[key]
      motion[column] = sign * (step if kind == "move" else angle)
    motions.extend(dict(motion) for _ in range(n))
  if not motions:
    raise ValueError(f"pose string {text!r} holds no commands")
  return motions


def trajectory_from_string(text: str, num_latents: int | None = None, *, step: float = CLI_STEP,
                           angle_deg: float = CLI_ANGLE_DEG, k=REFERENCE_K) -> Trajectory:
  """Pose string -> trajectory starting at the identity (as the reference CLI).

  Latent 0 is the identity camera; each parsed motion adds one latent, so
  "w-31" gives 32 latents (125 frames).
  """
  motions = [{}] + parse_action_string(text, step=step, angle_deg=angle_deg)
  if num_latents is not None and len(motions) != num_latents:
    raise ValueError(f"pose string {text!r} gives {len(motions)} latents "
                     f"({4 * len(motions) - 3} frames), expected {num_latents} latents "
                     f"({4 * num_latents - 3} frames)")
  return trajectory_from_motions(motions, k=k)

