"""SigLIP vision tower (HF `SiglipVisionModel`), the image encoder of WorldPlay's i2v path.

Layout: patch conv (with bias) -> + learned positions (no class token) -> pre-LN transformer
layers (LayerNorm eps 1e-6, softmax(q k^T / sqrt(d)) attention with biases, gelu-tanh MLP)
-> post LayerNorm = `last_hidden_state`, which WorldPlay feeds to the DiT (all tokens). The
attention-pooling head (`pooler_output`) is kept for completeness; the pipeline ignores it.

Images are channels-last [N, S, S, 3], already normalised (see `image_resize.siglip_pixels`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from wc_jax.models.encoders._scan import scan_layers, stacked
from wc_jax.models.encoders.t5 import ACTIVATIONS
from wc_jax.nn.attention import attention
from wc_jax.nn.layers import LayerNorm, dense
from wc_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """Vision tower hyper-parameters (names as in HF `SiglipVisionConfig`). Defaults: so400m-patch14-384."""
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_hidden_layers: int = 27
  num_attention_heads: int = 16
  num_channels: int = 3
  image_size: int = 384
  patch_size: int = 14
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  vision_use_head: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"
  remat: bool = True

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} must divide by num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @classmethod
  def from_hf(cls, config: dict, **overrides) -> "SiglipConfig":
    vc = dict(config.get("vision_config", config))
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in vc.items() if k in names and k != "dtype"}
    kw.update(overrides)
    return cls(**kw)


def _kw(cfg):
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class SiglipAttention(nnx.Module):
  def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.cfg = cfg
    self.q_proj = dense(d, d, ("embed", "heads"), rngs=rngs, **_kw(cfg))
    self.k_proj = dense(d, d, ("embed", "heads"), rngs=rngs, **_kw(cfg))
    self.v_proj = dense(d, d, ("embed", "heads"), rngs=rngs, **_kw(cfg))
    self.out_proj = dense(d, d, ("heads", "embed"), rngs=rngs, **_kw(cfg))

  def __call__(self, x):
    cfg = self.cfg
    b, n, d = x.shape
    h = cfg.num_attention_heads
    split = lambda y: y.reshape(b, n, h, d // h)
    o = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), impl=cfg.attention_impl)
    return self.out_proj(o.reshape(b, n, d))


class SiglipMLP(nnx.Module):
  def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
    self.act = cfg.hidden_act
    self.fc1 = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs, **_kw(cfg))
    self.fc2 = dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs=rngs, **_kw(cfg))

  def __call__(self, x):
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class SiglipLayer(nnx.Module):
  def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=pd)
    self.self_attn = SiglipAttention(cfg, rngs=rngs)
    self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=pd)
    self.mlp = SiglipMLP(cfg, rngs=rngs)

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x))
    x = x + self.mlp(self.layer_norm2(x))
    return constrain(x, _ACT)


class SiglipPoolingHead(nnx.Module):
  """Attention pooling with one learned probe (HF `SiglipMultiheadAttentionPoolingHead`)."""

  def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.cfg = cfg
    self.probe = nnx.Param(jax.random.normal(rngs.params(), (1, 1, d), jnp.dtype(cfg.param_dtype)),
                           out_sharding=(None, None, "embed"))
    self.in_proj = dense(d, 3 * d, ("embed", "qkv"), rngs=rngs, **_kw(cfg))
    self.out_proj = dense(d, d, ("heads", "embed"), rngs=rngs, **_kw(cfg))
    self.layernorm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype))
    self.mlp = SiglipMLP(cfg, rngs=rngs)

  def __call__(self, x):
    cfg = self.cfg
    b, n, d = x.shape
    h = cfg.num_attention_heads
    kernel = self.in_proj.kernel[...].astype(x.dtype)
    bias = self.in_proj.bias[...].astype(x.dtype)
    hp = jax.lax.Precision.HIGHEST
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (b, 1, d))
    q = jnp.einsum("bnd,de->bne", probe, kernel[:, :d], precision=hp) + bias[:d]
    k = jnp.einsum("bnd,de->bne", x, kernel[:, d:2 * d], precision=hp) + bias[d:2 * d]
    v = jnp.einsum("bnd,de->bne", x, kernel[:, 2 * d:], precision=hp) + bias[2 * d:]
    o = attention(q.reshape(b, 1, h, d // h), k.reshape(b, n, h, d // h), v.reshape(b, n, h, d // h))
    y = self.out_proj(o.reshape(b, 1, d))
    y = y + self.mlp(self.layernorm(y))
    return y[:, 0]


class SiglipVisionTower(nnx.Module):
  """pixels [N, S, S, 3] -> last_hidden_state [N, (S/p)^2, D] (and pooled [N, D] on request)."""

  def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
    pd = jnp.dtype(cfg.param_dtype)
    self.patch_kernel = nnx.Param(jax.random.normal(rngs.params(), (p, p, c, d), pd) * (p * p * c) ** -0.5,
                                  out_sharding=(None, None, None, "embed"))
    self.patch_bias = nnx.Param(jnp.zeros((d,), pd), out_sharding=("embed",))
    self.position_embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.num_patches, d), pd) * 0.02,
                                        out_sharding=(None, "embed"))
    self.layers = stacked(lambda r: SiglipLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
    self.post_layernorm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=pd)
    if cfg.vision_use_head:
      self.head = SiglipPoolingHead(cfg, rngs=rngs)

  def embed(self, pixels):
    cfg = self.cfg
    s, p = cfg.image_size, cfg.patch_size
    if pixels.ndim != 4 or pixels.shape[1:] != (s, s, cfg.num_channels):
      raise ValueError(f"SiglipVisionTower: pixels must be [N, {s}, {s}, {cfg.num_channels}] (channels last), "
                       f"got shape {tuple(pixels.shape)}")
    n = pixels.shape[0]
    g = s // p
    dt = jnp.dtype(cfg.dtype)
    x = pixels[:, :g * p, :g * p].reshape(n, g, p, g, p, cfg.num_channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, g * g, p * p * cfg.num_channels).astype(dt)
    k = self.patch_kernel[...].astype(dt).reshape(p * p * cfg.num_channels, -1)
    x = jnp.dot(x, k, precision=jax.lax.Precision.HIGHEST) + self.patch_bias[...].astype(dt)
    return constrain(x + self.position_embedding[...].astype(dt), _ACT)

  def __call__(self, pixels, *, return_all: bool = False, pooled: bool = False):
    """last_hidden_state; with return_all also [L + 1, N, T, D] (embeddings, each layer,
    the last before post_layernorm); with pooled also the head's output [N, D]."""
    cfg = self.cfg
    x = self.embed(pixels)

    def step(layer, h):
      out = layer(h)
      return out, out

    last, per_layer = scan_layers(self.layers, step, x, cfg.num_hidden_layers, remat=cfg.remat)
    out = self.post_layernorm(last)
    extra = []
    if return_all:
      extra.append(jnp.concatenate([x[None], per_layer], axis=0))
    if pooled:
      if not cfg.vision_use_head:
        raise ValueError("this SigLIP tower has no pooling head (vision_use_head=False)")
      extra.append(self.head(out))
    return (out, *extra) if extra else out
