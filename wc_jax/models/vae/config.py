"""Configuration of the HunyuanVideo-1.5 causal 3-D VAE (AutoencoderKLConv3D).

The architecture fields mirror the reference constructor so that a reference
`config.json` (diffusers style, or a fixture's `constructor_kwargs`) maps onto
it one to one; `dtype`, `param_dtype` and `precision` are wc_jax runtime
choices and never go back into a reference config.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

# Names of the reference constructor arguments, in its order.
REFERENCE_FIELDS = (
    "in_channels", "out_channels", "latent_channels", "block_out_channels",
    "layers_per_block", "ffactor_spatial", "ffactor_temporal", "sample_size",
    "sample_tsize", "scaling_factor", "shift_factor", "downsample_match_channel",
    "upsample_match_channel")

REFERENCE_CLASS = "AutoencoderKLConv3D"

# Values of the cached causal convolution: every causal conv has a temporal
# kernel of 3, so it carries the last 2 input frames from one chunk to the next.
CACHE_FRAMES = 2
LOGVAR_RANGE = (-30.0, 20.0)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture (reference fields) plus runtime numerics of the VAE."""
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 32
  block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)
  layers_per_block: int = 2
  ffactor_spatial: int = 16
  ffactor_temporal: int = 4
  sample_size: int = 256
  sample_tsize: int = 64
  scaling_factor: float = 1.03682
  shift_factor: float | None = None
  downsample_match_channel: bool = True
  upsample_match_channel: bool = True
  # runtime (not part of the reference config)
  dtype: str = "float32"           # activations / compute
  param_dtype: str = "float32"     # stored parameters
  precision: str | None = None     # jax.lax.Precision name for convs and matmuls; None = backend default

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    self.validate()

  # ---------------------------------------------------------------- structure
  @property
  def num_levels(self) -> int:
    return len(self.block_out_channels)

  @property
  def n_spatial(self) -> int:
    """Number of 2x spatial resampling levels (log2 of the spatial factor)."""
    return int(round(math.log2(self.ffactor_spatial)))

  @property
  def n_temporal(self) -> int:
    """Number of 2x temporal resampling levels (log2 of the temporal factor)."""
    return int(round(math.log2(self.ffactor_temporal)))

  def encoder_levels(self) -> list[tuple[int, int, str | None]]:
    """(block channels, channels after the level, downsample kind) per encoder level.

    The kind is None, "spatial" (2x2) or "spatiotemporal" (2x2x2); as in the
    reference the temporal downsamples are the last ones before the middle.
    """
    out, block_in = [], self.block_out_channels[0]
    for i, ch in enumerate(self.block_out_channels):
      block_in = ch
      kind = None
      if i < self.n_spatial:
        kind = "spatiotemporal" if i >= self.n_spatial - self.n_temporal else "spatial"
        block_in = self.block_out_channels[i + 1] if self.downsample_match_channel else ch
      out.append((ch, block_in, kind))
    return out

  def decoder_levels(self) -> list[tuple[int, int, str | None]]:
    """(block channels, channels after the level, upsample kind) per decoder level.

    The decoder runs the reversed channel list; temporal upsampling comes first.
    """
    chans = tuple(reversed(self.block_out_channels))
    out = []
    for i, ch in enumerate(chans):
      block_in = ch
      kind = None
      if i < self.n_spatial or i < self.n_temporal:
        kind = "spatiotemporal" if i < self.n_temporal else "spatial"
        block_in = chans[i + 1] if self.upsample_match_channel else ch
      out.append((ch, block_in, kind))
    return out

  def validate(self) -> None:
    """Raises ValueError when the reference model could not be built either."""
    def need(cond, msg):
      if not cond:
        raise ValueError(f"invalid VAE config: {msg}")
    need(self.num_levels >= 1, "block_out_channels is empty")
    need(2 ** self.n_spatial == self.ffactor_spatial, f"ffactor_spatial {self.ffactor_spatial} is not a power of 2")
    need(2 ** self.n_temporal == self.ffactor_temporal,
         f"ffactor_temporal {self.ffactor_temporal} is not a power of 2")
    need(self.n_temporal <= self.n_spatial, "more temporal than spatial resampling levels")
    need(self.n_spatial < self.num_levels,
         f"ffactor_spatial {self.ffactor_spatial} needs more than {self.num_levels} levels")
    need(self.block_out_channels[-1] % (2 * self.latent_channels) == 0,
         f"block_out_channels[-1]={self.block_out_channels[-1]} must divide by 2*latent_channels")
    need(self.block_out_channels[-1] % self.latent_channels == 0,
         f"block_out_channels[-1]={self.block_out_channels[-1]} must divide by latent_channels")
    for cin, cout, kind in self.encoder_levels():
      if kind:
        f = 8 if kind == "spatiotemporal" else 4
        need(cout % f == 0 and (f * cin) % cout == 0,
             f"encoder downsample {cin}->{cout} channels does not fit a {kind} factor {f}")
        if kind == "spatiotemporal":
          need(((f * cin) // cout) % 2 == 0, f"encoder downsample {cin}->{cout} cannot take the first-frame path")
    for cin, cout, kind in self.decoder_levels():
      if kind:
        f = 8 if kind == "spatiotemporal" else 4
        need((f * cout) % cin == 0, f"decoder upsample {cin}->{cout} channels does not fit factor {f}")
        if kind == "spatiotemporal":
          need(cin % 8 == 0 and ((f * cout) // cin) % 2 == 0,
               f"decoder upsample {cin}->{cout} cannot take the first-frame path")

  # ---------------------------------------------------------------- conversion
  @classmethod
  def from_reference(cls, config: Mapping[str, Any], **runtime) -> "VAEConfig":
    """Builds the config from a reference config.json.

    Accepts the diffusers layout (fields at the top level, `_class_name`) and
    the fixture layout (`constructor_kwargs`). Keys starting with "_" and
    unknown keys are ignored; they stay in the reference config kept beside a
    converted checkpoint.
    """
    fields = config.get("constructor_kwargs", config)
    kwargs = {k: fields[k] for k in REFERENCE_FIELDS if k in fields}
    missing = [k for k in ("latent_channels", "block_out_channels") if k not in kwargs]
    if missing:
      raise ValueError(f"VAE config lacks {missing}; has {sorted(fields)[:20]}")
    kwargs.update(runtime)
    return cls(**kwargs)

  def to_reference(self) -> dict:
    """The diffusers-style config.json of the reference model."""
    out = {"_class_name": REFERENCE_CLASS}
    for k in REFERENCE_FIELDS:
      v = getattr(self, k)
      out[k] = list(v) if isinstance(v, tuple) else v
    return out

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["block_out_channels"] = list(self.block_out_channels)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **override) -> "VAEConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw.update(override)
    return cls(**kw)

  def replace(self, **kw) -> "VAEConfig":
    return dataclasses.replace(self, **kw)


def is_reference_vae_config(config: Mapping[str, Any]) -> bool:
  """True for a reference AutoencoderKLConv3D config (diffusers or fixture layout)."""
  if not isinstance(config, Mapping):
    return False
  for key in ("model_class", "_class_name"):
    if REFERENCE_CLASS in str(config.get(key, "")):
      return True
  fields = config.get("constructor_kwargs", config)
  return isinstance(fields, Mapping) and all(
      k in fields for k in ("block_out_channels", "latent_channels", "ffactor_spatial", "ffactor_temporal"))
