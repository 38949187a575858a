"""3-D rotary embedding (interleaved pairs) and PRoPE camera transforms.

RoPE: position (t, h, w) of every image token, one frequency set per axis
(`rope_dims` = [dt, dh, dw], theta 256), cos/sin repeated per pair so that
channel pairs (2j, 2j+1) rotate together. The AR path reassigns the temporal
index: t runs from `t_start` (context frames 0..K-1, the target chunk K..K+3).

PRoPE: per frame, P = K' @ w2c (K' = [[fx,0,0],[0,fy,0],[0,0,1]] lifted to 4x4,
cx = cy = 0 as in the reference). Queries are multiplied by P^T, keys and values
by P^-1, and the attention output by P, each on 4-channel blocks of the head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_tables(rope_dims, theta: float, t: int, h: int, w: int, t_start=0):
  """cos, sin [t*h*w, sum(rope_dims)] float32 for tokens in (t, h, w) order.

  `t_start` may be a traced scalar (a padded context of variable length)."""
  grids = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  cos_parts, sin_parts = [], []
  for axis, (dim, pos) in enumerate(zip(rope_dims, grids)):
    freqs = 1.0 / (jnp.float32(theta) ** (jnp.arange(0, dim, 2, dtype=jnp.float32)[: dim // 2] / dim))
    pos = jnp.asarray(pos.reshape(-1), jnp.float32)
    if axis == 0:
      pos = pos + jnp.asarray(t_start, jnp.float32)
    ang = pos[:, None] * freqs[None, :]
    cos_parts.append(jnp.repeat(jnp.cos(ang), 2, axis=1))
    sin_parts.append(jnp.repeat(jnp.sin(ang), 2, axis=1))
  return jnp.concatenate(cos_parts, axis=1), jnp.concatenate(sin_parts, axis=1)


def apply_rope(x, cos, sin):
  """x [B, S, H, D]; cos/sin [S, D]. Computed in float32, cast back."""
  xf = x.astype(jnp.float32)
  pairs = xf.reshape(*xf.shape[:-1], -1, 2)
  rot = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(xf.shape)
  out = xf * cos[None, :, None, :] + rot * sin[None, :, None, :]
  return out.astype(x.dtype)


def _lift(m3):
  out = jnp.zeros(m3.shape[:-2] + (4, 4), m3.dtype)
  return out.at[..., :3, :3].set(m3).at[..., 3, 3].set(1.0)


def prope_matrices(viewmats, Ks):
  """viewmats [B,T,4,4] (w2c), Ks [B,T,3,3] -> (P^T, P^-1, P), each [B,T,4,4]."""
  viewmats = viewmats.astype(jnp.float32)
  Ks = Ks.astype(jnp.float32)
  fx, fy = Ks[..., 0, 0], Ks[..., 1, 1]
  zeros, ones = jnp.zeros_like(fx), jnp.ones_like(fx)
  k_norm = jnp.stack([jnp.stack([fx, zeros, zeros], -1), jnp.stack([zeros, fy, zeros], -1),
                      jnp.stack([zeros, zeros, ones], -1)], -2)
  k_inv = jnp.stack([jnp.stack([1.0 / fx, zeros, zeros], -1), jnp.stack([zeros, 1.0 / fy, zeros], -1),
                     jnp.stack([zeros, zeros, ones], -1)], -2)
  hp = jax.lax.Precision.HIGHEST
  p = jnp.einsum("...ij,...jk->...ik", _lift(k_norm), viewmats, precision=hp)
  r_inv = jnp.swapaxes(viewmats[..., :3, :3], -1, -2)
  t_inv = -jnp.einsum("...ij,...j->...i", r_inv, viewmats[..., :3, 3], precision=hp)
  se3_inv = jnp.zeros_like(viewmats).at[..., :3, :3].set(r_inv).at[..., :3, 3].set(t_inv).at[..., 3, 3].set(1.0)
  p_inv = jnp.einsum("...ij,...jk->...ik", se3_inv, _lift(k_inv), precision=hp)
  return jnp.swapaxes(p, -1, -2), p_inv, p


def apply_projmat(x, mats, frames: int):
  """x [B, T*HW, H, D]; mats [B, T, 4, 4] -> each 4-channel block of frame t's tokens
  multiplied by mats[:, t]. Computed in float32, cast back."""
  b, s, h, d = x.shape
  xf = x.astype(jnp.float32).reshape(b, frames, s // frames, h, d // 4, 4)
  out = jnp.einsum("btij,btnhkj->btnhki", mats.astype(jnp.float32), xf, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, s, h, d).astype(x.dtype)
