"""LingBot-World DiT configuration (Wan2.2 DiT + LingBot camera branch), and its mapping
to/from the reference `WanModel` constructor kwargs."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn")

# Plucker channels (ray origin + direction) x 8x8 pixels of one VAE latent cell: the reference
# hard-codes 6 * 64 as the camera input width per latent cell.
CAMERA_CHANNELS = 6 * 64


@dataclasses.dataclass(frozen=True)
class LingBotConfig:
  """Shapes and options of one LingBot-World expert (both experts share them).

  Defaults are the released i2v-A14B expert (wan/configs/wan_i2v_A14B.py).
  """
  patch_size: tuple[int, int, int] = (1, 2, 2)
  text_len: int = 512                # context is zero-padded to this many rows (all attended)
  in_dim: int = 36                   # 16 noise + 4 mask + 16 image latent
  dim: int = 5120
  ffn_dim: int = 13824
  freq_dim: int = 256
  text_dim: int = 4096               # umT5-XXL states
  out_dim: int = 16
  num_heads: int = 40
  num_layers: int = 40
  eps: float = 1e-6
  rope_theta: float = 10000.0
  camera_channels: int = CAMERA_CHANNELS
  # execution
  dtype: str = "float32"             # compute dtype
  param_dtype: str = "float32"       # master weights
  attention_impl: str = "xla"
  attention_block_kv: int = 1024
  remat_policy: str = "full"

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim {self.head_dim} must be even (complex RoPE pairs)")
    if len(self.patch_size) != 3:
      raise ValueError(f"patch_size must be (pt, ph, pw), got {self.patch_size}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def rope_dims(self) -> tuple[int, int, int]:
    """Real widths of the (f, h, w) RoPE sections: d - 4(d//6), 2(d//6), 2(d//6)."""
    d = self.head_dim
    return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))

  @property
  def patch_volume(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "LingBotConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["patch_size"] = list(self.patch_size)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LingBotConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown LingBot config fields {sorted(unknown)}")
    d = dict(d)
    if "patch_size" in d:
      d["patch_size"] = tuple(int(x) for x in d["patch_size"])
    return cls(**d)


# Reference constructor options that wc_jax implements only one way.
_REQUIRED = {"qk_norm": True, "cross_attn_norm": True, "window_size": [-1, -1]}
_MODEL_TYPES = ("i2v", "t2v")


def from_reference(kwargs: Mapping[str, Any], **overrides) -> LingBotConfig:
  """A LingBotConfig from the reference `WanModel` constructor kwargs (config.json)."""
  bad = {k: kwargs[k] for k, want in _REQUIRED.items() if k in kwargs and _norm(kwargs[k]) != _norm(want)}
  if kwargs.get("model_type", "i2v") not in _MODEL_TYPES:
    bad["model_type"] = kwargs["model_type"]
  if bad:
    raise ValueError(f"reference options not supported by wc_jax: {bad} (supported: "
                     f"{ {k: _REQUIRED.get(k, _MODEL_TYPES) for k in bad} })")
  cfg = dict(
      patch_size=tuple(int(p) for p in kwargs.get("patch_size", (1, 2, 2))),
      text_len=int(kwargs.get("text_len", 512)),
      in_dim=int(kwargs.get("in_dim", 16)),
      dim=int(kwargs["dim"]),
      ffn_dim=int(kwargs["ffn_dim"]),
      freq_dim=int(kwargs.get("freq_dim", 256)),
      text_dim=int(kwargs.get("text_dim", 4096)),
      out_dim=int(kwargs.get("out_dim", 16)),
      num_heads=int(kwargs["num_heads"]),
      num_layers=int(kwargs["num_layers"]),
      eps=float(kwargs.get("eps", 1e-6)),
  )
  cfg.update(overrides)
  return LingBotConfig(**cfg)


def to_reference(cfg: LingBotConfig) -> dict:
  """The reference constructor kwargs (config.json) for `cfg`."""
  return {
      "_class_name": "WanModel", "model_type": "i2v", "patch_size": list(cfg.patch_size),
      "text_len": cfg.text_len, "in_dim": cfg.in_dim, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
      "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim, "out_dim": cfg.out_dim, "num_heads": cfg.num_heads,
      "num_layers": cfg.num_layers, "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True,
      "eps": cfg.eps,
  }


def _norm(v):
  return list(v) if isinstance(v, (list, tuple)) else v


def from_config(model_cfg) -> LingBotConfig:
  """LingBotConfig from the `model` section of an ml_collections config (ignores checkpoint keys)."""
  d = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
  for k in ("checkpoint", "checkpoint_high", "checkpoint_low", "init"):
    d.pop(k, None)
  return LingBotConfig.from_dict(d)
