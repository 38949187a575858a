"""Camera decoder (token -> pose encoding -> w2c, intrinsics) and camera encoder.

Pose encoding, 9 numbers per view, as the reference: translation t (3), quaternion
(x, y, z, w) (4), fov_h, fov_w. The decoded [R | t] is camera-to-world; the
network's `extrinsics` output is its inverse, world-to-camera, shape [..., 3, 4].
Intrinsics: f = (size / 2) / max(tan(fov / 2), 1e-6), principal point at the centre.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.models.da3.config import DA3Config
from wc_jax.models.da3.layers import Block, Keys, LayerNorm, Linear, Mlp, as_keys

Array = jax.Array


def quat_to_mat(q: Array) -> Array:
  """Rotation matrices [..., 3, 3] from quaternions (x, y, z, w), any non-zero norm."""
  i, j, k, r = (q[..., n] for n in range(4))
  two_s = 2.0 / jnp.sum(q * q, axis=-1)
  o = jnp.stack([
      1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
      two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
      two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j)], axis=-1)
  return o.reshape(q.shape[:-1] + (3, 3))


def mat_to_quat(m: Array) -> Array:
  """Quaternions (x, y, z, w), real part >= 0, from rotation matrices [..., 3, 3]."""
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  sq = jnp.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                  1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], axis=-1)
  q_abs = jnp.where(sq > 0, jnp.sqrt(jnp.maximum(sq, 0.0)), 0.0)
  cands = jnp.stack([
      jnp.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], axis=-1),
      jnp.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], axis=-1),
      jnp.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], axis=-1),
      jnp.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], axis=-1)], axis=-2)
  cands = cands / (2.0 * jnp.maximum(q_abs, 0.1))[..., None]
  best = jnp.argmax(q_abs, axis=-1)
  wxyz = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
  xyzw = wxyz[..., jnp.array([1, 2, 3, 0])]
  return jnp.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def affine_inverse(a: Array) -> Array:
  """Inverse of rigid transforms [..., 3 or 4, 4] (keeps the row count)."""
  r, t = a[..., :3, :3], a[..., :3, 3:]
  rt = jnp.swapaxes(r, -1, -2)
  top = jnp.concatenate([rt, -rt @ t], axis=-1)
  return jnp.concatenate([top, a[..., 3:, :]], axis=-2)


def pose_encoding_to_extri_intri(pose_enc: Array, image_hw: tuple[int, int]) -> tuple[Array, Array]:
  """(c2w [..., 3, 4], intrinsics [..., 3, 3]) from pose encodings [..., 9]."""
  t, q = pose_enc[..., :3], pose_enc[..., 3:7]
  fov_h, fov_w = pose_enc[..., 7], pose_enc[..., 8]
  c2w = jnp.concatenate([quat_to_mat(q), t[..., None]], axis=-1)
  h, w = image_hw
  fy = (h / 2.0) / jnp.maximum(jnp.tan(fov_h / 2.0), 1e-6)
  fx = (w / 2.0) / jnp.maximum(jnp.tan(fov_w / 2.0), 1e-6)
  zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
  k = jnp.stack([fx, zero, zero + w / 2, zero, fy, zero + h / 2, zero, zero, one], axis=-1)
  return c2w, k.reshape(fx.shape + (3, 3))


def extri_intri_to_pose_encoding(c2w: Array, intrinsics: Array, image_hw: tuple[int, int]) -> Array:
  """Pose encodings [..., 9] from c2w [..., 3|4, 4] and intrinsics [..., 3, 3]."""
  h, w = image_hw
  quat = mat_to_quat(c2w[..., :3, :3])
  fov_h = 2 * jnp.arctan((h / 2) / intrinsics[..., 1, 1])
  fov_w = 2 * jnp.arctan((w / 2) / intrinsics[..., 0, 0])
  return jnp.concatenate([c2w[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], axis=-1)


class CameraDec(nnx.Module):
  """MLP from the last out-layer's camera token to a pose encoding (always float32)."""

  def __init__(self, dim_in: int, *, rngs: Keys | int):
    rngs = as_keys(rngs)
    self.backbone = nnx.List([Linear(dim_in, dim_in, rngs=rngs, names=("embed", "mlp")), None,
                              Linear(dim_in, dim_in, rngs=rngs, names=("mlp", "embed")), None])
    self.fc_t = Linear(dim_in, 3, rngs=rngs, names=("embed", None))
    self.fc_qvec = Linear(dim_in, 4, rngs=rngs, names=("embed", None))
    self.fc_fov = nnx.List([Linear(dim_in, 2, rngs=rngs, names=("embed", None)), None])

  def __call__(self, token: Array) -> Array:
    x = token.astype(jnp.float32)
    x = jax.nn.relu(self.backbone[2](jax.nn.relu(self.backbone[0](x))))
    return jnp.concatenate([self.fc_t(x), self.fc_qvec(x), jax.nn.relu(self.fc_fov[0](x))], axis=-1)


class CameraEnc(nnx.Module):
  """Known cameras -> per-view tokens that replace the learned camera token (float32).

  Not exercised by the pose reward (which estimates cameras); kept so checkpoints
  convert completely and pose-conditioned inference is available.
  """

  def __init__(self, cfg: DA3Config, *, rngs: Keys | int):
    rngs = as_keys(rngs)
    d = cfg.embed_dim
    self.trunk = nnx.List([
        Block(d, cfg.cam_enc_heads, rngs=rngs, mlp_ratio=cfg.cam_enc_mlp_ratio, ln_eps=1e-5,
              init_values=cfg.cam_enc_init_values)
        for _ in range(cfg.cam_enc_depth)])
    self.token_norm = LayerNorm(d, rngs=rngs, eps=1e-5)
    self.trunk_norm = LayerNorm(d, rngs=rngs, eps=1e-5)
    self.pose_branch = Mlp(9, d // 2, d, rngs=rngs)

  def __call__(self, w2c: Array, intrinsics: Array, image_hw: tuple[int, int]) -> Array:
    """w2c [B, S, 3|4, 4], intrinsics [B, S, 3, 3] -> tokens [B, S, D]."""
    enc = extri_intri_to_pose_encoding(affine_inverse(w2c.astype(jnp.float32)),
                                       intrinsics.astype(jnp.float32), image_hw)
    x = self.token_norm(self.pose_branch(enc))
    for blk in self.trunk:
      x = blk(x)
    return self.trunk_norm(x)
