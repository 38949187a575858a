"""Depth Anything 3 architecture settings: the four presets and reading reference configs.

The presets follow the reference package's `configs/da3-{small,base,large,giant}.yaml`
(depth-anything-3 0.1.1) and the DINOv2 ViT sizes they name. A reference config is
either an HF checkpoint's `{"model_name": "da3-giant", ...}` or a dump with an
`architecture` section (as in tests/fixtures/rewards/da3_tiny/config.json).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# name -> (embed_dim, depth, num_heads, ffn)
VIT_SIZES = {
    "vits": (384, 12, 6, "mlp"),
    "vitb": (768, 12, 12, "mlp"),
    "vitl": (1024, 24, 16, "mlp"),
    "vitg": (1536, 40, 24, "swiglu"),
}

REF_VIEW_STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")


@dataclasses.dataclass(frozen=True)
class DA3Config:
  """Everything that fixes the parameter shapes and the forward pass of DepthAnything3Net."""
  # backbone (DINOv2 ViT with alternating attention)
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  ffn: str = "mlp"                      # "mlp" (GELU) or "swiglu" (ViT-g)
  patch_size: int = 14
  img_size: int = 518                   # sets the stored position table: (img_size/patch)^2 + 1
  out_layers: tuple[int, ...] = (5, 7, 9, 11)
  alt_start: int = 4                    # -1: no cross-view blocks, no camera token
  qknorm_start: int = 4                 # -1: no QK-norm
  rope_start: int = 4                   # -1: no RoPE
  rope_freq: float = 100.0
  cat_token: bool = True                # features = [local, global] -> 2*embed_dim
  init_values: float | None = 1.0       # LayerScale on (None: off)
  interpolate_offset: float = 0.1
  # DualDPT head
  head_features: int = 64
  head_out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
  head_output_dim: int = 2
  head_pos_embed: bool = True
  down_ratio: int = 1
  aux_pyramid_levels: int = 4
  aux_out1_conv_num: int = 5
  activation: str = "exp"
  conf_activation: str = "expp1"
  # camera decoder / encoder
  has_camera: bool = True
  cam_enc_depth: int = 4
  cam_enc_heads: int = 16
  cam_enc_mlp_ratio: float = 4.0
  cam_enc_init_values: float = 0.01
  # reference sub-modules with weights that wc_jax does not build (e.g. ViT-g's 3DGS head)
  ignored_prefixes: tuple[str, ...] = ()
  # numerics
  dtype: Any = jnp.float32              # backbone compute dtype (the reference autocasts it)
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
    if len(self.out_layers) != 4:
      raise ValueError(f"DualDPT needs exactly 4 out_layers, got {self.out_layers}")
    if any(not 0 <= i < self.depth for i in self.out_layers):
      raise ValueError(f"out_layers {self.out_layers} outside 0..{self.depth - 1}")
    if len(self.head_out_channels) != 4:
      raise ValueError(f"head_out_channels needs 4 entries, got {self.head_out_channels}")
    if self.ffn not in ("mlp", "swiglu"):
      raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
    if self.aux_out1_conv_num not in (1, 3, 5):
      raise ValueError(f"aux_out1_conv_num must be 1, 3 or 5, got {self.aux_out1_conv_num}")
    if not 1 <= self.aux_pyramid_levels <= 4:
      raise ValueError(f"aux_pyramid_levels must be 1..4, got {self.aux_pyramid_levels}")
    if self.has_camera and self.alt_start == -1:
      raise ValueError("a camera decoder needs the camera token, i.e. alt_start != -1")
    if self.rope_start != -1 and (self.embed_dim // self.num_heads) % 4:
      raise ValueError("2-D RoPE needs a head dim divisible by 4")

  @property
  def feature_dim(self) -> int:
    """Width of the features handed to the head and the camera decoder."""
    return 2 * self.embed_dim if self.cat_token else self.embed_dim

  @property
  def pos_grid(self) -> int:
    return self.img_size // self.patch_size

  def replace(self, **kw) -> "DA3Config":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    """JSON-able form (the `model_config` stored beside converted weights)."""
    d = dataclasses.asdict(self)
    d["dtype"] = jnp.dtype(self.dtype).name
    d["param_dtype"] = jnp.dtype(self.param_dtype).name
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "DA3Config":
    """Inverse of to_dict; also reads a converter's `model_config` (extra keys: torch_prefix)."""
    d = {k: v for k, v in d.items() if k not in ("torch_prefix",)}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown DA3Config fields {unknown}")
    for k in ("out_layers", "head_out_channels", "ignored_prefixes"):
      if k in d and d[k] is not None:
        d[k] = tuple(d[k])
    for k in ("dtype", "param_dtype"):
      if k in d and isinstance(d[k], str):
        d[k] = jnp.dtype(d[k])
    return cls(**d)


def _preset(vit: str, out_layers, alt_start, head_features, head_out_channels, **kw) -> DA3Config:
  dim, depth, heads, ffn = VIT_SIZES[vit]
  return DA3Config(embed_dim=dim, depth=depth, num_heads=heads, ffn=ffn, out_layers=tuple(out_layers),
                   alt_start=alt_start, qknorm_start=alt_start, rope_start=alt_start,
                   head_features=head_features, head_out_channels=tuple(head_out_channels), **kw)


PRESETS: dict[str, DA3Config] = {
    "da3-small": _preset("vits", (5, 7, 9, 11), 4, 64, (48, 96, 192, 384)),
    "da3-base": _preset("vitb", (5, 7, 9, 11), 4, 128, (96, 192, 384, 768)),
    "da3-large": _preset("vitl", (11, 15, 19, 23), 8, 256, (256, 512, 1024, 1024)),
    # The reference ViT-g preset also carries a 3DGS head (gs_head / gs_adapter), which
    # pose estimation never runs; its weights are skipped on conversion.
    "da3-giant": _preset("vitg", (19, 27, 33, 39), 13, 256, (256, 512, 1024, 1024),
                         ignored_prefixes=("gs_head.", "gs_adapter.")),
}
PRESET_ALIASES = {"small": "da3-small", "base": "da3-base", "large": "da3-large", "giant": "da3-giant"}


def preset(name: str) -> DA3Config:
  """da3-small / da3-base / da3-large / da3-giant (case-insensitive, `-1.1` suffix allowed)."""
  key = name.lower().split("/")[-1]
  key = key.removesuffix("-1.1")
  key = PRESET_ALIASES.get(key, key)
  if key not in PRESETS:
    raise ValueError(f"unknown DA3 preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[key]


def _from_architecture(arch: dict) -> DA3Config:
  bb = arch.get("backbone") or {}
  head = arch.get("head") or {}
  if bb.get("type", "DinoVisionTransformer") != "DinoVisionTransformer":
    raise ValueError(f"unsupported backbone type {bb.get('type')!r}")
  if head.get("type", "DualDPT") != "DualDPT":
    raise ValueError(f"unsupported head type {head.get('type')!r} (only DualDPT is implemented)")
  if int(bb.get("num_register_tokens", 0)):
    raise ValueError("register tokens are not supported (no DA3 preset uses them)")
  ffn = str(bb.get("ffn", "mlp")).lower()
  ffn = "swiglu" if "swiglu" in ffn else "mlp"
  cam_dec = arch.get("cam_dec")
  cam_enc = arch.get("cam_enc") or {}
  embed_dim = int(bb["embed_dim"])
  cfg = DA3Config(
      embed_dim=embed_dim,
      depth=int(bb["depth"]),
      num_heads=int(bb["num_heads"]),
      mlp_ratio=float(bb.get("mlp_ratio", 4)),
      ffn=ffn,
      patch_size=int(bb.get("patch_size", 14)),
      img_size=int(bb.get("img_size", 518)),
      out_layers=tuple(int(i) for i in bb["out_layers"]),
      alt_start=int(bb.get("alt_start", -1)),
      qknorm_start=int(bb.get("qknorm_start", -1)),
      rope_start=int(bb.get("rope_start", -1)),
      rope_freq=float(bb.get("rope_freq", 100)),
      cat_token=bool(bb.get("cat_token", True)),
      init_values=1.0 if bb.get("layerscale", True) else None,
      interpolate_offset=float(bb.get("interpolate_offset", 0.1)),
      head_features=int(head.get("features", 256)),
      head_out_channels=tuple(int(c) for c in head.get("out_channels", (256, 512, 1024, 1024))),
      head_output_dim=int(head.get("output_dim", 2)),
      head_pos_embed=bool(head.get("pos_embed", True)),
      down_ratio=int(head.get("down_ratio", 1)),
      aux_pyramid_levels=int(head.get("aux_pyramid_levels", 4)),
      aux_out1_conv_num=int(head.get("aux_out1_conv_num", 5)),
      activation=str(head.get("activation", "exp")),
      conf_activation=str(head.get("conf_activation", "expp1")),
      has_camera=cam_dec is not None,
      cam_enc_depth=int(cam_enc.get("trunk_depth", 4)),
      cam_enc_heads=int(cam_enc.get("num_heads", 16)),
      cam_enc_mlp_ratio=float(cam_enc.get("mlp_ratio", 4)),
      cam_enc_init_values=float(cam_enc.get("init_values", 0.01)),
      ignored_prefixes=tuple(p + "." for p in ("gs_head", "gs_adapter") if arch.get(p)),
  )
  want = cfg.feature_dim
  for part, key in ((head, "dim_in"), (cam_dec or {}, "dim_in")):
    if key in part and int(part[key]) != want:
      raise ValueError(f"{key}={part[key]} does not match the backbone feature width {want}")
  if cam_enc and int(cam_enc.get("dim_out", embed_dim)) != embed_dim:
    raise ValueError(f"cam_enc dim_out {cam_enc['dim_out']} != embed_dim {embed_dim}")
  return cfg


def from_reference_config(config: dict) -> DA3Config:
  """DA3Config from a reference config.json (HF `model_name` or an `architecture` dump)."""
  if not isinstance(config, dict):
    raise ValueError(f"a DA3 reference config is a dict, got {type(config).__name__}")
  if "architecture" in config:
    return _from_architecture(config["architecture"])
  name = config.get("model_name") or config.get("preset")
  if isinstance(name, str):
    if "nested" in name.lower():
      raise ValueError(f"{name!r} is a nested (two-network) DA3 model; convert its da3 branch alone")
    return preset(name)
  raise ValueError("not a DA3 config: expected 'architecture' or 'model_name', "
                   f"got keys {sorted(config)[:10]}")


def to_reference_config(cfg: DA3Config) -> dict:
  """A config.json for exported weights: the preset name if one matches, else an architecture dump."""
  base = cfg.replace(dtype=jnp.float32, param_dtype=jnp.float32)
  for name, p in PRESETS.items():
    if p == base:
      return {"model_name": name}
  return {"architecture": {
      "backbone": {
          "type": "DinoVisionTransformer", "img_size": cfg.img_size, "patch_size": cfg.patch_size,
          "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
          "mlp_ratio": cfg.mlp_ratio, "ffn": "swiglufused" if cfg.ffn == "swiglu" else "mlp(GELU)",
          "layerscale": cfg.init_values is not None, "qkv_bias": True, "num_register_tokens": 0,
          "alt_start": cfg.alt_start, "qknorm_start": cfg.qknorm_start, "rope_start": cfg.rope_start,
          "rope_freq": cfg.rope_freq, "cat_token": cfg.cat_token, "out_layers": list(cfg.out_layers),
          "interpolate_offset": cfg.interpolate_offset},
      "head": {
          "type": "DualDPT", "dim_in": cfg.feature_dim, "output_dim": cfg.head_output_dim,
          "features": cfg.head_features, "out_channels": list(cfg.head_out_channels),
          "pos_embed": cfg.head_pos_embed, "down_ratio": cfg.down_ratio,
          "aux_pyramid_levels": cfg.aux_pyramid_levels, "aux_out1_conv_num": cfg.aux_out1_conv_num,
          "activation": cfg.activation, "conf_activation": cfg.conf_activation},
      "cam_dec": {"type": "CameraDec", "dim_in": cfg.feature_dim} if cfg.has_camera else None,
      "cam_enc": {"type": "CameraEnc", "dim_out": cfg.embed_dim, "trunk_depth": cfg.cam_enc_depth,
                  "num_heads": cfg.cam_enc_heads, "mlp_ratio": cfg.cam_enc_mlp_ratio,
                  "init_values": cfg.cam_enc_init_values, "dim_in": 9} if cfg.has_camera else None,
  }}
