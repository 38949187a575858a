"""Small layers for Depth Anything 3, laid out so the torch mapping is one rule each.

Every layer lists in `TORCH` how its parameters map to the reference state dict:
leaf name -> (torch leaf name, to-torch transform, from-torch transform). The
converter walks the model and applies these, so no key table is written by hand.

Parameters carry their logical axis names as `out_sharding` metadata (flax 0.12
renamed `sharding_names` to `out_sharding`; the two are the same metadata).
Eager sharding is off: placement is decided later, from these names, by the
caller's mesh.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def _ident(x):
  return x


def _t2(x):
  return np.transpose(x)


def _conv_to_torch(k):
  # HWIO -> OIHW
  return np.transpose(k, (3, 2, 0, 1))


def _conv_from_torch(w):
  # OIHW -> HWIO
  return np.transpose(w, (2, 3, 1, 0))


def _convt_to_torch(k):
  # [kh, kw, in, out] -> torch ConvTranspose2d [in, out, kh, kw]
  return np.transpose(k, (2, 3, 0, 1))


def _convt_from_torch(w):
  return np.transpose(w, (2, 3, 0, 1))


class Keys:
  """Parameter initialisation source shared by all DA3 layers.

  Given an int seed, values are drawn on the host with numpy: eager JAX would
  compile every initializer shape separately and a jitted init compiles hundreds
  of RNG calls (tens of seconds on CPU). Given an nnx.Rngs or a JAX key, values
  come from jax.random (fold_in(key, counter)), which is what tracing
  (eval_shape / jit) needs. nnx.Rngs is read once: drawing from it per parameter
  under tracing costs milliseconds each.
  """

  def __init__(self, rngs: "nnx.Rngs | jax.Array | int"):
    self.seed = None
    self.base = None
    if isinstance(rngs, nnx.Rngs):
      self.base = rngs.params()
    elif isinstance(rngs, (int, np.integer)):
      self.seed = int(rngs)
    else:
      self.base = rngs
    self.count = 0

  def draw(self, init: tuple, shape: tuple[int, ...], dtype):
    self.count += 1
    kind, arg = init
    if kind == "const":
      if self.seed is not None:
        return jnp.asarray(np.full(shape, arg, np.float32), dtype)
      return jnp.full(shape, arg, dtype)
    if self.seed is not None:
      rng = np.random.default_rng([self.seed, self.count])
      x = rng.standard_normal(shape, dtype=np.float32)
      if kind == "trunc_normal":
        x = np.clip(x, -2.0, 2.0)
      return jnp.asarray(x * np.float32(arg), dtype)
    key = jax.random.fold_in(self.base, self.count)
    if kind == "trunc_normal":
      return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * arg
    return jax.random.normal(key, shape, dtype) * arg


def as_keys(rngs: "Keys | nnx.Rngs | jax.Array | int") -> Keys:
  """The same Keys (one counter for the whole model), or a new one from a seed / key / Rngs."""
  return rngs if isinstance(rngs, Keys) else Keys(rngs)


TRUNC_NORMAL = ("trunc_normal", 0.02)
ZEROS = ("const", 0.0)
ONES = ("const", 1.0)


def param(rngs: Keys | None, init: tuple, shape: Sequence[int], names: Sequence[str | None],
          dtype=jnp.float32) -> nnx.Param:
  """A Param with logical axis names; init is (kind, arg): trunc_normal/normal std, const value."""
  if len(names) != len(shape):
    raise ValueError(f"{len(names)} axis names {tuple(names)} for a rank-{len(shape)} parameter")
  rngs = rngs if rngs is not None else Keys(0)
  return nnx.Param(rngs.draw(init, tuple(shape), dtype), out_sharding=tuple(names),
                   eager_sharding=False)


class Linear(nnx.Module):
  """y = x @ kernel + bias; kernel is [in, out] (the torch weight transposed)."""

  TORCH = {"kernel": ("weight", _t2, _t2), "bias": ("bias", _ident, _ident)}

  def __init__(self, din: int, dout: int, *, rngs: Keys, use_bias: bool = True,
               names: tuple[str, str] = ("embed", "mlp"), dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.kernel = param(rngs, TRUNC_NORMAL, (din, dout), names, param_dtype)
    self.bias = param(rngs, ZEROS, (dout,), names[1:], param_dtype) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    y = jnp.dot(x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm over the last axis; statistics in float32 (two-pass variance)."""

  TORCH = {"scale": ("weight", _ident, _ident), "bias": ("bias", _ident, _ident)}

  def __init__(self, dim: int, *, rngs: Keys | None = None, eps: float = 1e-5,
               name: str = "norm", dtype=jnp.float32, param_dtype=jnp.float32):
    self.scale = param(rngs, ONES, (dim,), (name,), param_dtype)
    self.bias = param(rngs, ZEROS, (dim,), (name,), param_dtype)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    xc = x32 - mean
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    y = xc * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class Conv2d(nnx.Module):
  """torch.nn.Conv2d on NHWC tensors; kernel is HWIO."""

  TORCH = {"kernel": ("weight", _conv_to_torch, _conv_from_torch), "bias": ("bias", _ident, _ident)}

  def __init__(self, cin: int, cout: int, kernel_size: int, *, rngs: Keys, stride: int = 1,
               padding: int = 0, use_bias: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32):
    k = kernel_size
    self.kernel = param(rngs, TRUNC_NORMAL, (k, k, cin, cout),
                        ("kernel_h", "kernel_w", "conv_in", "conv_out"), param_dtype)
    self.bias = param(rngs, ZEROS, (cout,), ("conv_out",), param_dtype) if use_bias else None
    self.stride = stride
    self.padding = padding
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    k = self.kernel[...].astype(self.dtype)
    if k.shape[0] == 1 and k.shape[1] == 1 and self.stride == 1 and self.padding == 0:
      y = jnp.dot(x, k[0, 0])
    else:
      p = self.padding
      y = jax.lax.conv_general_dilated(
          x, k, window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class PatchConvTranspose2d(nnx.Module):
  """torch.nn.ConvTranspose2d with stride == kernel and no padding: every input pixel
  becomes one k x k output tile, so it is a matmul plus a reshape (exact, no flips)."""

  TORCH = {"kernel": ("weight", _convt_to_torch, _convt_from_torch), "bias": ("bias", _ident, _ident)}

  def __init__(self, cin: int, cout: int, kernel_size: int, *, rngs: Keys, dtype=jnp.float32,
               param_dtype=jnp.float32):
    k = kernel_size
    self.kernel = param(rngs, TRUNC_NORMAL, (k, k, cin, cout),
                        ("kernel_h", "kernel_w", "conv_in", "conv_out"), param_dtype)
    self.bias = param(rngs, ZEROS, (cout,), ("conv_out",), param_dtype)
    self.k = k
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    n, h, w, _ = x.shape
    k = self.k
    y = jnp.einsum("nhwc,ijco->nhiwjo", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    y = y.reshape(n, h * k, w * k, -1)
    return y + self.bias[...].astype(self.dtype)


class LayerScale(nnx.Module):
  TORCH = {"gamma": ("gamma", _ident, _ident)}

  def __init__(self, dim: int, init_value: float = 1.0, *, rngs: Keys | None = None,
               param_dtype=jnp.float32):
    self.gamma = param(rngs, ("const", init_value), (dim,), ("embed",), param_dtype)

  def __call__(self, x: Array) -> Array:
    return x * self.gamma[...].astype(x.dtype)


class Token(nnx.Module):
  """A bare learned tensor (cls / camera token, position table); torch name = leaf name."""

  TORCH = {"value": (None, _ident, _ident)}

  def __init__(self, shape: Sequence[int], names: Sequence[str | None], *, rngs: Keys,
               init: tuple = TRUNC_NORMAL, param_dtype=jnp.float32):
    self.value = param(rngs, init, shape, names, param_dtype)

  def __call__(self) -> Array:
    return self.value[...]


def rope_2d(x: Array, pos: Array, base: float) -> Array:
  """2-D rotary embedding as the reference applies it.

  x: [..., T, heads, D]; pos: [T, 2] integer (y, x). The first D/2 channels rotate
  with y, the last D/2 with x; inside each half the rotation pairs channel i with
  i + D/4 ("rotate half"), frequencies base**(-2j/(D/2)).
  """
  d = x.shape[-1]
  half = d // 2
  inv_freq = 1.0 / (base ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half))

  def one(t, p):
    ang = p.astype(jnp.float32)[:, None] * inv_freq[None, :]
    ang = jnp.concatenate([ang, ang], axis=-1)            # [T, half]
    cos = jnp.cos(ang)[:, None, :].astype(t.dtype)        # [T, 1, half]
    sin = jnp.sin(ang)[:, None, :].astype(t.dtype)
    t1, t2 = t[..., : half // 2], t[..., half // 2:]
    rot = jnp.concatenate([-t2, t1], axis=-1)
    return t * cos + rot * sin

  return jnp.concatenate([one(x[..., :half], pos[:, 0]), one(x[..., half:], pos[:, 1])], axis=-1)


class Attention(nnx.Module):
  """Multi-head self-attention with optional per-head LayerNorm on q, k and 2-D RoPE."""

  def __init__(self, dim: int, num_heads: int, *, rngs: Keys, qkv_bias: bool = True,
               qk_norm: bool = False, qk_norm_eps: float = 1e-5, use_rope: bool = False,
               rope_freq: float = 100.0, dtype=jnp.float32, param_dtype=jnp.float32):
    if dim % num_heads:
      raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.qkv = Linear(dim, 3 * dim, rngs=rngs, use_bias=qkv_bias, names=("embed", "qkv"),
                      dtype=dtype, param_dtype=param_dtype)
    if qk_norm:
      self.q_norm = LayerNorm(self.head_dim, rngs=rngs, eps=qk_norm_eps, name="head_dim", dtype=dtype,
                              param_dtype=param_dtype)
      self.k_norm = LayerNorm(self.head_dim, rngs=rngs, eps=qk_norm_eps, name="head_dim", dtype=dtype,
                              param_dtype=param_dtype)
    else:
      self.q_norm = None
      self.k_norm = None
    self.proj = Linear(dim, dim, rngs=rngs, names=("heads", "embed"), dtype=dtype,
                       param_dtype=param_dtype)
    self.use_rope = use_rope
    self.rope_freq = rope_freq
    self.dtype = dtype

  def __call__(self, x: Array, pos: Array | None = None) -> Array:
    b, t, c = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if self.use_rope and pos is not None:
      q = rope_2d(q, pos, self.rope_freq)
      k = rope_2d(k, pos, self.rope_freq)
    scale = self.head_dim ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c)
    return self.proj(out)


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2."""

  def __init__(self, din: int, hidden: int, dout: int | None = None, *, rngs: Keys,
               dtype=jnp.float32, param_dtype=jnp.float32):
    dout = dout or din
    self.fc1 = Linear(din, hidden, rngs=rngs, names=("embed", "mlp"), dtype=dtype,
                      param_dtype=param_dtype)
    self.fc2 = Linear(hidden, dout, rngs=rngs, names=("mlp", "embed"), dtype=dtype,
                      param_dtype=param_dtype)

  def __call__(self, x: Array) -> Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def swiglu_hidden(hidden: int) -> int:
  """The reference's SwiGLUFFNFused width: 2/3 of the MLP width, rounded up to 8."""
  return (int(hidden * 2 / 3) + 7) // 8 * 8


class SwiGLU(nnx.Module):
  """w12 -> silu(x1) * x2 -> w3 (the ViT-g feed-forward)."""

  def __init__(self, din: int, hidden: int, *, rngs: Keys, dtype=jnp.float32,
               param_dtype=jnp.float32):
    h = swiglu_hidden(hidden)
    self.w12 = Linear(din, 2 * h, rngs=rngs, names=("embed", "mlp"), dtype=dtype,
                      param_dtype=param_dtype)
    self.w3 = Linear(h, din, rngs=rngs, names=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x: Array) -> Array:
    x1, x2 = jnp.split(self.w12(x), 2, axis=-1)
    return self.w3(jax.nn.silu(x1) * x2)


class Block(nnx.Module):
  """Pre-norm transformer block with LayerScale: x + ls1(attn(n1 x)); x + ls2(ffn(n2 x))."""

  def __init__(self, dim: int, num_heads: int, *, rngs: Keys, mlp_ratio: float = 4.0,
               ffn: str = "mlp", qk_norm: bool = False, use_rope: bool = False,
               rope_freq: float = 100.0, ln_eps: float = 1e-6, init_values: float | None = 1.0,
               dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm1 = LayerNorm(dim, rngs=rngs, eps=ln_eps, **kw)
    self.attn = Attention(dim, num_heads, rngs=rngs, qk_norm=qk_norm, use_rope=use_rope,
                          rope_freq=rope_freq, **kw)
    self.ls1 = LayerScale(dim, init_values, rngs=rngs, param_dtype=param_dtype) if init_values else None
    self.ls2 = LayerScale(dim, init_values, rngs=rngs, param_dtype=param_dtype) if init_values else None
    self.norm2 = LayerNorm(dim, rngs=rngs, eps=ln_eps, **kw)
    hidden = int(dim * mlp_ratio)
    if ffn == "mlp":
      self.mlp = Mlp(dim, hidden, rngs=rngs, **kw)
    elif ffn == "swiglu":
      self.mlp = SwiGLU(dim, hidden, rngs=rngs, **kw)
    else:
      raise ValueError(f"unknown ffn {ffn!r}; expected 'mlp' or 'swiglu'")
    self.dtype = dtype

  def __call__(self, x: Array, pos: Array | None = None) -> Array:
    # the residual stream keeps the input dtype (float32), as under torch autocast
    a = self.attn(self.norm1(x), pos)
    x = x + (self.ls1(a) if self.ls1 is not None else a)
    m = self.mlp(self.norm2(x))
    return x + (self.ls2(m) if self.ls2 is not None else m)

