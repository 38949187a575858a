"""Commanded trajectories and ground-truth clips of the synthetic world, at the scale of
the CPU reproduction.

Why its own generator: at 32 x 32 pixels the reference's 0.1 / 2 degree steps move
the image by about half a pixel per latent, below what any model can see. Here a
latent moves `step` (default 0.25) or turns `angle_deg` (default 6 degrees, about two
pixels; configs/synthetic.py uses 0.5 and 15 degrees, about one 4-pixel latent token),
in segments of 2..6 latents of one primitive. Labels come from the poses
with the dataset rule (`trajectories.gt_labels`), so commanded labels, cameras and
rendered frames always agree.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from wc_jax.data import synthetic_world as sw
from wc_jax.data import trajectories as T
from wc_jax.rl.rollout import TrainingExample
from wc_jax.world.latent import PatchLatent

# (forward, backward, right, left, yaw sign, pitch sign) per primitive, with weights.
PRIMITIVES = {
    "w": ((1, 0, 0, 0, 0, 0), 3), "s": ((0, 1, 0, 0, 0, 0), 2),
    "d": ((0, 0, 1, 0, 0, 0), 2), "a": ((0, 0, 0, 1, 0, 0), 2),
    "right": ((0, 0, 0, 0, 1, 0), 3), "left": ((0, 0, 0, 0, -1, 0), 3),
    "up": ((0, 0, 0, 0, 0, -1), 1), "down": ((0, 0, 0, 0, 0, 1), 1),
    "w+right": ((1, 0, 0, 0, 1, 0), 2), "w+left": ((1, 0, 0, 0, -1, 0), 2),
}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes of the synthetic world the reproduction runs in."""
  height: int = 32
  width: int = 32
  focal: float = 0.6              # normalised fx/W = fy/H (about 80 degrees field of view)
  step: float = 0.25
  angle_deg: float = 6.0
  min_segment: int = 2
  max_segment: int = 6
  max_pitch_deg: float = 18.0     # pitch turns back before exceeding this
  supersample: int = 1            # s x s rays per pixel (anti-aliasing: distant checkers stay smooth)
  detail: float = 1.0             # surface-texture strength of the scenes (synthetic_world.make_scene)
  patch: int = 4                  # latent patch; with lowpass > 0 the frames keep only the
  lowpass: int = 0                # lowpass x lowpass lowest DCT frequencies of each patch (latent.PatchLatent.keep)
  wall_panel: float = 0.0         # > 0: panelled walls (synthetic_world.make_scene): structure that shows a turn
  sky_contrast: float = 0.15      # sky band amplitude: shifts under a turn, not under a step


def intrinsics(cfg: WorldConfig) -> np.ndarray:
  return np.array([[cfg.focal, 0, 0.5], [0, cfg.focal, 0.5], [0, 0, 1.0]])


def random_trajectory(seed: int, num_latents: int, cfg: WorldConfig = WorldConfig()) -> T.Trajectory:
  """A seeded commanded trajectory; latent 0 is the start pose (action 0)."""
  if num_latents < 1:
    raise ValueError(f"random_trajectory: num_latents must be >= 1, got {num_latents}")
  rng = np.random.default_rng([int(seed), 0x7A11])
  names = list(PRIMITIVES)
  w = np.array([PRIMITIVES[n][1] for n in names], np.float64)
  rows = [np.zeros(6)]
  pitch = 0.0
  ang = np.deg2rad(cfg.angle_deg)
  while len(rows) < num_latents:
    name = names[rng.choice(len(names), p=w / w.sum())]
    sign = np.asarray(PRIMITIVES[name][0], np.float64)
    for _ in range(int(rng.integers(cfg.min_segment, cfg.max_segment + 1))):
      if len(rows) >= num_latents:
        break
      s = sign.copy()
      if s[5] and abs(pitch + s[5] * cfg.angle_deg) > cfg.max_pitch_deg:
        s[5] = -s[5]
      pitch += s[5] * cfg.angle_deg
      rows.append(np.concatenate([s[:4] * cfg.step, s[4:] * ang]))
  return T.trajectory_from_motions(np.stack(rows), k=_pixel_k(cfg))


def _pixel_k(cfg: WorldConfig) -> np.ndarray:
  """A pixel K whose normalised form (fx/2cx, ...) is `intrinsics(cfg)`."""
  return np.array([[cfg.focal * cfg.width, 0, cfg.width / 2], [0, cfg.focal * cfg.height, cfg.height / 2],
                   [0, 0, 1.0]])


def scene(scene_seed: int, cfg: WorldConfig = WorldConfig()) -> sw.Scene:
  """The world's scene of a seed, built with the config's surface options."""
  return sw.make_scene(int(scene_seed), detail=cfg.detail, wall_panel=cfg.wall_panel, sky_contrast=cfg.sky_contrast)


def render(scene_seed: int, tr: T.Trajectory, cfg: WorldConfig = WorldConfig()) -> np.ndarray:
  """Ground-truth frames [L, H, W, 3] float32 in [0, 1], one per latent pose."""
  return render_poses(scene(scene_seed, cfg), tr.c2w, cfg)


def render_poses(scene, c2w, cfg: WorldConfig = WorldConfig()) -> np.ndarray:
  """Frames [F, H, W, 3] of a built scene at camera-to-world poses [F, 4, 4]: what the
  world's ground truth is (low-passed like the latent when `cfg.lowpass`)."""
  frames = sw.render(scene, c2w, cfg.height, cfg.width, intrinsics=intrinsics(cfg), supersample=cfg.supersample).frames
  if cfg.lowpass:
    frames = np.clip(PatchLatent(cfg.patch, keep=cfg.lowpass).lowpass(frames), 0.0, 1.0)
  return frames


def conditioning(model_cfg, text_cfg, seed: int = 0) -> dict:
  """Fixed stand-in text / ByT5 / vision states (one prompt for the whole world)."""
  rng = np.random.default_rng([seed, 0xC0D])
  lt, lb, lv = text_cfg.text_tokens, text_cfg.byt5_tokens, text_cfg.vision_tokens
  return dict(
      text_states=rng.standard_normal((1, lt, model_cfg.text_dim)).astype(np.float32),
      text_mask=(np.arange(lt) < max(1, 3 * lt // 4))[None].astype(np.int32),
      byt5_states=rng.standard_normal((1, lb, model_cfg.byt5_in_dim)).astype(np.float32),
      byt5_mask=(np.arange(lb) < max(1, lb // 2))[None].astype(np.int32),
      vision_states=rng.standard_normal((1, lv, model_cfg.vision_dim)).astype(np.float32))


@dataclasses.dataclass
class Clips:
  """A rendered set: frames [N, L, H, W, 3], actions [N, L], w2c [N, L, 4, 4], Ks [N, L, 3, 3]."""
  frames: np.ndarray
  actions: np.ndarray
  w2c: np.ndarray
  Ks: np.ndarray
  scenes: np.ndarray


def make_clips(num: int, num_latents: int, scene_seeds, trajectory_seed: int,
               cfg: WorldConfig = WorldConfig()) -> Clips:
  """`num` clips: clip i renders scene scene_seeds[i % len] along trajectory trajectory_seed + i."""
  scene_seeds = list(scene_seeds)
  frames, actions, w2c, scenes = [], [], [], []
  cache = {}
  for i in range(num):
    s = scene_seeds[i % len(scene_seeds)]
    if s not in cache:
      cache[s] = scene(s, cfg)
    tr = random_trajectory(trajectory_seed + i, num_latents, cfg)
    frames.append(render_poses(cache[s], tr.c2w, cfg))
    actions.append(tr.actions)
    w2c.append(tr.w2c)
    scenes.append(s)
  k = np.broadcast_to(intrinsics(cfg).astype(np.float32), (num, num_latents, 3, 3))
  return Clips(np.stack(frames), np.stack(actions).astype(np.int32), np.stack(w2c).astype(np.float32),
               np.array(k), np.asarray(scenes))


class WorldTrajectories:
  """RL data: commanded trajectories starting from a rendered first frame of a scene.

  An iterator of `wc_jax.rl.rollout.TrainingExample` whose state is the next index, so the
  trainer checkpoints and resumes it. With `real_frames` (default) each example carries the
  world's true frames along the commanded path, `real_frames` [L, H, W, 3] float32 in [0, 1]:
  ONE frame per latent (the patch latent has no temporal stride), the real continuation the
  RWML reward compares with (`wc_jax.world.reward.WorldRewardStage` slices it per clip).
  They are the frames the example is rendered from anyway, so attaching them costs nothing.
  """

  def __init__(self, latent, model_cfg, text_cfg, num_latents: int, scene_seeds, seed: int,
               cfg: WorldConfig = WorldConfig(), real_frames: bool = True):
    self.latent, self.num_latents, self.scene_seeds, self.seed, self.cfg = latent, num_latents, list(scene_seeds), seed, cfg
    self.real_frames = bool(real_frames)
    self.cond = conditioning(model_cfg, text_cfg)
    self.index = 0

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self) -> TrainingExample:
    i = self.index
    self.index += 1
    c = make_clips(1, self.num_latents, [self.scene_seeds[i % len(self.scene_seeds)]], self.seed + i, self.cfg)
    first = np.asarray(self.latent.encode(c.frames[0, :1]))[:, 0]
    return TrainingExample(first_latent=first, actions=c.actions[0].astype(np.float32), w2c=c.w2c[0], Ks=c.Ks[0],
                           real_frames=c.frames[0].astype(np.float32) if self.real_frames else None, **self.cond)
