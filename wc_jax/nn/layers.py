"""Small layers shared by the models, with logical axis names on every parameter.

The reference computes norms in float32 and casts back; so do these, whatever the
compute dtype.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype


def _part(init, names):
  return nnx.with_partitioning(init, names)


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          use_bias: bool = True, dtype=None, param_dtype=jnp.float32,
          kernel_init=nnx.initializers.lecun_normal(), bias_init=nnx.initializers.zeros_init()) -> nnx.Linear:
  """nnx.Linear with kernel [in, out] named `axes` and bias named axes[1]."""
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=_part(kernel_init, axes), bias_init=_part(bias_init, (axes[1],)),
                    precision=jax.lax.Precision.HIGHEST, rngs=rngs)


class LayerNorm(nnx.Module):
  """LayerNorm with torch's numerics (two-pass variance, float32 statistics)."""

  def __init__(self, dim: int, *, eps: float = 1e-5, affine: bool = True, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.affine = affine
    if affine:
      self.weight = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))
      self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("norm",))

  def __call__(self, x):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.affine:
      y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) * weight, statistics in float32 (reference RMSNorm)."""

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.weight[...].astype(x.dtype)


def gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def gelu(x):
  return jax.nn.gelu(x, approximate=False)


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """[cos, sin] embedding of float timesteps, float32 (the reference's table).

  t: [...] -> [..., dim]. Large arguments (t up to 1000) are range-reduced in two steps
  so that float32 cos/sin agree with a float64 evaluation to ~1e-6.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  args = _reduce_2pi(args)
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
  return emb


# 2*pi split into a float32-exact head and a small tail (Cody-Waite reduction).
_TWO_PI_HI = 6.28125
_TWO_PI_LO = 2 * math.pi - 6.28125


def _reduce_2pi(x):
  n = jnp.round(x / (2 * math.pi))
  return (x - n * _TWO_PI_HI) - n * _TWO_PI_LO


class TimestepEmbedder(nnx.Module):
  """Sinusoid(256) -> Linear -> SiLU -> Linear (reference TimestepEmbedder; also used for actions)."""

  def __init__(self, hidden: int, *, freq_dim: int = 256, max_period: float = 10000.0, dtype=None,
               param_dtype=jnp.float32, zero_out: bool = False, rngs: nnx.Rngs):
    self.freq_dim = freq_dim
    self.max_period = max_period
    init = nnx.initializers.normal(0.02)
    self.fc1 = dense(freq_dim, hidden, ("in_features", "embed"), rngs=rngs, dtype=dtype,
                     param_dtype=param_dtype, kernel_init=init)
    self.fc2 = dense(hidden, hidden, ("embed", "embed_out"), rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                     kernel_init=nnx.initializers.zeros_init() if zero_out else init)

  def __call__(self, t):
    return self.fc2(jax.nn.silu(self.fc1(timestep_sinusoid(t, self.freq_dim, self.max_period))))
