"""The DA3 backbone: a DINOv2 ViT whose later blocks alternate within-view / cross-view.

Blocks before `alt_start` attend inside each view. From `alt_start` on, odd blocks
attend over the tokens of all views together ("global"), even blocks inside each
view ("local"). At `alt_start` the class token of every view is replaced by a
learned camera token: one for the reference view, one shared by the others.
QK-norm and 2-D RoPE switch on at `qknorm_start` / `rope_start`.

The reference chooses the reference view from the class tokens entering block
`alt_start - 1` and moves it to the front, then restores the order of the
outputs. Local blocks act per view and the global blocks see every view with the
same positions, so the only order-dependent step is which view receives the
reference camera token; wc_jax gives it to the chosen view in place and skips the
two permutations (equal up to float summation order).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.da3.config import REF_VIEW_STRATEGIES, DA3Config
from wc_jax.models.da3.layers import Block, Conv2d, Keys, LayerNorm, Token, as_keys

Array = jax.Array

# the reference picks a reference view only from this many views on
MIN_VIEWS_FOR_REF_SELECTION = 3


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights for taps at -1, 0, 1, 2 (torch / OpenCV A = -0.75)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):   # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int, inv_scale: float) -> np.ndarray:
  """[n_out, n_in] matrix of torch's bicubic resampling (align_corners=False, borders
  clamped) where the source coordinate is inv_scale * (dst + 0.5) - 0.5."""
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    src = inv_scale * (i + 0.5) - 0.5
    x0 = math.floor(src)
    w = _cubic_weights(np.asarray(src - x0))
    for j in range(4):
      m[i, min(max(x0 - 1 + j, 0), n_in - 1)] += w[j]
  return m


def select_reference_view(cls_tokens: Array, strategy: str) -> Array:
  """Index [B] of the reference view from per-view class tokens [B, S, C]."""
  b, s, _ = cls_tokens.shape
  if strategy not in REF_VIEW_STRATEGIES:
    raise ValueError(f"unknown reference view strategy {strategy!r}; "
                     f"expected one of {REF_VIEW_STRATEGIES}")
  if s <= 1 or strategy == "first":
    return jnp.zeros((b,), jnp.int32)
  if strategy == "middle":
    return jnp.full((b,), s // 2, jnp.int32)
  f = cls_tokens.astype(jnp.float32)
  norm = jnp.linalg.norm(f, axis=-1)
  unit = f / norm[..., None]
  sim = jnp.einsum("bsc,btc->bst", unit, unit, precision=jax.lax.Precision.HIGHEST)
  sim = sim - jnp.eye(s, dtype=sim.dtype)[None]
  if strategy == "saddle_sim_range":
    return jnp.argmax(sim.max(-1) - sim.min(-1), axis=1).astype(jnp.int32)
  sim_score = sim.sum(-1) / (s - 1)
  var = jnp.var(unit, axis=-1, ddof=1)

  def unit_range(m):
    lo = m.min(axis=1, keepdims=True)
    hi = m.max(axis=1, keepdims=True)
    return (m - lo) / (hi - lo + 1e-8)

  score = (jnp.abs(unit_range(sim_score) - 0.5) + jnp.abs(unit_range(norm) - 0.5)
           + jnp.abs(unit_range(var) - 0.5))
  return jnp.argmin(score, axis=1).astype(jnp.int32)


class PatchEmbed(nnx.Module):
  """Conv2d(3, D, p, stride p) written as patchify + matmul; kernel HWIO."""

  def __init__(self, patch: int, dim: int, *, rngs: Keys, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.proj = Conv2d(3, dim, patch, rngs=rngs, stride=patch, dtype=dtype, param_dtype=param_dtype)
    self.patch = patch
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    n, h, w, c = x.shape
    p = self.patch
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, (h // p) * (w // p), p * p * c).astype(self.dtype)
    k = self.proj.kernel[...].astype(self.dtype).reshape(p * p * c, -1)
    return (jnp.dot(x, k) + self.proj.bias[...].astype(self.dtype)).astype(jnp.float32)


class DinoViT(nnx.Module):
  """DINOv2 ViT with DA3's alternating attention; returns the four `out_layers` features."""

  def __init__(self, cfg: DA3Config, *, rngs: Keys | int):
    rngs = as_keys(rngs)
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    d = cfg.embed_dim
    self.cfg = cfg
    self.patch_embed = PatchEmbed(cfg.patch_size, d, rngs=rngs, **kw)
    self.cls_token = Token((1, 1, d), (None, None, "embed"), rngs=rngs,
                           init=("normal", 1e-6), param_dtype=cfg.param_dtype)
    self.camera_token = (Token((1, 2, d), (None, None, "embed"), rngs=rngs,
                               init=("normal", 1.0), param_dtype=cfg.param_dtype)
                         if cfg.alt_start != -1 else None)
    self.pos_embed = Token((1, cfg.pos_grid ** 2 + 1, d), (None, None, "embed"), rngs=rngs,
                           param_dtype=cfg.param_dtype)
    self.blocks = nnx.List([
        Block(d, cfg.num_heads, rngs=rngs, mlp_ratio=cfg.mlp_ratio, ffn=cfg.ffn,
              qk_norm=cfg.qknorm_start != -1 and i >= cfg.qknorm_start,
              use_rope=cfg.rope_start != -1 and i >= cfg.rope_start, rope_freq=cfg.rope_freq,
              ln_eps=1e-6, init_values=cfg.init_values, **kw)
        for i in range(cfg.depth)])
    self.norm = LayerNorm(d, rngs=rngs, eps=1e-5, param_dtype=cfg.param_dtype)

  def interpolate_pos_encoding(self, ph: int, pw: int, height: int, width: int) -> Array:
    """The stored 37x37 table resampled to ph x pw (bicubic, with the DINO 0.1 offset)."""
    table = self.pos_embed.value[...].astype(jnp.float32)
    n = table.shape[1] - 1
    m = self.cfg.pos_grid
    if ph * pw == n and height == width:
      return table
    cls_pe, patch_pe = table[:, :1], table[:, 1:].reshape(m, m, -1)
    off = self.cfg.interpolate_offset
    if off:
      ay = bicubic_matrix(m, ph, m / (ph + off))
      ax = bicubic_matrix(m, pw, m / (pw + off))
    else:
      ay = bicubic_matrix(m, ph, m / ph)
      ax = bicubic_matrix(m, pw, m / pw)
    hp = jax.lax.Precision.HIGHEST
    out = jnp.einsum("yi,ijc->yjc", jnp.asarray(ay, jnp.float32), patch_pe, precision=hp)
    out = jnp.einsum("xj,yjc->yxc", jnp.asarray(ax, jnp.float32), out, precision=hp)
    return jnp.concatenate([cls_pe, out.reshape(1, ph * pw, -1)], axis=1)

  def __call__(self, images: Array, cam_token: Array | None = None,
               ref_view_strategy: str = "saddle_balanced"):
    """images [B, S, H, W, 3] (normalised) -> (features, camera tokens, reference index).

    features: 4 arrays [B, S, ph*pw, feature_dim], from `out_layers`; the local half
    is raw, the global half passed through the final norm (as the reference).
    camera tokens: 4 arrays [B, S, feature_dim] (token 0 of the same outputs, un-normed).
    """
    cfg = self.cfg
    b, s, h, w, c = images.shape
    p = cfg.patch_size
    ph, pw = h // p, w // p
    d = cfg.embed_dim
    x = self.patch_embed(images.reshape(b * s, h, w, c))
    cls = jnp.broadcast_to(self.cls_token.value[...].astype(x.dtype), (b * s, 1, d))
    x = jnp.concatenate([cls, x], axis=1)
    x = x + self.interpolate_pos_encoding(ph, pw, h, w).astype(x.dtype)
    n = x.shape[1]
    x = x.reshape(b, s, n, d)

    grid = np.stack(np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij"), -1).reshape(-1, 2)
    pos_local = jnp.asarray(np.concatenate([np.zeros((1, 2), np.int32), grid + 1]), jnp.int32)
    pos_view = np.concatenate([np.zeros((1, 2), np.int32), np.ones((ph * pw, 2), np.int32)])
    pos_global = jnp.asarray(np.tile(pos_view, (s, 1)), jnp.int32)

    ref_idx = jnp.zeros((b,), jnp.int32)
    local_x = x
    outs = []
    for i, blk in enumerate(self.blocks):
      alt = cfg.alt_start != -1
      use_rope = cfg.rope_start != -1 and i >= cfg.rope_start
      if (alt and i == cfg.alt_start - 1 and s >= MIN_VIEWS_FOR_REF_SELECTION
          and cam_token is None):
        ref_idx = select_reference_view(x[:, :, 0], ref_view_strategy)
      if alt and i == cfg.alt_start:
        if cam_token is None:
          tok = self.camera_token.value[...].astype(x.dtype)
          is_ref = (jnp.arange(s)[None, :] == ref_idx[:, None])[..., None]
          cam = jnp.where(is_ref, tok[:, :1], tok[:, 1:2])
        else:
          cam = cam_token.astype(x.dtype)
        x = x.at[:, :, 0].set(cam)
      if alt and i >= cfg.alt_start and i % 2 == 1:
        x = blk(x.reshape(b, s * n, d), pos_global if use_rope else None).reshape(b, s, n, d)
      else:
        x = blk(x.reshape(b * s, n, d), pos_local if use_rope else None).reshape(b, s, n, d)
        local_x = x
      if i in cfg.out_layers:
        outs.append(jnp.concatenate([local_x, x], axis=-1) if cfg.cat_token else x)

    cam_tokens = [o[:, :, 0] for o in outs]
    if cfg.cat_token:
      feats = [jnp.concatenate([o[..., :d], self.norm(o[..., d:])], axis=-1) for o in outs]
    else:
      feats = [self.norm(o) for o in outs]
    feats = [f[:, :, 1:] for f in feats]
    return feats, cam_tokens, ref_idx
