"""LingBot-World generation: first frame + prompt states + camera path -> video.

The reference is `WanI2V.generate` (lingbot-world wan/image2video.py); step by step:

1. size: the latent grid from the image's aspect ratio and the config's area (height*width),
   lat = round(sqrt(area*aspect) // 8 // 2 * 2) in float64 as the reference (so a 480x832 image
   at area 480*832 gets 58x104 latents: the square root lands just below 480); an image the rule
   maps to its own size is used as it is (the reference's bicubic resize is then the identity);
2. i2v condition y [4 + z, T, h, w]: the 4 mask channels (1 on latent frame 0, 0 after) then
   the VAE latent of the video (image, then F-1 black frames) -- the whole F-frame video is
   encoded, since the causal encoder gives the zero frames non-zero latents;
3. camera: `wc_jax.models.lingbot.camera` (poses cut to num_frames, one pose per latent frame,
   frame-to-frame deltas, rays folded 8x8) -> [1, 384, T, h, w], the same for every candidate;
4. UniPC bh2 + CFG (`wc_jax.inference.unipc.sample`): the high-noise expert for t >= 947, the
   low-noise one below, guidance on (prompt, negative prompt), the camera in both branches;
5. the VAE decodes the final latents (clamped to [-1, 1]) -> uint8 frames.

Where the reference cannot be followed bit for bit (documented in `LingBotPipeline.generate`):
the noise comes from jax.random (one key per seed), not torch's generator; resizing an image
of another size uses jax.image's cubic kernel, not torch's bicubic; the video is quantised as
round((x + 1) * 127.5) (the repo's convention).

Action strings ("w-8, right-4") become a camera path with `poses_from_trajectory` applied to
`wc_jax.data.trajectories.trajectory_from_string(...)` (the data layer sits above inference,
so the parsing is the caller's; see `poses_from_trajectory`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from wc_jax import sharding
from wc_jax.inference import unipc
from wc_jax.models.lingbot import camera as lb_camera
from wc_jax.models.lingbot.dit import functional
from wc_jax.models.wan_vae import model as wan_vae

MASK_CHANNELS = 4          # the i2v mask: the temporal stride's 4 pixel frames of a latent frame
FRAMES_PER_LATENT = 4      # Wan2.1 VAE temporal stride
PIXELS_PER_LATENT = 8      # Wan2.1 VAE spatial stride (the camera fold is hard-coded 8x8)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """The reference defaults (wan_i2v_A14B.py, shared_config.py): UniPC 70 steps, shift 10,
  CFG 5/5 (low, high), expert boundary 0.947."""
  steps: int = 70
  shift: float = 10.0
  guide_scale: tuple[float, float] = (5.0, 5.0)
  boundary: float = unipc.BOUNDARY
  num_train_timesteps: int = unipc.NUM_TRAIN_TIMESTEPS

  @classmethod
  def from_config(cls, sampling) -> "SamplerSettings":
    """From a config's `sampling` section (unknown keys such as frame_num are ignored)."""
    d = dict(sampling.to_dict() if hasattr(sampling, "to_dict") else sampling)
    solver = d.get("solver", "unipc")
    if solver != "unipc":
      raise ValueError(f"sampling.solver={solver!r}: only 'unipc' (the reference default) is implemented")
    g = d.get("guide_scale", (5.0, 5.0))
    g = (float(g), float(g)) if isinstance(g, (int, float)) else tuple(float(x) for x in g)
    return cls(steps=int(d.get("steps", 70)), shift=float(d.get("shift", 10.0)), guide_scale=g,
               boundary=float(d.get("boundary", unipc.BOUNDARY)),
               num_train_timesteps=int(d.get("num_train_timesteps", unipc.NUM_TRAIN_TIMESTEPS)))


class Output(NamedTuple):
  """video uint8 [F, H, W, 3] ([B, F, H, W, 3] for a list of seeds); latents [B, z, T, h, w]
  (the sampler's final latents, before the VAE); trace: unipc.Trace when asked, else None."""
  video: np.ndarray | None
  latents: jax.Array
  trace: unipc.Trace | None = None


# ----------------------------------------------------------------------------- inputs

def latent_size(height: int, width: int, area: int, patch: tuple[int, int] = (2, 2),
                stride: int = PIXELS_PER_LATENT) -> tuple[int, int]:
  """(lat_h, lat_w) of the reference for an image of height x width and a pixel `area`
  (image2video.py: sqrt(area * aspect) // stride // patch * patch)."""
  aspect = height / width
  lat_h = round(np.sqrt(area * aspect) // stride // patch[0] * patch[0])
  lat_w = round(np.sqrt(area / aspect) // stride // patch[1] * patch[1])
  if lat_h < patch[0] or lat_w < patch[1]:
    raise ValueError(f"area {area} is too small for a {height}x{width} image (latent {lat_h}x{lat_w})")
  return int(lat_h), int(lat_w)


def check_frame(first_frame) -> np.ndarray:
  """The first frame as uint8 [H, W, 3], or a ValueError saying what was expected."""
  img = np.asarray(first_frame)
  if img.dtype != np.uint8:
    raise ValueError(f"first_frame must be a uint8 RGB image [H, W, 3], got dtype {img.dtype} "
                     f"(convert floats with np.round(x * 255).astype(np.uint8))")
  if img.ndim != 3 or img.shape[-1] != 3 or min(img.shape[:2]) < 1:
    raise ValueError(f"first_frame must be a uint8 RGB image [H, W, 3], got shape {img.shape}")
  return img


def check_num_frames(num_frames) -> int:
  if not isinstance(num_frames, (int, np.integer)) or num_frames < 1 or (num_frames - 1) % FRAMES_PER_LATENT:
    raise ValueError(f"num_frames must be 1+4k (1, 5, 9, ..., 81), got {num_frames!r}")
  return int(num_frames)


def check_states(name: str, states, text_dim: int, text_len: int) -> jax.Array:
  """Prompt states [L, D] (or [1, L, D]) -> [1, L, D] float32; L <= text_len rows (the DiT
  zero-pads to text_len and attends to every row, as the reference)."""
  s = jnp.asarray(states)
  if s.ndim == 3 and s.shape[0] == 1:
    s = s[0]
  if s.ndim != 2 or s.shape[-1] != text_dim or not 1 <= s.shape[0] <= text_len:
    raise ValueError(f"{name} must be umT5 states [L <= {text_len}, {text_dim}] (trimmed to the prompt's "
                     f"length), got shape {tuple(s.shape)}")
  if not jnp.issubdtype(s.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {s.dtype}")
  return s[None].astype(jnp.float32)


def check_camera_inputs(poses, intrinsics, num_frames: int, pose_convention: str = "c2w"):
  """(c2w [N, 4, 4] float64, intrinsics [N or 1, 4]) after checking counts and shapes.

  N >= num_frames; poses past num_frames are dropped (as the reference cuts poses.npy to the
  video length). Fewer poses than frames is an error here: the reference would silently
  shorten the video to the poses' 4k+1."""
  p = np.asarray(poses, np.float64)
  if p.ndim != 3 or p.shape[1:] != (4, 4):
    raise ValueError(f"poses must be [N, 4, 4] ({pose_convention}, OpenCV axes), got shape {p.shape}")
  if len(p) < num_frames:
    raise ValueError(f"{len(p)} poses for num_frames={num_frames}: give at least one pose per frame "
                     f"(the reference would shorten the video to {max(1, ((len(p) - 1) // 4) * 4 + 1)} frames)")
  if not np.all(np.isfinite(p)):
    raise ValueError("poses contain non-finite values")
  if pose_convention == "w2c":
    p = np.linalg.inv(p)
  elif pose_convention != "c2w":
    raise ValueError(f"pose_convention must be 'c2w' or 'w2c', got {pose_convention!r}")
  k = np.asarray(intrinsics, np.float64)
  if k.ndim == 1:
    k = k[None]
  if k.ndim != 2 or k.shape[1] != 4 or len(k) not in (1, len(p)):
    raise ValueError(f"intrinsics must be [N={len(p)} or 1, 4] = fx, fy, cx, cy for a "
                     f"{lb_camera.HEIGHT_ORG}x{lb_camera.WIDTH_ORG} image, got shape {k.shape}")
  return p[:num_frames], k[:num_frames]


def poses_from_trajectory(trajectory, num_frames: int, height_org: int = lb_camera.HEIGHT_ORG,
                          width_org: int = lb_camera.WIDTH_ORG):
  """A commanded trajectory (e.g. `wc_jax.data.trajectories.trajectory_from_string("w-8, right-4")`)
  -> (poses [num_frames, 4, 4] c2w, intrinsics [num_frames, 4]) in the reference's poses.npy /
  intrinsics.npy format.

  Uses the trajectory's per-frame poses (`frame_c2w`, 4L-3 frames for L latents; OpenCV axes
  like LingBot's) and its normalised intrinsics (fx/W, fy/H, 0.5, 0.5) scaled to the
  reference's 480x832. A shorter path is held at its last pose (the camera rests); a longer
  one is an error (nothing commanded is dropped)."""
  num_frames = check_num_frames(num_frames)
  frames = getattr(trajectory, "frame_c2w", None)
  if frames is None:
    raise ValueError("the trajectory has no per-frame poses (given as latent poses?); build it from "
                     "motions or an action string, or pass poses.npy-style poses to generate directly")
  frames = np.asarray(frames, np.float64)
  if len(frames) > num_frames:
    raise ValueError(f"the camera path has {len(frames)} frames, more than num_frames={num_frames}; "
                     f"shorten the actions or ask for {len(frames)} frames")
  if len(frames) < num_frames:
    frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])
  k = np.asarray(trajectory.intrinsics, np.float64)[0]
  row = np.asarray([k[0, 0] * width_org, k[1, 1] * height_org, k[0, 2] * width_org, k[1, 2] * height_org])
  return frames.astype(np.float32), np.repeat(row[None], num_frames, axis=0).astype(np.float32)


def i2v_mask(lat_f: int, lat_h: int, lat_w: int) -> jax.Array:
  """[4, lat_f, lat_h, lat_w]: the reference's mask (pixel frame 0 repeated 4x, then the other
  frames, grouped 4 per latent frame): ones on latent frame 0, zeros after."""
  return jnp.zeros((MASK_CHANNELS, lat_f, lat_h, lat_w), jnp.float32).at[:, 0].set(1.0)


def to_uint8(video) -> np.ndarray:
  """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3], round((x + 1) * 127.5)."""
  v = jnp.clip((jnp.moveaxis(jnp.asarray(video, jnp.float32), 1, -1) + 1.0) * 127.5 + 0.5, 0, 255)
  return np.asarray(v).astype(np.uint8)


# ----------------------------------------------------------------------------- the pipeline

class LingBotPipeline:
  """The two experts (low-noise, high-noise; or one serving every step), the Wan VAE and the
  sampler settings. `area`: pixel area the first frame is sized to (the reference's max_area;
  None: the image's own size). `mesh`: the experts' weights (copies) and the VAE (in place) are
  placed by their logical axes (wc_jax.sharding rules), candidates (seeds) split over the batch
  axes, and every stage runs inside the mesh."""

  def __init__(self, low, high, vae, sampler: SamplerSettings = SamplerSettings(), *, area: int | None = None,
               mesh=None, vae_chunk_latents: int = 1):
    if low is None and high is None:
      raise ValueError("LingBotPipeline needs at least one expert")
    one = low if low is not None else high
    self.cfg = one.cfg
    if low is not None and high is not None and low.cfg != high.cfg:
      raise ValueError("the two experts must share one config (same graph, different weights)")
    z = vae.config.z_dim
    if self.cfg.out_dim != z or self.cfg.in_dim != 2 * z + MASK_CHANNELS:
      raise ValueError(f"DiT (in_dim {self.cfg.in_dim}, out_dim {self.cfg.out_dim}) does not fit a VAE with "
                       f"z_dim {z}: need out_dim = z and in_dim = 2z + {MASK_CHANNELS} (noise, mask, image latent)")
    if vae.config.temporal_stride != FRAMES_PER_LATENT or vae.config.spatial_stride != PIXELS_PER_LATENT:
      raise ValueError(f"the VAE's stride ({vae.config.temporal_stride}, {vae.config.spatial_stride}) must be "
                       f"({FRAMES_PER_LATENT}, {PIXELS_PER_LATENT}) (the camera folds 8x8 pixels per latent)")
    self.sampler = sampler
    self.area = area
    self.mesh = mesh
    self.vae = vae
    self.vae_chunk_latents = vae_chunk_latents
    states = {}
    for name, expert in (("low", low), ("high", high)):
      if expert is not None:
        self.apply, states[name] = functional(expert)     # one graph: either Apply serves both
    self.single_expert = len(states) == 1                  # then it serves every step
    self.low_state = states.get("low", states.get("high"))
    self.high_state = states.get("high", states.get("low"))
    if mesh is not None:
      self.low_state = jax.device_put(self.low_state, sharding.state_shardings(self.low_state, mesh))
      self.high_state = self.low_state if self.single_expert else jax.device_put(
          self.high_state, sharding.state_shardings(self.high_state, mesh))
      wan_vae.shard_model(vae, mesh)

  # -- pieces (each usable on its own: the fixture replay drives `denoise` directly)
  def frame_size(self, height: int, width: int) -> tuple[int, int]:
    """Pixel size (H, W) the video gets for an image of height x width."""
    ph, pw = self.cfg.patch_size[1:]
    if self.area is None:
      if height % (PIXELS_PER_LATENT * ph) or width % (PIXELS_PER_LATENT * pw):
        raise ValueError(f"first_frame is {height}x{width}: without an area to resize to, H and W must be "
                         f"multiples of {PIXELS_PER_LATENT * ph}x{PIXELS_PER_LATENT * pw} (VAE stride x patch)")
      return height, width
    lat_h, lat_w = latent_size(height, width, self.area, (ph, pw))
    return lat_h * PIXELS_PER_LATENT, lat_w * PIXELS_PER_LATENT

  def image(self, first_frame) -> jax.Array:
    """uint8 [H, W, 3] -> [3, H', W'] in [-1, 1] at `frame_size` (x / 127.5 - 1, as
    to_tensor().sub(0.5).div(0.5))."""
    img = check_frame(first_frame)
    h, w = self.frame_size(*img.shape[:2])
    x = jnp.asarray(img, jnp.float32) / 127.5 - 1.0
    if (h, w) != img.shape[:2]:
      x = jax.image.resize(x, (h, w, 3), method="cubic")
    return jnp.moveaxis(x, -1, 0)

  def condition(self, image, num_frames: int) -> jax.Array:
    """[3, H, W] in [-1, 1] -> y [1, 4 + z, T, H/8, W/8] = (mask, VAE latent of the image
    followed by num_frames-1 zero frames)."""
    num_frames = check_num_frames(num_frames)
    _, h, w = image.shape
    video = jnp.concatenate([image[:, None], jnp.zeros((3, num_frames - 1, h, w), image.dtype)], axis=1)
    lat = wan_vae.encode(self.vae, video[None], chunk_latents=self.vae_chunk_latents)
    mask = i2v_mask(*lat.shape[2:])
    return jnp.concatenate([mask[None], lat.astype(jnp.float32)], axis=1)

  def camera(self, poses, intrinsics, height: int, width: int, num_frames: int,
             pose_convention: str = "c2w") -> jax.Array:
    """poses.npy / intrinsics.npy -> the DiT's camera input [1, 384, T, H/8, W/8]."""
    num_frames = check_num_frames(num_frames)
    c2w, k = check_camera_inputs(poses, intrinsics, num_frames, pose_convention)
    steps = lb_camera.camera_conditioning(c2w, k, height, width, num_frames)
    return jnp.asarray(steps.c2ws_plucker_emb, jnp.float32)

  def noise(self, seeds: Sequence[int], shape) -> jax.Array:
    """[B, z, T, h, w] standard normal, candidate i from jax.random.key(seeds[i]) alone (so a
    candidate does not depend on the others in its batch)."""
    return jnp.stack([jax.random.normal(jax.random.key(int(s)), tuple(shape), jnp.float32) for s in seeds])

  def denoise(self, noise, y, context, context_null, cam, *, trace: bool = False):
    """UniPC + CFG from `noise` [B, z, T, h, w]; y [1 or B, 4+z, T, h, w]; context /
    context_null [1 or B, L, D]; cam [1, 384, T, h, w] or None. Returns latents (, Trace)."""
    b = noise.shape[0]
    bc = lambda x: x if x is None or x.shape[0] == b else jnp.broadcast_to(x, (b,) + x.shape[1:])
    s = self.sampler
    y, context, context_null = bc(y), bc(context), bc(context_null)
    if self.mesh is not None:
      noise, y, context, context_null = (self._batch_sharded(x) for x in (noise, y, context, context_null))
    with _maybe_mesh(self.mesh):
      return unipc.sample(self.apply, self.low_state, self.high_state, noise, context=context,
                          context_null=context_null, y=y, cam=cam, steps=s.steps, shift=s.shift,
                          guide_scale=s.guide_scale, boundary=s.boundary,
                          num_train_timesteps=s.num_train_timesteps, trace=trace)

  def _batch_sharded(self, x):
    """x split over the mesh's batch axes (activation_batch) where they divide it."""
    axes = ("activation_batch",) + (None,) * (x.ndim - 1)
    spec = sharding.fit_spec(sharding.logical_to_spec(axes, mesh=self.mesh), x.shape, self.mesh)
    return jax.device_put(x, NamedSharding(self.mesh, spec))

  def decode(self, latents) -> np.ndarray:
    """[B, z, T, h, w] -> uint8 [B, 1+4(T-1), 8h, 8w, 3] (the VAE clamps to [-1, 1])."""
    return to_uint8(wan_vae.decode(self.vae, latents, chunk_latents=self.vae_chunk_latents, clamp=True))

  def generate(self, first_frame, text_states, negative_states, poses, intrinsics, num_frames: int,
               seed: int | Sequence[int] = 0, *, pose_convention: str = "c2w", decode: bool = True,
               trace: bool = False) -> Output:
    """A video from a first frame, prompt states and a camera path.

    first_frame: uint8 [H, W, 3] (H, W multiples of 16, or any size when the pipeline has an
      `area`: then resized as the reference sizes it); text_states / negative_states: umT5
      states [L, text_dim] of the prompt and the negative prompt (trimmed or zero-padded rows:
      the DiT pads with zeros either way); poses: [N >= num_frames, 4, 4] camera-to-world
      (OpenCV axes; pose_convention='w2c' to pass world-to-camera), intrinsics [N or 1, 4] fx,
      fy, cx, cy for 480x832 (the reference's poses.npy / intrinsics.npy; poses=None runs
      without camera conditioning); num_frames: 1+4k; seed: an int (video [F, H, W, 3]) or a
      list of ints (G candidates, video [G, F, H, W, 3], candidate i = the video of seed i).
    Not the reference's bits: noise from jax.random, not torch.randn(generator=seed).
    """
    num_frames = check_num_frames(num_frames)
    single = isinstance(seed, (int, np.integer))
    seeds = [int(seed)] if single else [int(s) for s in seed]
    if not seeds:
      raise ValueError("seed: give an int or a non-empty list of ints")
    img = check_frame(first_frame)
    h, w = self.frame_size(*img.shape[:2])
    ctx = check_states("text_states", text_states, self.cfg.text_dim, self.cfg.text_len)
    ctx_null = check_states("negative_states", negative_states, self.cfg.text_dim, self.cfg.text_len)
    if poses is not None:
      check_camera_inputs(poses, intrinsics, num_frames, pose_convention)
    with _maybe_mesh(self.mesh):
      cam = None if poses is None else self.camera(poses, intrinsics, h, w, num_frames, pose_convention)
      y = self.condition(self.image(img), num_frames)
      noise = self.noise(seeds, (self.cfg.out_dim,) + tuple(y.shape[2:]))
      out = self.denoise(noise, y, ctx, ctx_null, cam, trace=trace)
      latents, tr = out if trace else (out, None)
      video = self.decode(latents) if decode else None
    if single and video is not None:
      video = video[0]
    return Output(video, latents, tr)


def _maybe_mesh(mesh):
  return sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- from a config

def build_pipeline(cfg, *, low=None, high=None, vae=None, mesh=None) -> LingBotPipeline:
  """The pipeline of an ml_collections config (configs/lingbot_tiny.py, configs/lingbot_a14b.py).

  Experts: given modules, else `model.checkpoint_low` / `model.checkpoint_high` (a wc_jax
  folder from `python -m wc_jax.convert` or a reference expert folder), else a random expert
  (`dit.randomize`, seeds cfg.seed + 1 / + 2: demos and tests only). VAE: given, else
  `vae.checkpoint` (a folder, or the released Wan2.1_VAE.pth), else random. `mesh`: None
  (single device) or a mesh from wc_jax.sharding.make_mesh(cfg.mesh)."""
  from wc_jax.convert import kinds, load_model
  from wc_jax.convert import wan_vae as convert_wan_vae
  from wc_jax.models.lingbot import config as lb_config
  from wc_jax.models.lingbot.dit import abstract_model, randomize
  from wc_jax.models.wan_vae.config import WanVAEConfig

  model_cfg = lb_config.from_config(cfg.model)
  seed = int(cfg.get("seed", 0))
  overrides = {k: getattr(model_cfg, k) for k in ("dtype", "attention_impl", "attention_block_kv", "remat_policy")}

  def expert(given, key, offset):
    if given is not None:
      return given
    path = str(cfg.model.get(key, "") or "")
    if path:
      return load_model(kinds.LINGBOT_DIT, path, **overrides)
    return randomize(abstract_model(model_cfg), seed + offset)     # drawn once, no init first

  low = expert(low, "checkpoint_low", 1)
  high = expert(high, "checkpoint_high", 2)
  if vae is None:
    vcfg = dict(cfg.vae.to_dict()) if "vae" in cfg else {}
    path = str(vcfg.pop("checkpoint", "") or "")
    vae_config = WanVAEConfig.from_dict(vcfg)
    if path:
      runtime = {k: getattr(vae_config, k) for k in ("dtype", "precision", "latents_mean", "latents_std")}
      vae = convert_wan_vae.load(path, config=vae_config.to_reference(), **runtime)
    else:
      vae = wan_vae.init_model(vae_config, seed + 3)
  s = cfg.sampling
  area = int(s.height) * int(s.width) if "height" in s and "width" in s else None
  return LingBotPipeline(low, high, vae, SamplerSettings.from_config(s), area=area, mesh=mesh)


def frames_from_config(cfg) -> int:
  """The config's default video length (sampling.frame_num, 1+4k)."""
  return check_num_frames(int(cfg.sampling.get("frame_num", 81)))

