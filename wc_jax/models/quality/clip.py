"""CLIP ViT image tower + aesthetic head: an image-quality scorer for the drift reward.

Why CLIP: the reference scores quality with HPSv3, a reward model fine-tuned
from Qwen2-VL-7B (a 7B vision-language model with a caption prompt). A CLIP
image tower with a small aesthetic head (LAION improved-aesthetic-predictor
style) is ~0.3B parameters, prompt-free, and is what the drift reward needs: a
stable per-frame quality number to compare against the first frame. Porting
HPSv3 instead would take a Qwen2-VL vision encoder (ViT with 2-D RoPE, window
attention, patch merger), the 7B Qwen2 language model with M-RoPE, the chat
template/tokenizer and HPSv3's reward head on the last token, plus converters
for all of it.

Layout follows Hugging Face `CLIPVisionModelWithProjection` (see convert.py):
patch conv (no bias) -> [CLS] + patches + learned positions -> pre LayerNorm ->
pre-norm transformer layers (q scaled by head_dim^-0.5, quick_gelu or gelu
MLP) -> post LayerNorm on [CLS] -> bias-free projection. The head reads the
L2-normalised projected embedding.

Images are channels-last [N,H,W,3] floats in [0,1].
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "none": lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
  """CLIP vision tower hyper-parameters (names as in HF `CLIPVisionConfig`)."""
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  image_size: int = 224
  patch_size: int = 14
  projection_dim: int = 768
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} must divide by num_attention_heads "
                       f"{self.num_attention_heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} must divide by patch_size {self.patch_size}")
    if self.hidden_act not in _ACTS:
      raise ValueError(f"hidden_act must be one of {sorted(_ACTS)}, got {self.hidden_act!r}")

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1

  @classmethod
  def from_hf(cls, config: dict) -> "ClipVisionConfig":
    """From an HF CLIPConfig (uses `vision_config`) or CLIPVisionConfig dict."""
    vc = dict(config.get("vision_config", config))
    if "projection_dim" not in vc and "projection_dim" in config:
      vc["projection_dim"] = config["projection_dim"]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vc.items() if k in names})

  def to_hf(self) -> dict:
    return {"model_type": "clip_vision_model", **dataclasses.asdict(self)}


# OpenAI ViT-L/14 (224 px): the tower the LAION aesthetic predictors read.
VIT_L_14 = ClipVisionConfig()
VIT_B_32 = ClipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, patch_size=32, projection_dim=512)


@dataclasses.dataclass(frozen=True)
class AestheticHeadConfig:
  """Head on the L2-normalised image embedding: Linear layers dims[i] -> dims[i+1].

  LAION improved-aesthetic-predictor (v2): dims (768,1024,128,64,16,1) with no
  activation between layers (only dropouts, inert at inference); LAION v1:
  dims (768, 1).
  """
  dims: tuple[int, ...] = (768, 1024, 128, 64, 16, 1)
  activation: str = "none"
  normalize_input: bool = True

  def __post_init__(self):
    if len(self.dims) < 2 or self.dims[-1] != 1:
      raise ValueError(f"head dims must have >= 2 entries and end in 1, got {self.dims}")
    if self.activation not in _ACTS:
      raise ValueError(f"head activation must be one of {sorted(_ACTS)}, got {self.activation!r}")


LAION_V2_HEAD = AestheticHeadConfig()
LINEAR_HEAD = AestheticHeadConfig(dims=(768, 1))


class ClipAttention(nnx.Module):
  def __init__(self, cfg: ClipVisionConfig, *, dtype, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.num_heads = cfg.num_attention_heads
    mk = lambda: nnx.Linear(d, d, dtype=dtype, rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = mk(), mk(), mk(), mk()

  def __call__(self, x):
    n, t, d = x.shape
    h = self.num_heads
    split = lambda y: y.reshape(n, t, h, d // h)
    q = split(self.q_proj(x)) * (d // h) ** -0.5
    k, v = split(self.k_proj(x)), split(self.v_proj(x))
    w = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32), axis=-1)
    o = jnp.einsum("nhqk,nkhd->nqhd", w.astype(v.dtype), v).reshape(n, t, d)
    return self.out_proj(o)


class ClipMLP(nnx.Module):
  def __init__(self, cfg: ClipVisionConfig, *, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
    self.act = cfg.hidden_act

  def __call__(self, x):
    return self.fc2(_ACTS[self.act](self.fc1(x)))


class ClipEncoderLayer(nnx.Module):
  def __init__(self, cfg: ClipVisionConfig, *, dtype, rngs: nnx.Rngs):
    ln = lambda: nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.layer_norm1 = ln()
    self.self_attn = ClipAttention(cfg, dtype=dtype, rngs=rngs)
    self.layer_norm2 = ln()
    self.mlp = ClipMLP(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


class ClipVisionTower(nnx.Module):
  """HF CLIPVisionModelWithProjection: normalised pixels [N,S,S,3] -> image_embeds [N,P]."""

  def __init__(self, cfg: ClipVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = cfg
    d, p = cfg.hidden_size, cfg.patch_size
    self.patch_embedding = nnx.Conv(3, d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                                    dtype=dtype, rngs=rngs)
    self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,)) * d ** -0.5)
    self.position_embedding = nnx.Param(
        jax.random.normal(rngs.params(), (cfg.num_positions, d)) * 0.02)
    ln = lambda: nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.pre_layrnorm = ln()
    self.layers = nnx.List([ClipEncoderLayer(cfg, dtype=dtype, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])
    self.post_layernorm = ln()
    self.visual_projection = nnx.Linear(d, cfg.projection_dim, use_bias=False, dtype=dtype,
                                        rngs=rngs)

  def __call__(self, pixels):
    s = self.config.image_size
    if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
      raise ValueError(f"ClipVisionTower: pixels must be [N,{s},{s},3], got shape {pixels.shape}")
    x = self.patch_embedding(pixels)
    n = x.shape[0]
    x = x.reshape(n, -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(x.dtype)
    x = self.pre_layrnorm(x)
    for layer in self.layers:
      x = layer(x)
    return self.visual_projection(self.post_layernorm(x[:, 0]))


def preprocess(images, image_size: int):
  """[N,H,W,3] in [0,1] -> CLIP-normalised [N,S,S,3]: shorter side resized to S
  (bicubic, antialiased), centre crop, per-channel mean/std. HF's processor does
  the same on uint8 PIL images, so values differ slightly after resizing."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"CLIP preprocess: images must be [N,H,W,3], got shape {images.shape}")
  x = images.astype(jnp.float32)
  n, h, w, _ = x.shape
  if (h, w) != (image_size, image_size):
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    x = jax.image.resize(x, (n, nh, nw, 3), "bicubic", antialias=True)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[:, top:top + image_size, left:left + image_size]
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


class ClipImageEncoder(nnx.Module):
  """Images in [0,1] -> L2-normalised CLIP image embeddings [N,P] (an `encoder`
  for `embedding_similarity_reward`)."""

  def __init__(self, cfg: ClipVisionConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.tower = ClipVisionTower(cfg, dtype=dtype, rngs=rngs)

  def embed_raw(self, images):
    """Un-normalised projected embeddings (HF `image_embeds`) [N,P] float32."""
    return self.tower(preprocess(images, self.tower.config.image_size)).astype(jnp.float32)

  def __call__(self, images):
    return _l2_normalize(self.embed_raw(images))


def _l2_normalize(e):
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


class AestheticHead(nnx.Module):
  def __init__(self, cfg: AestheticHeadConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(cfg.dims[:-1], cfg.dims[1:])])

  def __call__(self, emb):
    x = emb.astype(jnp.float32)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = _ACTS[self.config.activation](x)
    return x[..., 0]


class ClipAestheticScorer(nnx.Module):
  """Quality scorer: images [N,H,W,3] in [0,1] -> scores [N] float32.

  Pass it as `scorer` to `quality_drift_reward` / `quality_reward`; its
  `vision` submodule is an `encoder` for `embedding_similarity_reward`.
  """

  def __init__(self, vision: ClipVisionConfig = VIT_L_14, head: AestheticHeadConfig = LAION_V2_HEAD,
               *, dtype=jnp.float32, rngs: nnx.Rngs):
    if head.dims[0] != vision.projection_dim:
      raise ValueError(f"head input {head.dims[0]} != CLIP projection_dim {vision.projection_dim}")
    self.vision = ClipImageEncoder(vision, dtype=dtype, rngs=rngs)
    self.head = AestheticHead(head, rngs=rngs)

  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ClipAestheticScorer: images must be [N,H,W,3] in [0,1], got shape "
                       f"{images.shape}")
    e = self.vision.embed_raw(images)
    return self.head(_l2_normalize(e) if self.head.config.normalize_input else e)


def tiny_config(**kw) -> ClipVisionConfig:
  """A few-thousand-parameter tower for tests."""
  base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, projection_dim=16)
  base.update(kw)
  return ClipVisionConfig(**base)


def head_dims_for(projection_dim: int, hidden: Sequence[int] = ()) -> tuple[int, ...]:
  return (projection_dim, *hidden, 1)
