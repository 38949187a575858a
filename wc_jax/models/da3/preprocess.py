"""Frames -> network input, following the reference InputProcessor.

Reference pipeline per image (uint8 RGB): resize so the longest side is
`process_res` (cv2 INTER_AREA when shrinking, INTER_CUBIC when growing), then
resize each side to the nearest multiple of 14 (ties go up), then /255 and
ImageNet mean/std. Both resizes here are separable matrices: area averaging and
Keys cubic (A = -0.75, half-pixel centres, clamped borders), with rounding to
uint8 after each step when `quantize` (the reference works on uint8 images).
OpenCV's fixed-point uint8 arithmetic is not reproduced, so values can differ by
one grey level from the reference's.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.models.da3.vit import bicubic_matrix

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 14
RESIZE_METHODS = ("upper_bound_resize", "lower_bound_resize")


def check_frames(frames, allow_batch: bool = False) -> None:
  """Raises ValueError unless frames is [F, H, W, 3] (or [B, F, H, W, 3] when
  allow_batch) and uint8 or floating point."""
  shape = getattr(frames, "shape", None)
  dtype = getattr(frames, "dtype", None)
  want = "[F, H, W, 3] or [B, F, H, W, 3]" if allow_batch else "[F, H, W, 3]"
  if shape is None or dtype is None:
    raise ValueError(f"frames must be an array {want}, got {type(frames).__name__}")
  if len(shape) != 4 and not (allow_batch and len(shape) == 5):
    raise ValueError(f"frames must be {want}, got shape {tuple(shape)}")
  if shape[-1] != 3:
    raise ValueError(f"frames must have 3 (RGB) channels last, got shape {tuple(shape)}")
  if any(int(d) < 1 for d in shape):
    raise ValueError(f"frames must be non-empty, got shape {tuple(shape)}")
  dt = np.dtype(dtype)
  if not (dt == np.uint8 or np.issubdtype(dt, np.floating) or dt == jnp.bfloat16):
    raise ValueError(f"frames must be uint8 (0..255) or floating point in [0, 1], got dtype {dt}")


def to_unit_range(frames) -> Array:
  """uint8 -> /255; floating -> float32 as is (expected in [0, 1])."""
  check_frames(frames)
  if np.dtype(frames.dtype) == np.uint8:
    return jnp.asarray(frames, jnp.float32) / 255.0
  return jnp.asarray(frames, jnp.float32)


def _nearest_multiple(x: int, p: int) -> int:
  down = (x // p) * p
  up = down + p
  return up if abs(up - x) <= abs(x - down) else down


def _bound_size(h: int, w: int, process_res: int, method: str) -> tuple[int, int]:
  if method not in RESIZE_METHODS:
    raise ValueError(f"unknown process_res_method {method!r}; expected one of {RESIZE_METHODS}")
  side = max(h, w) if method == "upper_bound_resize" else min(h, w)
  if side == process_res:
    return h, w
  scale = process_res / float(side)
  return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def processed_size(h: int, w: int, process_res: int = 504,
                   method: str = "upper_bound_resize") -> tuple[int, int]:
  """(H, W) the reference feeds the network for an h x w image."""
  h1, w1 = _bound_size(h, w, process_res, method)
  return max(1, _nearest_multiple(h1, PATCH_SIZE)), max(1, _nearest_multiple(w1, PATCH_SIZE))


@functools.lru_cache(maxsize=64)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] box-filter (pixel-area) averaging, cv2 INTER_AREA for shrinking."""
  scale = n_in / n_out
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    a, b = i * scale, min((i + 1) * scale, n_in)
    for j in range(int(math.floor(a)), int(math.ceil(b))):
      m[i, j] = max(0.0, min(b, j + 1) - max(a, j))
    m[i] /= m[i].sum()
  return m


def _axis_matrix(n_in: int, n_out: int, grow: bool) -> np.ndarray:
  if n_in == n_out:
    return np.eye(n_in)
  return bicubic_matrix(n_in, n_out, n_in / n_out) if grow else area_matrix(n_in, n_out)


def _resize(x: Array, size: tuple[int, int], grow: bool, quantize: bool) -> Array:
  """x [F, H, W, 3] on the 0..255 scale."""
  _, h, w, _ = x.shape
  oh, ow = size
  ay = jnp.asarray(_axis_matrix(h, oh, grow), jnp.float32)
  ax = jnp.asarray(_axis_matrix(w, ow, grow), jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,fhwc->fowc", ay, x, precision=hp)
  x = jnp.einsum("pw,fowc->fopc", ax, x, precision=hp)
  if quantize:
    x = jnp.clip(jnp.round(x), 0.0, 255.0)
  return x


def resize_plan(h: int, w: int, process_res: int = 504,
                method: str = "upper_bound_resize") -> tuple[tuple[tuple[int, int], bool], ...]:
  """The reference's resize steps for an h x w image: ((out_h, out_w), enlarging) each."""
  steps = []
  h1, w1 = _bound_size(h, w, process_res, method)
  if (h1, w1) != (h, w):
    scale = process_res / float(max(h, w) if method == "upper_bound_resize" else min(h, w))
    steps.append(((h1, w1), scale > 1.0))
  h2, w2 = max(1, _nearest_multiple(h1, PATCH_SIZE)), max(1, _nearest_multiple(w1, PATCH_SIZE))
  if (h2, w2) != (h1, w1):
    steps.append(((h2, w2), h2 > h1 or w2 > w1))
  return tuple(steps)


@functools.partial(jax.jit, static_argnames=("steps", "quantize", "normalise"))
def _prepare(frames: Array, steps, quantize: bool, normalise: bool) -> Array:
  if frames.dtype == jnp.uint8:
    x = frames.astype(jnp.float32)
  else:
    x = frames.astype(jnp.float32) * 255.0
    if quantize:
      x = jnp.clip(jnp.round(x), 0.0, 255.0)
  for size, grow in steps:
    x = _resize(x, size, grow, quantize)
  x = x / 255.0
  return normalize(x) if normalise else x


def resize_frames(frames, process_res: int = 504, method: str = "upper_bound_resize",
                  quantize: bool = True) -> Array:
  """[F, H, W, 3] (uint8 or [0,1]) -> [F, H', W', 3] in [0, 1], H', W' multiples of 14."""
  check_frames(frames)
  steps = resize_plan(frames.shape[1], frames.shape[2], process_res, method)
  return _prepare(jnp.asarray(frames), steps, bool(quantize), False)


def normalize(frames01: Array) -> Array:
  """ImageNet mean/std on [..., 3] images in [0, 1]."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (frames01.astype(jnp.float32) - mean) / std


def preprocess(frames, process_res: int | None = 504, method: str = "upper_bound_resize",
               quantize: bool = True) -> Array:
  """Frames [F, H, W, 3] or [B, F, H, W, 3] -> normalised network input [B, F, H', W', 3]
  (B = 1 for unbatched frames).

  process_res=None skips the resizes; the sides must then already be multiples of 14.
  """
  check_frames(frames, allow_batch=True)
  lead = tuple(frames.shape[:-3]) if len(frames.shape) == 5 else (1, frames.shape[0])
  h, w = frames.shape[-3], frames.shape[-2]
  if process_res is None:
    if h % PATCH_SIZE or w % PATCH_SIZE:
      raise ValueError(f"with process_res=None the frame size must be a multiple of {PATCH_SIZE}, "
                       f"got {h}x{w}")
    steps = ()
  else:
    steps = resize_plan(h, w, process_res, method)
  x = jnp.asarray(frames).reshape((-1, h, w, 3))
  x = _prepare(x, steps, bool(quantize), True)
  return x.reshape(lead + x.shape[1:])
