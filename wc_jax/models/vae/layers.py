"""Building blocks of the causal 3-D VAE, channels-last ([B, T, H, W, C]).

Every causal convolution streams: it takes the frames that came before the
current chunk (a cache of `CACHE_FRAMES` input frames, or None at the start of
a video, where the first frame is replicated instead) and returns the cache for
the next chunk. Running a video in chunks therefore computes exactly what
running it whole computes. Module caches are nested dicts that mirror the
module tree, so a whole model's cache is one pytree.
"""
from __future__ import annotations

import math
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.vae.config import CACHE_FRAMES
from wc_jax.sharding import constrain

Cache = dict[str, Any] | None

ACTIVATION_AXES = ("activation_batch", "activation_frames", "activation_height", "activation_width",
                   "activation_channels")
KERNEL_AXES = ("kernel_t", "kernel_h", "kernel_w", "conv_in", "conv_out")


def _precision(name: str | None):
  return None if name is None else jax.lax.Precision[name.upper()]


def shard_activation(x: jax.Array) -> jax.Array:
  """Batch over the data axes, frame height over `context` (see LOGICAL_RULES)."""
  return constrain(x, ACTIVATION_AXES)


def _param(value, names):
  # eager_sharding=False: parameters are placed by the caller (converter / loader),
  # not at construction, so a model can be built outside any mesh.
  return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _uniform(rngs: nnx.Rngs, shape, bound: float, dtype) -> jax.Array:
  """U(-bound, bound) from the next `params` key.

  Outside a trace the numbers are drawn on the host from the key's bits: an
  eager jax.random call compiles once per distinct shape, which made building
  even a small VAE take tens of seconds on CPU. Traced (e.g. nnx.eval_shape)
  construction stays in JAX.
  """
  key = rngs.params()
  if isinstance(key, jax.core.Tracer):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  rng = np.random.default_rng(np.asarray(key).ravel())
  return jnp.asarray(rng.uniform(-bound, bound, shape).astype(jnp.dtype(dtype)))


class Conv3d(nnx.Module):
  """A 3-D convolution without padding (callers pad); kernel [kt, kh, kw, in, out]."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dtype="float32",
               param_dtype="float32", precision=None, rngs: nnx.Rngs):
    k = (kernel_size,) * 3
    bound = 1.0 / math.sqrt(in_channels * kernel_size ** 3)  # torch's default Conv3d init range
    self.kernel = _param(_uniform(rngs, k + (in_channels, out_channels), bound, param_dtype), KERNEL_AXES)
    self.bias = _param(_uniform(rngs, (out_channels,), bound, param_dtype), ("conv_out",))
    self.kernel_size = kernel_size
    self.dtype = jnp.dtype(dtype)
    self.precision = precision

  def __call__(self, x: jax.Array) -> jax.Array:
    # Weights are gathered whole before use (FSDP style) and activations stay
    # unsplit over channels. Letting XLA split the conv's output features
    # instead miscompiles (wrong values) on a data x fsdp x context CPU mesh
    # when the height is context-split and edge-padded (jax 0.10.2).
    w = constrain(self.kernel[...], (None,) * 5).astype(self.dtype)
    b = constrain(self.bias[...], (None,)).astype(self.dtype)
    x = x.astype(self.dtype)
    if self.kernel_size == 1:
      y = jnp.einsum("bthwc,cd->bthwd", x, w[0, 0, 0], precision=_precision(self.precision))
    else:
      y = jax.lax.conv_general_dilated(x, w, (1, 1, 1), "VALID",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                       precision=_precision(self.precision))
    return shard_activation(y + b)


class CausalConv3d(nnx.Module):
  """Conv3d, replicate-padded in space and causally (past frames only) in time.

  `cache` holds the CACHE_FRAMES input frames before `x`; None means `x` starts
  the video, so its first frame is replicated in front, as the reference's
  replicate padding does. Returns (y, cache for the next chunk).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, **kw):
    if kernel_size - 1 != CACHE_FRAMES:
      raise ValueError(f"causal conv kernel {kernel_size} does not match the {CACHE_FRAMES}-frame cache")
    self.conv = Conv3d(in_channels, out_channels, kernel_size, **kw)
    self.pad = kernel_size // 2

  def __call__(self, x: jax.Array, cache: jax.Array | None = None):
    x = shard_activation(x)
    if cache is None:
      front = jnp.repeat(x[:, :1], CACHE_FRAMES, axis=1)
    else:
      front = cache.astype(x.dtype)
    x = jnp.concatenate([front, x], axis=1)
    new_cache = x[:, -CACHE_FRAMES:]
    p = self.pad
    x = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    return self.conv(x), new_cache


class RMSNorm(nnx.Module):
  """x / ||x||_channels · sqrt(C) · γ (the reference's F.normalize form, eps 1e-12)."""

  def __init__(self, channels: int, *, param_dtype="float32", **_):
    self.gamma = _param(jnp.ones((channels,), param_dtype), ("norm",))
    self.scale = math.sqrt(channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
    return y.astype(x.dtype)


class ResnetBlock(nnx.Module):
  """norm → swish → causal conv, twice, plus a (1×1×1-projected) skip."""

  def __init__(self, in_channels: int, out_channels: int, **kw):
    self.norm1 = RMSNorm(in_channels, **kw)
    self.conv1 = CausalConv3d(in_channels, out_channels, 3, **kw)
    self.norm2 = RMSNorm(out_channels, **kw)
    self.conv2 = CausalConv3d(out_channels, out_channels, 3, **kw)
    self.nin_shortcut = Conv3d(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

  def __call__(self, x: jax.Array, cache: Cache = None):
    cache = cache or {}
    h = jax.nn.silu(self.norm1(x))
    h, c1 = self.conv1(h, cache.get("conv1"))
    h = jax.nn.silu(self.norm2(h))
    h, c2 = self.conv2(h, cache.get("conv2"))
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h, {"conv1": c1, "conv2": c2}


class AttnBlock(nnx.Module):
  """Single-head self-attention over the pixels of each frame, plus a residual.

  The reference masks attention causally over frames, but its cached
  encode/decode feeds one latent frame per call, so every frame attends only
  to itself; that is what this block computes for any chunking.
  """

  def __init__(self, channels: int, **kw):
    self.norm = RMSNorm(channels, **kw)
    self.q = Conv3d(channels, channels, 1, **kw)
    self.k = Conv3d(channels, channels, 1, **kw)
    self.v = Conv3d(channels, channels, 1, **kw)
    self.proj_out = Conv3d(channels, channels, 1, **kw)
    self.precision = kw.get("precision")

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, hh, ww, c = x.shape
    h = self.norm(x)
    q, k, v = (einops.rearrange(m(h), "b t h w c -> (b t) (h w) c") for m in (self.q, self.k, self.v))
    prec = _precision(self.precision)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, precision=prec, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(c)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    o = jnp.einsum("nqk,nkc->nqc", probs, v, precision=prec)
    o = einops.rearrange(o, "(b t) (h w) c -> b t h w c", b=b, t=t, h=hh, w=ww)
    return x + self.proj_out(o)


def _group_mean(x: jax.Array, groups: int) -> jax.Array:
  """Averages consecutive channel groups: [..., (c g)] -> [..., c]."""
  return einops.reduce(x, "... (c g) -> ... c", "mean", g=groups)


class Downsample(nnx.Module):
  """Causal conv then space(-time)-to-depth, plus a channel-averaged shortcut.

  Temporal (2x2x2) downsampling pairs frames (1,2), (3,4), ...; the video's
  first frame stands alone, is reduced spatially only and its channels are
  doubled, which keeps 1+2k frames -> 1+k.
  """

  def __init__(self, in_channels: int, out_channels: int, temporal: bool, **kw):
    factor = 8 if temporal else 4
    self.conv = CausalConv3d(in_channels, out_channels // factor, 3, **kw)
    self.temporal = temporal
    self.group = factor * in_channels // out_channels

  def __call__(self, x: jax.Array, cache: jax.Array | None = None):
    first = cache is None
    h, new_cache = self.conv(x, cache)
    if not self.temporal:
      return self._pairs(h, x, 1), new_cache
    if not first:
      return self._pairs(h, x, 2), new_cache
    h0 = einops.rearrange(h[:, :1], "b t (h r2) (w r3) c -> b t h w (r2 r3 c)", r2=2, r3=2)
    h0 = jnp.concatenate([h0, h0], axis=-1)
    s0 = einops.rearrange(x[:, :1], "b t (h r2) (w r3) c -> b t h w (r2 r3 c)", r2=2, r3=2)
    out = h0 + _group_mean(s0, self.group // 2)
    if x.shape[1] > 1:
      out = jnp.concatenate([out, self._pairs(h[:, 1:], x[:, 1:], 2)], axis=1)
    return out, new_cache

  def _pairs(self, h, x, r1):
    pattern = "b (t r1) (h r2) (w r3) c -> b t h w (r1 r2 r3 c)"
    h = einops.rearrange(h, pattern, r1=r1, r2=2, r3=2)
    s = einops.rearrange(x, pattern, r1=r1, r2=2, r3=2)
    return h + _group_mean(s, self.group)


class Upsample(nnx.Module):
  """Causal conv then depth-to-space(-time), plus a channel-repeated shortcut.

  Temporal upsampling turns each frame into 2, except the video's first frame,
  which is upsampled spatially only (keeping the first half of the channels),
  so 1+k frames -> 1+2k.
  """

  def __init__(self, in_channels: int, out_channels: int, temporal: bool, **kw):
    factor = 8 if temporal else 4
    self.conv = CausalConv3d(in_channels, out_channels * factor, 3, **kw)
    self.temporal = temporal
    self.repeats = factor * out_channels // in_channels
    self.out_channels = out_channels

  def __call__(self, x: jax.Array, cache: jax.Array | None = None):
    first = cache is None
    h, new_cache = self.conv(x, cache)
    if not self.temporal:
      h = einops.rearrange(h, "b t h w (r2 r3 c) -> b t (h r2) (w r3) c", r2=2, r3=2)
      s = jnp.repeat(x, self.repeats, axis=-1)
      s = einops.rearrange(s, "b t h w (r2 r3 c) -> b t (h r2) (w r3) c", r2=2, r3=2)
      return h + s, new_cache
    if not first:
      return self._expand(h, x), new_cache
    h0 = einops.rearrange(h[:, :1], "b t h w (r2 r3 c) -> b t (h r2) (w r3) c", r2=2, r3=2)
    h0 = h0[..., :self.out_channels]
    s0 = einops.rearrange(x[:, :1], "b t h w (r2 r3 c) -> b t (h r2) (w r3) c", r2=2, r3=2)
    out = h0 + jnp.repeat(s0, self.repeats // 2, axis=-1)
    if x.shape[1] > 1:
      out = jnp.concatenate([out, self._expand(h[:, 1:], x[:, 1:])], axis=1)
    return out, new_cache

  def _expand(self, h, x):
    pattern = "b t h w (r1 r2 r3 c) -> b (t r1) (h r2) (w r3) c"
    h = einops.rearrange(h, pattern, r1=2, r2=2, r3=2)
    s = einops.rearrange(x, pattern, r1=2, r2=2, r3=2)
    return h + jnp.repeat(s, self.repeats, axis=-1)
