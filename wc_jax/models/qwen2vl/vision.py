"""The Qwen2-VL / Qwen2.5-VL vision tower in Flax NNX (one implementation, the variant as config).

Input: the processor's flattened patches, one row per 14x14 patch, each row
(C=3, T=2, 14, 14) flattened (1176 values), rows ordered merge-window-major inside
each image (2x2 merge units in raster order, then the 4 patches of a unit), and the
static `grid_thw` [(t, h, w)] per image in patches.

Blocks (pre-norm): x += proj(attn(norm1 x)); x += mlp(norm2 x). Attention is inside one
temporal frame of one image (the reference's `cu_seqlens`) with a 2-D rotary
embedding over the patch (row, col). The merger concatenates the 4 patches of each
2x2 unit (after its norm) and maps them to the language model's width.

Variants:
  * "qwen2_vl":   LayerNorm (with bias) norms, fc1 -> QuickGELU -> fc2 MLP, full attention;
  * "qwen2_5_vl": RMSNorm norms, SwiGLU MLP with biases, window attention (windows of
                  `window_size` px in merge units) except in `fullatt_block_indexes`.
Window attention is written as a mask over the original row order (tokens attend to
tokens of their own window), which equals the reference's reorder -> attend ->
un-reorder.

Images are run as a padded batch [N, P_max, 1176] (see `pack`): attention never spans
two images, and same-size frames (the reward's case) need no padding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.nn.attention import Mask, attention
from wc_jax.nn.layers import LayerNorm, RMSNorm, dense, gelu
from wc_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")
VARIANTS = ("qwen2_vl", "qwen2_5_vl")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Vision tower hyper-parameters (HF `Qwen2VLVisionConfig` / `Qwen2_5_VLVisionConfig` names)."""
  variant: str = "qwen2_vl"
  depth: int = 32
  embed_dim: int = 1280
  num_heads: int = 16
  intermediate_size: int = 5120      # Qwen2-VL: embed_dim * mlp_ratio
  out_hidden_size: int = 3584        # the language model's width
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  hidden_act: str = "quick_gelu"     # Qwen2.5-VL: "silu"
  window_size: int = 112             # Qwen2.5-VL only (pixels)
  fullatt_block_indexes: tuple[int, ...] = ()
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # execution
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  remat_policy: str = "full"

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"vision variant {self.variant!r} not in {VARIANTS}")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} must divide by num_heads {self.num_heads}")
    if self.head_dim % 4:
      raise ValueError(f"vision head_dim {self.head_dim} must divide by 4 (2-D rotary)")
    if self.hidden_act not in _ACTS:
      raise ValueError(f"hidden_act must be one of {sorted(_ACTS)}, got {self.hidden_act!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")
    if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
      raise ValueError(f"fullatt_block_indexes {self.fullatt_block_indexes} outside depth {self.depth}")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size ** 2

  @property
  def windowed(self) -> bool:
    return self.variant == "qwen2_5_vl"

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "VisionConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["fullatt_block_indexes"] = list(self.fullatt_block_indexes)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "VisionConfig":
    d = dict(d)
    if "fullatt_block_indexes" in d:
      d["fullatt_block_indexes"] = tuple(int(i) for i in d["fullatt_block_indexes"])
    return cls(**d)

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], **overrides) -> "VisionConfig":
    """From an HF config.json (top level with `vision_config`, or the vision config itself)."""
    top = dict(config)
    vc = dict(top.get("vision_config", top))
    model_type = top.get("model_type", vc.get("model_type", "qwen2_vl"))
    variant = "qwen2_5_vl" if "2_5" in str(model_type) or "fullatt_block_indexes" in vc else "qwen2_vl"
    if variant == "qwen2_vl":
      embed = int(vc.get("embed_dim", 1280))
      kw = dict(embed_dim=embed, intermediate_size=int(embed * vc.get("mlp_ratio", 4)),
                out_hidden_size=int(vc.get("hidden_size", top.get("hidden_size", 3584))),
                hidden_act=vc.get("hidden_act", "quick_gelu"))
    else:
      kw = dict(embed_dim=int(vc.get("hidden_size", 1280)), intermediate_size=int(vc.get("intermediate_size", 3420)),
                out_hidden_size=int(vc.get("out_hidden_size", top.get("hidden_size", 3584))),
                hidden_act=vc.get("hidden_act", "silu"), window_size=int(vc.get("window_size", 112)),
                fullatt_block_indexes=tuple(int(i) for i in vc.get("fullatt_block_indexes", ())))
    for name in ("depth", "num_heads", "patch_size", "temporal_patch_size", "spatial_merge_size"):
      if name in vc:
        kw[name] = int(vc[name])
    kw["in_channels"] = int(vc.get("in_channels", vc.get("in_chans", 3)))
    kw.update(overrides)
    return cls(variant=variant, **kw)


QWEN2_VL_7B = VisionConfig()
QWEN25_VL_7B = VisionConfig(variant="qwen2_5_vl", embed_dim=1280, intermediate_size=3420, hidden_act="silu",
                            fullatt_block_indexes=(7, 15, 23, 31))


def _remat_policy(name: str):
  return {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots,
          "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


# ----------------------------------------------------------------------------- static layout

def _grid(grid_thw) -> list[tuple[int, int, int]]:
  g = np.asarray(grid_thw)
  if g.ndim != 2 or g.shape[1] != 3:
    raise ValueError(f"grid_thw must be [N, 3] (t, h, w per image), got shape {g.shape}")
  return [tuple(int(v) for v in row) for row in g]


def patch_layout(grid_thw, cfg: VisionConfig):
  """Per image, per patch row (processor order): frame, patch row, patch col (numpy int arrays)."""
  m = cfg.spatial_merge_size
  out = []
  for t, h, w in _grid(grid_thw):
    if h % m or w % m or min(t, h, w) <= 0:
      raise ValueError(f"grid (t,h,w)=({t},{h},{w}) must be positive with h, w divisible by {m}")
    p = np.arange(t * h * w)
    frame, r = np.divmod(p, h * w)
    unit, within = np.divmod(r, m * m)
    br, bc = np.divmod(unit, w // m)
    i, j = np.divmod(within, m)
    out.append((frame, br * m + i, bc * m + j))
  return out


def rotary_freqs(grid_thw, cfg: VisionConfig) -> np.ndarray:
  """[sum P, head_dim/2] float32: per patch [row freqs, col freqs] (reference `rot_pos_emb`)."""
  dim = cfg.head_dim // 2
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
  inv = inv.astype(np.float32)
  rows = []
  for _, hp, wp in patch_layout(grid_thw, cfg):
    rows.append(np.concatenate([np.outer(hp.astype(np.float32), inv), np.outer(wp.astype(np.float32), inv)],
                               axis=1).astype(np.float32))
  return np.concatenate(rows, axis=0)


def segment_ids(grid_thw, cfg: VisionConfig, windowed: bool) -> list[np.ndarray]:
  """Per image, per patch: the attention group (frame, or frame x window for Qwen2.5-VL)."""
  m = cfg.spatial_merge_size
  ws = max(cfg.window_size // m // cfg.patch_size, 1)   # window side in merge units
  out = []
  for (frame, hp, wp), (_, _, w) in zip(patch_layout(grid_thw, cfg), _grid(grid_thw)):
    if not windowed:
      out.append(frame.astype(np.int32))
      continue
    nww = -(-(w // m) // ws) + 1
    out.append((frame * 1_000_000 + (hp // m // ws) * nww + (wp // m // ws)).astype(np.int32))
  return out


def pack(pixel_values, grid_thw, cfg: VisionConfig):
  """Flat processor patches [sum P, D] -> (padded [N, P_max, D], valid [N, P_max] numpy bool)."""
  sizes = [t * h * w for t, h, w in _grid(grid_thw)]
  if pixel_values.ndim != 2 or pixel_values.shape[0] != sum(sizes) or pixel_values.shape[1] != cfg.patch_dim:
    raise ValueError(f"pixel_values must be [{sum(sizes)}, {cfg.patch_dim}] for grid_thw {_grid(grid_thw)}, "
                     f"got {tuple(pixel_values.shape)}")
  pmax = max(sizes)
  starts = np.cumsum([0] + sizes[:-1])
  if all(s == pmax for s in sizes):
    return pixel_values.reshape(len(sizes), pmax, -1), np.ones((len(sizes), pmax), bool)
  idx = np.zeros((len(sizes), pmax), np.int32)
  valid = np.zeros((len(sizes), pmax), bool)
  for n, (s, size) in enumerate(zip(starts, sizes)):
    idx[n, :size] = s + np.arange(size)
    valid[n, :size] = True
  return jnp.where(jnp.asarray(valid)[..., None], pixel_values[jnp.asarray(idx)], 0), valid


def _pad_rows(per_image: Sequence[np.ndarray], pmax: int, fill=0) -> np.ndarray:
  out = np.full((len(per_image), pmax) + per_image[0].shape[1:], fill, per_image[0].dtype)
  for n, a in enumerate(per_image):
    out[n, :len(a)] = a
  return out


def unpack_tokens(merged, grid_thw, cfg: VisionConfig):
  """Merger output [N, P_max/4, C] -> flat [sum tokens, C] in the reference's order."""
  sizes = [t * h * w // cfg.merge_unit for t, h, w in _grid(grid_thw)]
  if all(s == merged.shape[1] for s in sizes):
    return merged.reshape(-1, merged.shape[-1])
  idx = np.concatenate([n * merged.shape[1] + np.arange(s) for n, s in enumerate(sizes)])
  return merged.reshape(-1, merged.shape[-1])[jnp.asarray(idx)]


# ----------------------------------------------------------------------------- layers

def _norm(cfg: VisionConfig, dim: int):
  if cfg.variant == "qwen2_5_vl":
    return RMSNorm(dim, eps=cfg.norm_eps, param_dtype=cfg.params_dtype)
  return LayerNorm(dim, eps=cfg.norm_eps, param_dtype=cfg.params_dtype)


def _rotate_half(x):
  h = x.shape[-1] // 2
  return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


class VisionAttention(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e = cfg.embed_dim
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.qkv = dense(e, 3 * e, ("embed", "qkv"), **kw)
    self.proj = dense(e, e, ("heads", "embed"), **kw)

  def __call__(self, x, cos, sin, valid, seg):
    """x [N,P,E]; cos/sin [N,P,head_dim] f32; valid [N,P] bool; seg [N,P] int or None (one group)."""
    cfg = self.cfg
    n, p, e = x.shape
    h, d = cfg.num_heads, cfg.head_dim
    qkv = self.qkv(x).reshape(n, p, 3, h, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # the reference rotates q, k in float32 and casts back
    rot = lambda y: (y.astype(jnp.float32) * cos[:, :, None] + _rotate_half(y.astype(jnp.float32)) *
                     sin[:, :, None]).astype(y.dtype)
    q, k = rot(q), rot(k)
    if seg is None:
      o = attention(q, k, v, Mask(kv_valid=valid), impl=cfg.attention_impl)
    else:
      o = _segment_attention(q, k, v, valid, seg)
    return self.proj(o.reshape(n, p, e))


def _segment_attention(q, k, v, valid, seg):
  """Dense softmax attention where query i sees key j iff seg[i] == seg[j] and j is valid."""
  d = q.shape[-1]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32,
                 precision=jax.lax.Precision.HIGHEST) / math.sqrt(d)
  m = (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]
  s = jnp.where(m[:, None], s, -jnp.inf)
  smax = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - jnp.where(jnp.isfinite(smax), smax, 0.0))
  den = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(den > 0, den, 1.0)
  o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                 precision=jax.lax.Precision.HIGHEST)
  return o.astype(q.dtype)


class VisionMLP(nnx.Module):
  """Qwen2-VL: fc1 -> act -> fc2. Qwen2.5-VL: down(act(gate x) * up x), all with biases."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e, f = cfg.embed_dim, cfg.intermediate_size
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    if cfg.variant == "qwen2_5_vl":
      self.gate_proj = dense(e, f, ("embed", "mlp"), **kw)
      self.up_proj = dense(e, f, ("embed", "mlp"), **kw)
      self.down_proj = dense(f, e, ("mlp", "embed"), **kw)
    else:
      self.fc1 = dense(e, f, ("embed", "mlp"), **kw)
      self.fc2 = dense(f, e, ("mlp", "embed"), **kw)

  def __call__(self, x):
    act = _ACTS[self.cfg.hidden_act]
    if self.cfg.variant == "qwen2_5_vl":
      return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))
    return self.fc2(act(self.fc1(x)))


class VisionBlock(nnx.Module):
  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.norm1 = _norm(cfg, cfg.embed_dim)
    self.attn = VisionAttention(cfg, rngs=rngs)
    self.norm2 = _norm(cfg, cfg.embed_dim)
    self.mlp = VisionMLP(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, valid, seg):
    x = x + self.attn(self.norm1(x), cos, sin, valid, seg)
    return constrain(x + self.mlp(self.norm2(x)), _ACT)


class PatchMerger(nnx.Module):
  """norm -> concat the 4 rows of each 2x2 unit -> Linear -> GELU -> Linear (to the LM width)."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.embed_dim * cfg.merge_unit
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.ln_q = _norm(cfg, cfg.embed_dim)
    self.mlp_0 = dense(c, c, ("mlp", "embed_out"), **kw)
    self.mlp_2 = dense(c, cfg.out_hidden_size, ("embed_out", "embed"), **kw)

  def __call__(self, x):
    n, p, e = x.shape
    y = self.ln_q(x).reshape(n, p // self.cfg.merge_unit, e * self.cfg.merge_unit)
    return self.mlp_2(gelu(self.mlp_0(y)))


class VisionTransformer(nnx.Module):
  """HF `Qwen2VisionTransformerPretrainedModel` / `Qwen2_5_VisionTransformerPretrainedModel`."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.patch_embed = dense(cfg.patch_dim, cfg.embed_dim, ("in_features", "embed"), use_bias=False, **kw)

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return VisionBlock(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.merger = PatchMerger(cfg, rngs=rngs)

  def __call__(self, pixel_values, grid_thw, *, collect: bool = False):
    """pixel_values [sum P, 1176] (processor rows), grid_thw static [N,3] -> tokens [sum P/4, out].

    With collect=True also returns a dict of intermediates (patch_embed, block0, blocklast: flat
    [sum P, E] rows in the reference's order; merger; rotary [sum P, head_dim/2]).
    """
    cfg = self.cfg
    grid = _grid(grid_thw)
    x, valid = pack(jnp.asarray(pixel_values), grid, cfg)
    n, pmax, _ = x.shape
    freqs = rotary_freqs(grid, cfg)
    sizes = [t * h * w for t, h, w in grid]
    splits = np.split(freqs, np.cumsum(sizes)[:-1])
    emb = np.concatenate([_pad_rows(splits, pmax)] * 2, axis=-1)            # [N,P,head_dim]
    cos, sin = jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))
    valid_j = jnp.asarray(valid)
    frame_seg = _pad_rows(segment_ids(grid, cfg, False), pmax, -1)
    one_group = all(t == 1 for t, _, _ in grid)
    full_seg = None if one_group else jnp.asarray(frame_seg)
    is_full = np.ones((cfg.depth,), bool)
    if cfg.windowed:
      win_seg = jnp.asarray(_pad_rows(segment_ids(grid, cfg, True), pmax, -1))
      is_full[:] = False
      is_full[list(cfg.fullatt_block_indexes)] = True
      full_seg_arr = jnp.asarray(frame_seg)

    h = constrain(self.patch_embed(x.astype(cfg.compute_dtype)), _ACT)
    h0 = h

    def body(block, carry, full):
      if cfg.windowed:
        seg = jnp.where(full, full_seg_arr, win_seg)
      else:
        seg = full_seg
      out = block(carry, cos, sin, valid_j, seg)
      return out, (out if collect else None)

    if cfg.remat_policy != "none":
      body = nnx.remat(body, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
    scan = nnx.scan(body, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0), length=cfg.depth)
    h, per_block = scan(self.blocks, h, jnp.asarray(is_full))
    merged = self.merger(h)
    tokens = unpack_tokens(merged, grid, cfg)
    if not collect:
      return tokens
    flat = lambda a: a.reshape(n * pmax, -1)[jnp.asarray(np.flatnonzero(valid.reshape(-1)))]
    inter = dict(patch_embed=flat(h0), block0=flat(per_block[0]), blocklast=flat(per_block[-1]),
                 merger=tokens, rotary=jnp.asarray(freqs))
    return tokens, inter


def tiny_config(**kw) -> VisionConfig:
  """The HPSv3 fixture's vision config."""
  base = dict(depth=2, embed_dim=32, num_heads=2, intermediate_size=128, out_hidden_size=64)
  base.update(kw)
  return VisionConfig(**base)
