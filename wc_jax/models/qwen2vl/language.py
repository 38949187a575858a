"""The Qwen2 / Qwen2-VL / Qwen2.5-VL language model in Flax NNX.

One decoder for every caller: HPSv3 (Qwen2-VL-7B; plain 0..L-1 positions because
HPSv3 calls the LLM with `position_ids=None`), and the Qwen2.5-VL-7B text encoder of
the conditioning path (hidden state [-3]). Layers: RMSNorm -> GQA attention (q/k/v
bias, o without) with rotary embeddings -> residual -> RMSNorm -> SwiGLU MLP ->
residual; a final RMSNorm. Layers are stacked (`nnx.vmap`) and run with `nnx.scan`
under `nnx.remat`.

Positions, as the caller asks:
  * None        -> 0..L-1 for every row (ordinary RoPE; what HPSv3 does);
  * [B, L]      -> ordinary RoPE at those positions;
  * [3, B, L]   -> M-RoPE: the rotary frequency pairs are split into
                   `mrope_section` = (t, h, w) groups, each rotated by its own row.
With the three rows equal, M-RoPE is ordinary RoPE.

Hidden states (`output_hidden_states=True`) follow Hugging Face's tuple, stacked:
`hidden_states[i]` for i < num_layers is the INPUT of layer i (index 0 = the
embeddings), `hidden_states[num_layers]` is the last layer's output AFTER the final
norm. So HF's `hidden_states[-3]` is `out.hidden_states[-3]` here too (no final norm).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.nn.attention import Mask, attention
from wc_jax.nn.layers import RMSNorm, dense
from wc_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class Qwen2LMConfig:
  """Qwen2 decoder hyper-parameters (names as in HF `Qwen2VLConfig` / `Qwen2_5_VLConfig` text part)."""
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  # execution
  dtype: str = "float32"             # compute dtype (bf16 for the real 7B)
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  attention_block_kv: int = 1024
  remat_policy: str = "full"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} must divide by num_attention_heads "
                       f"{self.num_attention_heads}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads {self.num_attention_heads} must divide by "
                       f"num_key_value_heads {self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
    if sum(self.mrope_section) != self.head_dim // 2:
      raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "Qwen2LMConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["mrope_section"] = list(self.mrope_section)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Qwen2LMConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown Qwen2LMConfig fields {sorted(unknown)}")
    d = dict(d)
    if "mrope_section" in d:
      d["mrope_section"] = tuple(int(x) for x in d["mrope_section"])
    return cls(**d)

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], **overrides) -> "Qwen2LMConfig":
    """From an HF config.json dict (Qwen2-VL / Qwen2.5-VL top level, its `text_config`, or Qwen2)."""
    c = dict(config.get("text_config") or config)
    rs = c.get("rope_scaling") or config.get("rope_scaling") or {}
    kw = {f.name: c[f.name] for f in dataclasses.fields(cls) if f.name in c and f.name != "mrope_section"}
    hd = kw.get("hidden_size", cls.hidden_size) // kw.get("num_attention_heads", cls.num_attention_heads)
    sec = rs.get("mrope_section")
    kw["mrope_section"] = tuple(int(x) for x in sec) if sec else _default_sections(hd // 2)
    kw.pop("dtype", None)
    kw.update(overrides)
    return cls(**kw)


def _default_sections(half: int) -> tuple[int, ...]:
  """Plain-RoPE models have no mrope_section; any split works (all rows equal)."""
  return (half,)


# Qwen2-VL-7B-Instruct and Qwen2.5-VL-7B-Instruct share the text model (HPSv3 resizes the vocab to 151658).
QWEN2_VL_7B = Qwen2LMConfig()
QWEN25_VL_7B = Qwen2LMConfig()
HPSV3_7B = Qwen2LMConfig(vocab_size=151658)


def _remat_policy(name: str):
  return {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[name]


# ----------------------------------------------------------------------------- rotary

def rope_cos_sin(positions, cfg: Qwen2LMConfig, batch: int, length: int):
  """cos, sin [B, L, head_dim] float32 for positions None / [B,L] / [3,B,L] (see module doc)."""
  d = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))   # [d/2]
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (batch, length))
  positions = jnp.asarray(positions)
  if positions.ndim == 2:
    if positions.shape != (batch, length):
      raise ValueError(f"positions [B,L] must be {(batch, length)}, got {tuple(positions.shape)}")
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq                         # [B,L,d/2]
  elif positions.ndim == 3:
    if positions.shape != (3, batch, length):
      raise ValueError(f"M-RoPE positions must be [3,B,L] = {(3, batch, length)}, got "
                       f"{tuple(positions.shape)}")
    if len(cfg.mrope_section) != 3:
      raise ValueError(f"M-RoPE positions need a 3-part mrope_section, config has {cfg.mrope_section}")
    all_f = positions.astype(jnp.float32)[..., None] * inv_freq                        # [3,B,L,d/2]
    sec = np.repeat(np.arange(3), cfg.mrope_section)                                   # row of each pair
    freqs = jnp.moveaxis(all_f[sec, :, :, np.arange(d // 2)], 0, -1)                   # [B,L,d/2]
  else:
    raise ValueError(f"positions must be None, [B,L] or [3,B,L], got shape {tuple(positions.shape)}")
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def mrope_positions(input_ids, attention_mask, grid_thw, *, image_token_id: int, vision_start_token_id: int,
                    spatial_merge_size: int = 2) -> np.ndarray:
  """Qwen2-VL's 3-D M-RoPE positions [3, B, L] (HF `get_rope_index`, images only), in NumPy.

  Text tokens advance all three rows together; the tokens of an image (t, h, w patches ->
  t x h/2 x w/2 tokens) get (frame, row, col) offsets from the position after the text
  before it; the text after an image continues from max + 1. Padding positions are 1
  (as the reference leaves them). NOT what HPSv3 uses (it passes no positions).
  """
  ids = np.asarray(input_ids)
  mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
  grid = [tuple(int(v) for v in g) for g in np.asarray(grid_thw).reshape(-1, 3)]
  m = spatial_merge_size
  out = np.ones((3,) + ids.shape, np.int64)
  image = 0
  for b in range(ids.shape[0]):
    row = ids[b][mask[b] == 1]
    starts = np.flatnonzero(row == vision_start_token_id)
    n_img = int(np.sum(row[starts[starts + 1 < len(row)] + 1] == image_token_id))
    parts, st = [], 0
    nxt = lambda: int(parts[-1].max()) + 1 if parts else 0
    for _ in range(n_img):
      ed = st + int(np.flatnonzero(row[st:] == image_token_id)[0])
      if image >= len(grid):
        raise ValueError(f"mrope_positions: more images in input_ids than grid_thw rows ({len(grid)})")
      t, h, w = grid[image]
      image += 1
      gh, gw = h // m, w // m
      s0 = nxt()
      parts.append(np.tile(np.arange(ed - st), (3, 1)) + s0)
      ti, hi, wi = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
      parts.append(np.stack([ti.ravel(), hi.ravel(), wi.ravel()]) + (ed - st) + s0)
      st = ed + t * gh * gw
    if st < len(row):
      s0 = nxt()
      parts.append(np.tile(np.arange(len(row) - st), (3, 1)) + s0)
    out[:, b, mask[b] == 1] = np.concatenate(parts, axis=1)
  return out


def _rotate_half(x):
  h = x.shape[-1] // 2
  return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x, cos, sin):
  """x [B,L,H,D]; cos/sin [B,L,D] (rotate-half convention)."""
  c = cos[:, :, None, :].astype(x.dtype)
  s = sin[:, :, None, :].astype(x.dtype)
  return x * c + _rotate_half(x) * s


# ----------------------------------------------------------------------------- layers

class Qwen2Attention(nnx.Module):
  def __init__(self, cfg: Qwen2LMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c, hd = cfg.hidden_size, cfg.head_dim
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.q_proj = dense(c, cfg.num_attention_heads * hd, ("embed", "heads"), **kw)
    self.k_proj = dense(c, cfg.num_key_value_heads * hd, ("embed", "heads"), **kw)
    self.v_proj = dense(c, cfg.num_key_value_heads * hd, ("embed", "heads"), **kw)
    self.o_proj = dense(cfg.num_attention_heads * hd, c, ("heads", "embed"), use_bias=False, **kw)

  def __call__(self, x, cos, sin, mask: Mask):
    cfg = self.cfg
    b, length, _ = x.shape
    hd, h, kvh = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    q = apply_rope(self.q_proj(x).reshape(b, length, h, hd), cos, sin)
    k = apply_rope(self.k_proj(x).reshape(b, length, kvh, hd), cos, sin)
    v = self.v_proj(x).reshape(b, length, kvh, hd)
    if kvh != h:   # GQA: kv head j serves query heads j*r .. j*r+r-1
      k = jnp.repeat(k, h // kvh, axis=2)
      v = jnp.repeat(v, h // kvh, axis=2)
    o = attention(q, k, v, mask, impl=cfg.attention_impl, block_kv=cfg.attention_block_kv)
    return self.o_proj(o.reshape(b, length, h * hd))


class Qwen2MLP(nnx.Module):
  def __init__(self, cfg: Qwen2LMConfig, *, rngs: nnx.Rngs):
    c, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, use_bias=False, rngs=rngs)
    self.gate_proj = dense(c, f, ("embed", "mlp"), **kw)
    self.up_proj = dense(c, f, ("embed", "mlp"), **kw)
    self.down_proj = dense(f, c, ("mlp", "embed"), **kw)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nnx.Module):
  def __init__(self, cfg: Qwen2LMConfig, *, rngs: nnx.Rngs):
    kw = dict(eps=cfg.rms_norm_eps, param_dtype=cfg.params_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, **kw)
    self.self_attn = Qwen2Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **kw)
    self.mlp = Qwen2MLP(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, mask: Mask):
    x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, _ACT)


class LMOutput(NamedTuple):
  last_hidden_state: jax.Array                 # [B, L, C] after the final norm
  hidden_states: jax.Array | None = None       # [num_layers + 1, B, L, C] (HF tuple semantics, see module doc)
  last_layer_output: jax.Array | None = None   # [B, L, C] last layer's output before the final norm


class Qwen2LanguageModel(nnx.Module):
  """Token embeddings + decoder stack + final norm (HF `Qwen2Model` / `Qwen2VLModel`); no lm_head."""

  def __init__(self, cfg: Qwen2LMConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")), rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_hidden_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs):
      return Qwen2DecoderLayer(cfg, rngs=rngs)

    self.layers = make_layers(rngs)
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.params_dtype)

  def embed(self, input_ids):
    """[B, L] int -> [B, L, C] in the compute dtype."""
    if not jnp.issubdtype(jnp.asarray(input_ids).dtype, jnp.integer):
      raise TypeError(f"input_ids must be integers, got dtype {jnp.asarray(input_ids).dtype}")
    return self.embed_tokens(input_ids)

  def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None,
               output_hidden_states: bool = False) -> LMOutput:
    """Runs the decoder (causal attention + right/left padding mask).

    Args:
      input_ids: [B, L] token ids, or
      inputs_embeds: [B, L, C] (e.g. with image features spliced in).
      attention_mask: [B, L] 1 = real token (None: all real). Padded keys are hidden;
        padded queries still get an output (they see the real keys before them).
      positions: None, [B, L] or [3, B, L] (see module doc).
      output_hidden_states: also return the stacked HF-style hidden states.
    """
    cfg = self.cfg
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("Qwen2LanguageModel: pass exactly one of input_ids and inputs_embeds")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.compute_dtype)
    if x.ndim != 3 or x.shape[-1] != cfg.hidden_size:
      raise ValueError(f"inputs_embeds must be [B, L, {cfg.hidden_size}], got {tuple(x.shape)}")
    b, length, _ = x.shape
    if length == 0:
      raise ValueError("Qwen2LanguageModel: empty sequence (L = 0)")
    if attention_mask is not None and tuple(attention_mask.shape) != (b, length):
      raise ValueError(f"attention_mask must be [B, L] = {(b, length)}, got {tuple(attention_mask.shape)}")
    x = constrain(x, _ACT)
    cos, sin = rope_cos_sin(positions, cfg, b, length)
    order = np.arange(length, dtype=np.int32)
    mask = Mask(kv_valid=None if attention_mask is None else attention_mask.astype(bool),
                q_chunk=order, kv_chunk=order)

    def body(layer, h):
      out = layer(h, cos, sin, mask)
      return out, (out if output_hidden_states else None)

    if cfg.remat_policy != "none":
      body = nnx.remat(body, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
    scan = nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0), length=cfg.num_hidden_layers)
    last, per_layer = scan(self.layers, x)
    normed = self.norm(last)
    hs = None
    if output_hidden_states:
      hs = jnp.concatenate([x[None], per_layer[:-1], normed[None]], axis=0)
    return LMOutput(normed, hs, last)


def tiny_config(**kw) -> Qwen2LMConfig:
  """A small decoder for tests (the HPSv3 fixture's text config)."""
  base = dict(vocab_size=261, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3))
  base.update(kw)
  return Qwen2LMConfig(**base)
