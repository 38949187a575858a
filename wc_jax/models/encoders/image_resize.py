"""The reference image path before SigLIP, in NumPy, bit-exact with Pillow on uint8 images.

WorldPlay (pipeline `_prepare_vision_states`, hyvideo/utils/data_utils.py):
1. bucket: (height, width) from `generate_crop_size_list(base, stride)` whose rounded aspect
   ratio h/w is closest to the image's (first minimum wins); 480p: base 640, stride 16;
2. `resize_and_center_crop`: scale = max(tw/w, th/h), new size rounded, PIL LANCZOS resize,
   crop box ((W-tw)/2, (H-th)/2, ...) rounded half-to-even as PIL does; an image already of
   the bucket size is passed through;
3. SiglipImageProcessor: PIL BICUBIC resize to S x S (aspect ignored), x * (1/255) (float64,
   then float32), (x - 0.5) / 0.5.

Pillow resamples 8-bit images separably (horizontal pass, then vertical), each pass with
fixed-point weights of 22 fractional bits and rounding/clipping to uint8 in between; that is
reproduced here exactly, so results match Pillow to the last bit without needing Pillow.
"""
from __future__ import annotations

import math

import numpy as np

TARGET_SIZE_CONFIG = {
    "360p": {"bucket_hw_base_size": 480, "bucket_hw_bucket_stride": 16},
    "480p": {"bucket_hw_base_size": 640, "bucket_hw_bucket_stride": 16},
    "720p": {"bucket_hw_base_size": 960, "bucket_hw_bucket_stride": 16},
    "1080p": {"bucket_hw_base_size": 1440, "bucket_hw_bucket_stride": 16},
}
_PRECISION_BITS = 32 - 8 - 2


def check_image(image, what: str = "image") -> np.ndarray:
  """A uint8 [H, W, 3] RGB array, or a ValueError saying what is wrong."""
  if not isinstance(image, np.ndarray):
    try:
      image = np.asarray(image)
    except Exception as e:  # pragma: no cover - exotic inputs
      raise ValueError(f"{what}: cannot read {type(image).__name__} as an array: {e}") from e
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"{what} must be uint8 RGB [H, W, 3], got shape {image.shape}")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f"{what} is empty (shape {image.shape})")
  if image.dtype != np.uint8:
    hint = ""
    if np.issubdtype(image.dtype, np.floating):
      hint = ("; it also holds NaN/inf values" if not np.all(np.isfinite(image)) else
              "; convert floats in [0, 1] with np.round(x * 255).astype(np.uint8)")
    raise ValueError(f"{what} must be uint8 RGB [H, W, 3] (as the reference asserts), got dtype {image.dtype}{hint}")
  return image


# ----------------------------------------------------------------------------- buckets

def generate_crop_size_list(base_size: int = 256, patch_size: int = 16, max_ratio: float = 4.0):
  """(first, second) sizes in multiples of `patch_size` with about (base/patch)^2 patches;
  WorldPlay reads each pair as (height, width)."""
  num_patches = round((base_size / patch_size) ** 2)
  if max_ratio < 1.0:
    raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
  out = []
  wp, hp = num_patches, 1
  while wp > 0:
    if max(wp, hp) / min(wp, hp) <= max_ratio:
      out.append((wp * patch_size, hp * patch_size))
    if (hp + 1) * wp <= num_patches:
      hp += 1
    else:
      wp -= 1
  return out


def closest_bucket(height: int, width: int, base_size: int = 640, stride: int = 16) -> tuple[int, int]:
  """(height, width) of the bucket closest in aspect ratio (ratios rounded to 5 digits)."""
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got height={height} width={width}")
  sizes = generate_crop_size_list(base_size, stride)
  ratios = np.array([round(float(h) / float(w), 5) for h, w in sizes])
  i = int(np.abs(ratios - float(height) / float(width)).argmin())
  return sizes[i][0], sizes[i][1]


# ----------------------------------------------------------------------------- Pillow resampling

def _bicubic(x):
  a = -0.5
  x = np.abs(x)
  return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                  np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _sinc(x):
  with np.errstate(invalid="ignore", divide="ignore"):
    y = np.sin(x * math.pi) / (x * math.pi)
  return np.where(x == 0.0, 1.0, y)


def _lanczos(x):
  return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


def _bilinear(x):
  x = np.abs(x)
  return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {"bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0), "bilinear": (_bilinear, 1.0)}


def _coefficients(in_size: int, out_size: int, resample: str):
  """Per output pixel: first input index [out], fixed-point weights [out, k] (Pillow's
  precompute_coeffs + normalize_coeffs_8bpc)."""
  filt, support0 = FILTERS[resample]
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = support0 * filterscale
  ksize = int(math.ceil(support)) * 2 + 1
  centers = (np.arange(out_size) + 0.5) * scale
  xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)       # C (int) truncation
  xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
  taps = np.arange(ksize)[None, :]
  w = filt((taps + xmin[:, None] - centers[:, None] + 0.5) * (1.0 / filterscale))
  w = np.where(taps < xmax[:, None], w, 0.0)
  total = w.sum(axis=1, keepdims=True)
  w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
  one = float(1 << _PRECISION_BITS)
  fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int64)
  return xmin, fixed


def _resample_axis(img: np.ndarray, out_size: int, axis: int, resample: str) -> np.ndarray:
  in_size = img.shape[axis]
  xmin, k = _coefficients(in_size, out_size, resample)
  x = np.moveaxis(img, axis, 0).astype(np.int64)
  acc = np.full((out_size,) + x.shape[1:], 1 << (_PRECISION_BITS - 1), np.int64)
  extra = (1,) * (x.ndim - 1)
  for t in range(k.shape[1]):
    idx = np.minimum(xmin + t, in_size - 1)
    acc += x[idx] * k[:, t].reshape((out_size,) + extra)
  out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
  return np.moveaxis(out, 0, axis)


def pil_resize(image: np.ndarray, height: int, width: int, resample: str = "bicubic") -> np.ndarray:
  """uint8 [H, W, C] -> [height, width, C], as `Image.fromarray(image).resize((width, height), f)`."""
  if resample not in FILTERS:
    raise ValueError(f"resample must be one of {sorted(FILTERS)}, got {resample!r}")
  if height <= 0 or width <= 0:
    raise ValueError(f"resize target must be positive, got {height}x{width}")
  if image.dtype != np.uint8:
    raise ValueError(f"pil_resize takes uint8 images, got {image.dtype}")
  out = image
  if width != image.shape[1]:
    out = _resample_axis(out, width, 1, resample)
  if height != image.shape[0]:
    out = _resample_axis(out, height, 0, resample)
  return out


def resize_and_center_crop(image: np.ndarray, target_height: int, target_width: int) -> np.ndarray:
  """The reference's `resize_and_center_crop`: cover the target (LANCZOS), then centre crop."""
  image = check_image(image)
  h, w = image.shape[:2]
  if (h, w) == (target_height, target_width):
    return image
  scale = max(target_width / w, target_height / h)
  rw, rh = int(round(w * scale)), int(round(h * scale))
  resized = pil_resize(image, rh, rw, "lanczos")
  box = [round(v) for v in ((rw - target_width) / 2, (rh - target_height) / 2,
                            (rw + target_width) / 2, (rh + target_height) / 2)]
  x0, y0, x1, y1 = box
  # PIL pads a box outside the image with zeros; with the cover scale it never is
  out = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
  sy0, sx0 = max(y0, 0), max(x0, 0)
  sy1, sx1 = min(y1, rh), min(x1, rw)
  out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = resized[sy0:sy1, sx0:sx1]
  return out


# PIL resample codes as processor configs store them
PIL_RESAMPLE = {1: "lanczos", 2: "bilinear", 3: "bicubic"}


def siglip_pixels(image: np.ndarray, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                  rescale: float = 1 / 255, resample: str | int = "bicubic") -> np.ndarray:
  """SiglipImageProcessor: uint8 [H, W, 3] -> float32 [size, size, 3] (channels last)."""
  image = check_image(image)
  if isinstance(resample, int):
    if resample not in PIL_RESAMPLE:
      raise ValueError(f"PIL resample code {resample} is not supported; known {PIL_RESAMPLE}")
    resample = PIL_RESAMPLE[resample]
  x = pil_resize(image, size, size, resample)
  x = (x.astype(np.float64) * rescale).astype(np.float32)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def reference_image_pixels(image: np.ndarray, size: int, base_size: int = 640, stride: int = 16):
  """The whole image path: (bucket (h, w), bucket-cropped uint8 image, SigLIP pixels [S, S, 3])."""
  image = check_image(image, "reference image")
  hw = closest_bucket(image.shape[0], image.shape[1], base_size, stride)
  cropped = resize_and_center_crop(image, *hw)
  return hw, cropped, siglip_pixels(cropped, size)
