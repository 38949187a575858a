"""WorldPlay DiT configuration, and its mapping to/from the reference constructor kwargs."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Shapes and options of HunyuanVideo-1.5 + WorldPlay action branches.

  Defaults are the 8B model (`real_8b_constructor_kwargs_for_reference` in the fixtures).
  """
  latent_channels: int = 32          # C: noisy latents; input is 2C+1 (latents | cond | mask)
  out_channels: int = 32
  patch_size: tuple[int, int, int] = (1, 1, 1)
  hidden_size: int = 2048
  heads: int = 16
  depth: int = 54                    # double-stream blocks
  mlp_ratio: float = 4.0
  rope_dims: tuple[int, int, int] = (16, 56, 56)
  rope_theta: float = 256.0
  qkv_bias: bool = True
  qk_norm_eps: float = 1e-6
  text_dim: int = 3584               # Qwen2.5-VL text states
  refiner_depth: int = 2
  byt5_in_dim: int = 1472
  byt5_hidden_dim: int = 2048
  byt5_out_dim: int = 2048
  vision_dim: int = 1152             # SigLIP states
  chunk_latents: int = 4             # latent frames per AR chunk (chunk-causal mask)
  context_timestep: float = 14.0     # t used for the context K/V pass
  # execution
  dtype: str = "float32"             # compute dtype
  param_dtype: str = "float32"       # master weights
  attention_impl: str = "xla"
  attention_block_kv: int = 1024
  remat_policy: str = "full"

  def __post_init__(self):
    if self.hidden_size % self.heads:
      raise ValueError(f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
    if sum(self.rope_dims) != self.head_dim:
      raise ValueError(f"rope_dims {self.rope_dims} must sum to head_dim {self.head_dim}")
    if self.head_dim % 4:
      raise ValueError(f"PRoPE needs head_dim divisible by 4, got {self.head_dim}")
    if any(d % 2 for d in self.rope_dims):
      raise ValueError(f"rope_dims must be even, got {self.rope_dims}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.heads

  @property
  def in_channels(self) -> int:
    return 2 * self.latent_channels + 1

  @property
  def mlp_hidden(self) -> int:
    return int(self.hidden_size * self.mlp_ratio)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "DiTConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["patch_size"] = list(self.patch_size)
    d["rope_dims"] = list(self.rope_dims)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DiTConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown DiT config fields {sorted(unknown)}")
    d = dict(d)
    for k in ("patch_size", "rope_dims"):
      if k in d:
        d[k] = tuple(int(x) for x in d[k])
    return cls(**d)


# Options of the reference constructor that wc_jax implements only one way.
_REQUIRED = {
    "concat_condition": True, "mlp_act_type": "gelu_tanh", "mm_single_blocks_depth": 0, "qk_norm": True,
    "qk_norm_type": "rms", "guidance_embed": False, "use_meanflow": False, "text_projection": "single_refiner",
    "use_attention_mask": True, "text_states_dim_2": None, "text_pool_type": None, "glyph_byT5_v2": True,
    "vision_projection": "linear", "is_reshape_temporal_channels": False, "use_cond_type_embedding": True,
}


def from_reference(kwargs: Mapping[str, Any], byt5: Mapping[str, int] | None = None, **overrides) -> DiTConfig:
  """Builds a DiTConfig from the reference constructor kwargs (HunyuanVideo-1.5 config.json).

  `byt5` overrides the widths the reference hard-codes in ByT5Mapper (1472 -> 2048 -> 2048).
  """
  bad = {k: kwargs[k] for k, want in _REQUIRED.items() if k in kwargs and kwargs[k] != want}
  if bad:
    raise ValueError(f"reference options not supported by wc_jax: {bad} (supported: "
                     f"{ {k: _REQUIRED[k] for k in bad} })")
  in_ch = int(kwargs.get("in_channels", 32))
  out_ch = kwargs.get("out_channels") or in_ch
  byt5 = dict(byt5 or {})
  cfg = dict(
      latent_channels=in_ch,
      out_channels=int(out_ch),
      patch_size=tuple(int(p) for p in kwargs.get("patch_size", (1, 1, 1))),
      hidden_size=int(kwargs["hidden_size"]),
      heads=int(kwargs["heads_num"]),
      depth=int(kwargs["mm_double_blocks_depth"]),
      mlp_ratio=float(kwargs.get("mlp_width_ratio", 4.0)),
      rope_dims=tuple(int(r) for r in kwargs.get("rope_dim_list", (16, 56, 56))),
      rope_theta=float(kwargs.get("rope_theta", 256)),
      qkv_bias=bool(kwargs.get("qkv_bias", True)),
      text_dim=int(kwargs["text_states_dim"]),
      vision_dim=int(kwargs["vision_states_dim"]),
      byt5_in_dim=int(byt5.get("in_dim", 1472)),
      byt5_hidden_dim=int(byt5.get("hidden_dim", 2048)),
      byt5_out_dim=int(byt5.get("out_dim", 2048)),
  )
  cfg.update(overrides)
  return DiTConfig(**cfg)


def to_reference(cfg: DiTConfig) -> dict:
  """The reference constructor kwargs (config.json) for `cfg`."""
  out = {
      "_class_name": "HunyuanVideo_1_5_DiffusionTransformer",
      "patch_size": list(cfg.patch_size), "in_channels": cfg.latent_channels, "concat_condition": True,
      "out_channels": cfg.out_channels, "hidden_size": cfg.hidden_size, "heads_num": cfg.heads,
      "mlp_width_ratio": cfg.mlp_ratio, "mlp_act_type": "gelu_tanh", "mm_double_blocks_depth": cfg.depth,
      "mm_single_blocks_depth": 0, "rope_dim_list": list(cfg.rope_dims), "qkv_bias": cfg.qkv_bias,
      "qk_norm": True, "qk_norm_type": "rms", "guidance_embed": False, "use_meanflow": False,
      "text_projection": "single_refiner", "use_attention_mask": True, "text_states_dim": cfg.text_dim,
      "text_states_dim_2": None, "text_pool_type": None, "rope_theta": cfg.rope_theta, "attn_mode": "flash",
      "attn_param": None, "glyph_byT5_v2": True, "vision_projection": "linear",
      "vision_states_dim": cfg.vision_dim, "is_reshape_temporal_channels": False,
      "use_cond_type_embedding": True, "ideal_resolution": None, "ideal_task": None,
  }
  if (cfg.byt5_in_dim, cfg.byt5_hidden_dim, cfg.byt5_out_dim) != (1472, 2048, 2048):
    out["wc_jax_byt5_mapper"] = {"in_dim": cfg.byt5_in_dim, "hidden_dim": cfg.byt5_hidden_dim,
                                 "out_dim": cfg.byt5_out_dim}
  return out


def from_config(model_cfg) -> DiTConfig:
  """DiTConfig from the `model` section of an ml_collections config (ignores `checkpoint`)."""
  d = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
  d.pop("checkpoint", None)
  d.pop("init", None)
  return DiTConfig.from_dict(d)
