"""Building blocks of the Wan2.1 causal VAE, channels-last ([B, T, H, W, C]).

Every temporal convolution streams. A kernel-3 causal conv sees the video's
frames zero-padded by 2 in front; its cache is the last 2 input frames (zeros
before the video has that many), so a video run in chunks computes what it
computes whole. The reference keeps the same stream with its feature-cache
list; here a module returns its cache as a pytree (nested dicts mirroring the
module tree) and `cache=None` means "start of the video".

The two resampling layers are stateful in time as the reference makes them:
  * downsample3d: frame 0 is only reduced in space; later frames go through a
    stride-2 time conv over (previous frame, pair), cache = the last frame;
  * upsample3d: frame 0 is only enlarged in space; later frames go through a
    causal time conv to 2x channels that become 2 frames; its stream starts
    at frame 1 (frame 0 never enters its history).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.wan_vae.config import CACHE_FRAMES
from wc_jax.sharding import constrain

Cache = dict[str, Any] | None

ACTIVATION_AXES = ("activation_batch", "activation_frames", "activation_height", "activation_width",
                   "activation_channels")
KERNEL_AXES = {3: ("kernel_t", "kernel_h", "kernel_w", "conv_in", "conv_out"),
               2: ("kernel_h", "kernel_w", "conv_in", "conv_out")}


def precision_of(name: str | None):
  return None if name is None else jax.lax.Precision[name.upper()]


def shard_activation(x: jax.Array) -> jax.Array:
  """Batch over the data axes, frame height over `context` (see LOGICAL_RULES)."""
  return constrain(x, ACTIVATION_AXES)


def _param(value, names):
  # placed by the caller (converter / loader), so a model can be built outside any mesh
  return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _uniform(rngs: nnx.Rngs, shape, bound: float, dtype) -> jax.Array:
  """U(-bound, bound) from the next `params` key, drawn on the host outside a trace
  (an eager jax.random call compiles once per shape, slow for dozens of convs)."""
  key = rngs.params()
  if isinstance(key, jax.core.Tracer):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  rng = np.random.default_rng(np.asarray(key).ravel())
  return jnp.asarray(rng.uniform(-bound, bound, shape).astype(jnp.dtype(dtype)))


class Conv(nnx.Module):
  """A 2-D or 3-D convolution over the trailing spatial axes; kernel [*k, in, out].

  `padding` is zero padding per spatial axis as (before, after) pairs; the
  reference pads with zeros everywhere (never replicate).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...], *,
               stride: tuple[int, ...] | None = None, padding=None, dtype="float32",
               param_dtype="float32", precision=None, rngs: nnx.Rngs):
    kernel = tuple(int(k) for k in kernel)
    bound = 1.0 / math.sqrt(in_channels * int(np.prod(kernel)))  # torch's default conv init range
    self.kernel = _param(_uniform(rngs, kernel + (in_channels, out_channels), bound, param_dtype),
                         KERNEL_AXES[len(kernel)])
    self.bias = _param(_uniform(rngs, (out_channels,), bound, param_dtype), ("conv_out",))
    self.stride = tuple(stride or (1,) * len(kernel))
    self.padding = tuple(padding or ((0, 0),) * len(kernel))
    self.dtype = jnp.dtype(dtype)
    self.precision = precision

  def __call__(self, x: jax.Array) -> jax.Array:
    # weights gathered whole before use (FSDP style), as wc_jax.models.vae does
    nd = self.kernel.ndim - 2
    w = constrain(self.kernel[...], (None,) * (nd + 2)).astype(self.dtype)
    b = constrain(self.bias[...], (None,)).astype(self.dtype)
    x = x.astype(self.dtype)
    if all(k == 1 for k in w.shape[:nd]) and all(s == 1 for s in self.stride) and \
        all(p == (0, 0) for p in self.padding):
      y = jnp.einsum("...c,cd->...d", x, w.reshape(w.shape[-2:]), precision=precision_of(self.precision))
      return y + b
    lead = x.shape[:-nd - 1]
    xs = x.reshape((-1,) + x.shape[-nd - 1:])
    spatial = "DHW"[-nd:]
    y = jax.lax.conv_general_dilated(xs, w, self.stride, self.padding,
                                     dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
                                     precision=precision_of(self.precision))
    return (y + b).reshape(lead + y.shape[1:])


class CausalConv3d(Conv):
  """3x3x3 conv, zero-padded by 1 in space and causally (cache or zeros) in time."""

  def __init__(self, in_channels: int, out_channels: int, **kw):
    super().__init__(in_channels, out_channels, (3, 3, 3), padding=((0, 0), (1, 1), (1, 1)), **kw)

  def __call__(self, x: jax.Array, cache: jax.Array | None = None):
    x = shard_activation(x)
    if cache is None:
      cache = jnp.zeros((x.shape[0], CACHE_FRAMES) + x.shape[2:], x.dtype)
    x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return shard_activation(super().__call__(x)), x[:, -CACHE_FRAMES:]


class RMSNorm(nnx.Module):
  """x / max(||x||_channels, 1e-12) * sqrt(C) * gamma (the reference's F.normalize form)."""

  def __init__(self, channels: int, *, param_dtype="float32", **_):
    self.gamma = _param(jnp.ones((channels,), param_dtype), ("norm",))
    self.scale = math.sqrt(channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
    return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
  """(RMS norm, SiLU, causal conv) twice, plus a 1x1x1-projected skip when widths differ."""

  def __init__(self, in_channels: int, out_channels: int, **kw):
    self.norm1 = RMSNorm(in_channels, **kw)
    self.conv1 = CausalConv3d(in_channels, out_channels, **kw)
    self.norm2 = RMSNorm(out_channels, **kw)
    self.conv2 = CausalConv3d(out_channels, out_channels, **kw)
    self.shortcut = Conv(in_channels, out_channels, (1, 1, 1), **kw) if in_channels != out_channels else None

  def __call__(self, x: jax.Array, cache: Cache = None):
    c = cache or {}
    h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c.get("conv1"))
    h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), c.get("conv2"))
    skip = self.shortcut(x) if self.shortcut is not None else x
    return h + skip, {"conv1": c1, "conv2": c2}


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the pixels of each frame, plus a residual.

  Frames never attend to each other (the reference folds time into the batch).
  """

  def __init__(self, channels: int, **kw):
    self.norm = RMSNorm(channels, **kw)
    self.to_qkv = Conv(channels, 3 * channels, (1, 1), **kw)
    self.proj = Conv(channels, channels, (1, 1), **kw)
    self.precision = kw.get("precision")

  def __call__(self, x: jax.Array, cache: Cache = None):
    b, t, hh, ww, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * t, hh * ww, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    prec = precision_of(self.precision)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, precision=prec, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(v.dtype)
    o = jnp.einsum("nqk,nkc->nqc", probs, v, precision=prec).reshape(b, t, hh, ww, c)
    return x + self.proj(o), None


class Resample(nnx.Module):
  """The reference's Resample: 2x spatial up/down, optionally 2x in time (see the module doc).

  modes: "upsample2d", "upsample3d" (channels halve), "downsample2d", "downsample3d".
  """

  def __init__(self, dim: int, mode: str, **kw):
    if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
      raise ValueError(f"unknown resample mode {mode!r}")
    self.mode = mode
    if mode.startswith("upsample"):
      self.conv = Conv(dim, dim // 2, (3, 3), padding=((1, 1), (1, 1)), **kw)
      if mode == "upsample3d":
        self.time_conv = Conv(dim, 2 * dim, (3, 1, 1), **kw)
    else:
      self.conv = Conv(dim, dim, (3, 3), stride=(2, 2), padding=((0, 1), (0, 1)), **kw)
      if mode == "downsample3d":
        self.time_conv = Conv(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)

  def __call__(self, x: jax.Array, cache: Cache = None):
    if self.mode == "upsample2d":
      return self._up_space(x), None
    if self.mode == "downsample2d":
      return self.conv(x), None
    if self.mode == "upsample3d":
      return self._up_time(x, cache)
    return self._down_time(x, cache)

  # ------------------------------------------------------------------ upsampling
  def _up_space(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest, exact for scale 2
    return shard_activation(self.conv(x))

  def _time_stream(self, x, cache):
    """Causal time conv over the stream that starts at frame 1; each frame -> 2 frames."""
    if cache is None:
      cache = jnp.zeros((x.shape[0], CACHE_FRAMES) + x.shape[2:], x.dtype)
    xs = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    y = self.time_conv(xs)                               # [B, t, H, W, 2C]
    b, t, h, w, c2 = y.shape
    y = y.reshape(b, t, h, w, 2, c2 // 2)
    y = jnp.moveaxis(y, 4, 2).reshape(b, 2 * t, h, w, c2 // 2)
    return y, xs[:, -CACHE_FRAMES:]

  def _up_time(self, x, cache):
    if cache is None:                                    # start: frame 0 skips the time conv
      parts, new = [x[:, :1]], None
      if x.shape[1] > 1:
        y, new = self._time_stream(x[:, 1:], None)
        parts.append(y)
      if new is None:
        new = jnp.zeros((x.shape[0], CACHE_FRAMES) + x.shape[2:], x.dtype)
      x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    else:
      x, new = self._time_stream(x, cache)
    return self._up_space(x), new

  # ------------------------------------------------------------------ downsampling
  def _down_time(self, x, cache):
    s = shard_activation(self.conv(x))
    if cache is None:                                    # start: frame 0 skips the time conv
      out = s[:, :1]
      if s.shape[1] > 1:
        out = jnp.concatenate([out, self.time_conv(s)], axis=1)
    else:
      out = self.time_conv(jnp.concatenate([cache.astype(s.dtype), s], axis=1))
    return shard_activation(out), s[:, -1:]
