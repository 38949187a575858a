"""T5 encoder (ByT5 for WorldPlay's glyph text), as Hugging Face's `T5EncoderModel` computes it.

What makes T5 different from the other transformers here:
* attention logits are NOT scaled by 1/sqrt(d_kv) (the scale is folded into the init);
* positions enter only as a learned bias per (relative-position bucket, head), owned by the
  first layer and shared by all layers (T5, ByT5), or one table per layer (umT5:
  `per_layer_position_bias`); buckets are log-spaced beyond half the bucket range;
* norms are RMS-only (no mean, no bias) with statistics in float32;
* the FFN is `wo(act(wi_0 x) * wi_1 x)` for "gated-*" configs, else `wo(act(wi x))`;
* the last hidden state is after `final_layer_norm` (padded rows are non-zero: the caller masks).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.encoders._scan import scan_layers, stacked
from wc_jax.nn.layers import RMSNorm, dense
from wc_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Encoder hyper-parameters (names as in HF `T5Config`). Defaults: google/byt5-small."""
  vocab_size: int = 384
  d_model: int = 1472
  d_kv: int = 64
  d_ff: int = 3584
  num_layers: int = 12
  num_heads: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"
  dense_act_fn: str = "gelu_new"
  dtype: str = "float32"          # compute dtype (the reference runs ByT5 in fp32)
  param_dtype: str = "float32"
  remat: bool = True
  per_layer_position_bias: bool = False   # umT5: every layer owns its bucket table (T5: layer 0's, shared)

  def __post_init__(self):
    act = self.feed_forward_proj.split("-")[-1]
    if act not in ACTIVATIONS and self.dense_act_fn not in ACTIVATIONS:
      raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r}: unknown activation; known {sorted(ACTIVATIONS)}")
    if len(self.feed_forward_proj.split("-")) > 2:
      raise ValueError(f"feed_forward_proj must be 'act' or 'gated-act', got {self.feed_forward_proj!r}")

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def act(self) -> str:
    # HF: "gated-gelu" means gelu_new (tanh); otherwise the named activation.
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.dense_act_fn if self.dense_act_fn in ACTIVATIONS else self.feed_forward_proj.split("-")[-1]

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @classmethod
  def from_hf(cls, config: dict, **overrides) -> "T5Config":
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in config.items() if k in names and k not in ("dtype",)}
    kw.update(overrides)
    return cls(**kw)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[q_len, k_len] bucket ids of (key - query), bidirectional, with float32 log math as torch does."""
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  nb = num_buckets // 2
  out = (rel > 0).astype(np.int64) * nb
  n = np.abs(rel)
  max_exact = nb // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + np.trunc(ratio * np.float32(nb - max_exact)).astype(np.int64, copy=False)
  large = np.minimum(np.where(is_small, 0, large), nb - 1)
  return out + np.where(is_small, n, large)


def _bias_table(cfg: T5Config, rngs: nnx.Rngs) -> nnx.Param:
  """[buckets, heads] learned position bias (random init; converters overwrite it)."""
  return nnx.Param(jax.random.normal(rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads),
                                     jnp.dtype(cfg.param_dtype)) * 0.1, out_sharding=("vocab", "heads"))


def _lookup_bias(table, buckets):
  """table [buckets, H], buckets [Lq, Lk] int -> [1, H, Lq, Lk] float32."""
  return jnp.take(table[...].astype(jnp.float32), buckets, axis=0).transpose(2, 0, 1)[None]


class T5Block(nnx.Module):
  """Pre-RMSNorm self-attention (no logit scale; shared or own position bias) + (gated) FFN."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, inner = cfg.d_model, cfg.inner_dim
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs, use_bias=False)
    if cfg.per_layer_position_bias:
      self.relative_attention_bias = _bias_table(cfg, rngs)
    self.attn_norm = RMSNorm(d, eps=cfg.layer_norm_epsilon, param_dtype=jnp.dtype(cfg.param_dtype))
    self.q = dense(d, inner, ("embed", "heads"), **kw)
    self.k = dense(d, inner, ("embed", "heads"), **kw)
    self.v = dense(d, inner, ("embed", "heads"), **kw)
    self.o = dense(inner, d, ("heads", "embed"), **kw)
    self.ffn_norm = RMSNorm(d, eps=cfg.layer_norm_epsilon, param_dtype=jnp.dtype(cfg.param_dtype))
    self.wi_0 = dense(d, cfg.d_ff, ("embed", "mlp"), **kw)
    if cfg.is_gated:
      self.wi_1 = dense(d, cfg.d_ff, ("embed", "mlp"), **kw)
    self.wo = dense(cfg.d_ff, d, ("mlp", "embed"), **kw)

  def __call__(self, x, bias, buckets=None):
    """bias: the additive [B or 1, H or 1, L, L] float32 bias (mask, + the shared position bias);
    with per_layer_position_bias this layer's own table at `buckets` [L, L] is added."""
    cfg = self.cfg
    b, n, _ = x.shape
    if cfg.per_layer_position_bias:
      bias = bias + _lookup_bias(self.relative_attention_bias, buckets)
    h = self.attn_norm(x)
    split = lambda y: y.reshape(b, n, cfg.num_heads, cfg.d_kv)
    q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST) + bias
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", p, v, precision=jax.lax.Precision.HIGHEST).reshape(b, n, cfg.inner_dim)
    x = x + self.o(o)
    h = self.ffn_norm(x)
    act = ACTIVATIONS[cfg.act]
    f = act(self.wi_0(h))
    if cfg.is_gated:
      f = f * self.wi_1(h)
    x = x + self.wo(f)
    return constrain(x, _ACT)


class T5Encoder(nnx.Module):
  """token ids [B, L] (+ mask) -> last hidden state [B, L, d_model] after final_layer_norm."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed_tokens = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), pd),
                                  out_sharding=("vocab", "embed"))
    if not cfg.per_layer_position_bias:
      self.relative_attention_bias = _bias_table(cfg, rngs)
    self.blocks = stacked(lambda r: T5Block(cfg, rngs=r), cfg.num_layers, rngs)
    self.final_layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, param_dtype=pd)

  def buckets(self, length: int):
    cfg = self.cfg
    return jnp.asarray(relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                                 cfg.relative_attention_max_distance))

  def position_bias(self, length: int):
    """[1, H, L, L] float32 learned bias of the relative positions (the shared table)."""
    if self.cfg.per_layer_position_bias:
      raise ValueError("position_bias: this encoder has one table per layer (per_layer_position_bias)")
    return _lookup_bias(self.relative_attention_bias, self.buckets(length))

  def __call__(self, input_ids, attention_mask=None, *, return_all: bool = False):
    """Returns the last hidden state; with return_all also [num_layers + 1, B, L, d]: the
    embeddings, each block's output but the last, then the normed last (HF's hidden_states)."""
    cfg = self.cfg
    if input_ids.ndim != 2:
      raise ValueError(f"T5Encoder: input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    b, n = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, n), bool)
    if attention_mask.shape != (b, n):
      raise ValueError(f"T5Encoder: attention_mask must be [B, L]={b, n}, got {tuple(attention_mask.shape)}")
    x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(jnp.dtype(cfg.dtype))
    x = constrain(x, _ACT)
    # the additive mask of HF: (1 - mask) * finfo.min, on top of the position bias
    mask_bias = jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
    if cfg.per_layer_position_bias:
      bias, buckets = mask_bias, self.buckets(n)
    else:
      bias, buckets = self.position_bias(n) + mask_bias, None

    def step(block, h):
      out = block(h, bias, buckets)
      return out, out

    last, per_layer = scan_layers(self.blocks, step, x, cfg.num_layers, remat=cfg.remat)
    out = self.final_layer_norm(last)
    if not return_all:
      return out
    return out, jnp.concatenate([x[None], per_layer[:-1], out[None]], axis=0)
