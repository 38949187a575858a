"""Configuration of the Wan2.1 causal 3-D VAE (the VAE LingBot-World uses).

The architecture fields are the reference constructor's (`WanVAE_(dim, z_dim,
dim_mult, num_res_blocks, attn_scales, temperal_downsample, dropout)`, keeping
its spelling "temperal"), so a fixture's `constructor_kwargs` maps onto it one
to one. `latents_mean` / `latents_std` are the per-channel constants the
released wrapper (`Wan2_1_VAE`) normalises latents with; `dtype`,
`param_dtype` and `precision` are wc_jax runtime choices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

REFERENCE_FIELDS = ("dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample",
                    "dropout")
REFERENCE_CLASS = "WanVAE_"
FIXTURE_KIND = "lingbot_vae"

# Every temporal-kernel-3 causal conv carries the last 2 input frames to the next chunk.
CACHE_FRAMES = 2

# The released 16-channel constants (Wan2_1_VAE.__init__).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """Architecture (reference fields, released defaults) plus latent constants and numerics."""
  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  dropout: float = 0.0
  # None: the released constants' first z_dim entries (the tiny fixtures use exactly that)
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  # runtime (not part of the reference config)
  dtype: str = "float32"
  param_dtype: str = "float32"
  precision: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
    object.__setattr__(self, "attn_scales", tuple(float(s) for s in self.attn_scales))
    object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
    for name, default in (("latents_mean", WAN21_LATENTS_MEAN), ("latents_std", WAN21_LATENTS_STD)):
      v = getattr(self, name)
      if v is None and self.z_dim <= len(default):
        v = default[:self.z_dim]
      object.__setattr__(self, name, None if v is None else tuple(float(x) for x in v))
    self.validate()

  # ---------------------------------------------------------------- structure
  @property
  def in_channels(self) -> int:
    return 3

  @property
  def temporal_stride(self) -> int:
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_stride(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temperal_upsample(self) -> tuple[bool, ...]:
    return self.temperal_downsample[::-1]

  def encoder_dims(self) -> list[int]:
    return [self.dim * m for m in (1,) + self.dim_mult]

  def decoder_dims(self) -> list[int]:
    return [self.dim * m for m in (self.dim_mult[-1],) + self.dim_mult[::-1]]

  def validate(self) -> None:
    """Raises ValueError when the reference model could not be built either."""
    def need(cond, msg):
      if not cond:
        raise ValueError(f"invalid Wan VAE config: {msg}")
    need(self.dim >= 1 and self.z_dim >= 1, f"dim={self.dim}, z_dim={self.z_dim} must be positive")
    need(len(self.dim_mult) >= 2, f"dim_mult {self.dim_mult} needs at least 2 levels")
    need(len(self.temperal_downsample) == len(self.dim_mult) - 1,
         f"temperal_downsample {self.temperal_downsample} needs {len(self.dim_mult) - 1} entries "
         f"(one per downsample of dim_mult {self.dim_mult})")
    need(self.num_res_blocks >= 1, f"num_res_blocks={self.num_res_blocks}")
    for d in self.decoder_dims()[1:-1]:
      need(d % 2 == 0, f"decoder width {d} must be even (each upsample halves the channels)")
    for name in ("latents_mean", "latents_std"):
      v = getattr(self, name)
      need(v is not None, f"{name} must be given for z_dim={self.z_dim} (the released constants have 16)")
      need(len(v) == self.z_dim, f"{name} has {len(v)} entries, z_dim is {self.z_dim}")
    need(all(s != 0 for s in self.latents_std), "latents_std has a zero")

  # ---------------------------------------------------------------- conversion
  @classmethod
  def from_reference(cls, config: Mapping[str, Any] | None = None, **runtime) -> "WanVAEConfig":
    """From a fixture config.json (`constructor_kwargs`) or a flat dict of constructor fields;
    None or {} gives the released model. Unknown keys are ignored."""
    config = dict(config or {})
    fields = config.get("constructor_kwargs", config)
    kwargs = {k: fields[k] for k in REFERENCE_FIELDS if k in fields}
    for k in ("latents_mean", "latents_std"):
      if k in fields:
        kwargs[k] = fields[k]
    kwargs.update(runtime)
    return cls(**kwargs)

  def to_reference(self) -> dict:
    """Constructor kwargs of the reference model (+ the latent constants)."""
    out = {"_class_name": REFERENCE_CLASS}
    for k in REFERENCE_FIELDS + ("latents_mean", "latents_std"):
      v = getattr(self, k)
      out[k] = list(v) if isinstance(v, tuple) else v
    return out

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **override) -> "WanVAEConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw.update(override)
    return cls(**kw)

  def replace(self, **kw) -> "WanVAEConfig":
    return dataclasses.replace(self, **kw)


def is_reference_wan_vae_config(config: Mapping[str, Any]) -> bool:
  """True for a Wan2.1 VAE fixture / reference config (by kind or class name)."""
  if not isinstance(config, Mapping):
    return False
  if config.get("kind") == FIXTURE_KIND:
    return True
  return any(REFERENCE_CLASS in str(config.get(k, "")) for k in ("model_class", "_class_name"))
