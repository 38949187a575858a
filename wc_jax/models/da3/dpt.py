"""DualDPT: the DA3 dense head giving depth (+ confidence) and rays (+ confidence).

Four backbone features are projected, brought to strides x4, x2, x1, /2 of the
patch grid, and fused top-down by two independent RefineNet chains: the main one
ends in depth at full input resolution, the auxiliary one in a 7-channel ray map
at 8x the patch grid. All maps are NHWC.

The reference shares one LayerNorm module between the four auxiliary output stacks;
wc_jax keeps that single LayerNorm (`scratch.output_conv2_aux_norm`) and the
converter writes it under each of the four reference keys. The auxiliary stacks
of the coarser levels are built (their weights are in every checkpoint) but, as in
the reference output, only the finest level is evaluated.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.da3.config import DA3Config
from wc_jax.models.da3.layers import Conv2d, Keys, LayerNorm, PatchConvTranspose2d, as_keys

Array = jax.Array

HEAD_FEATURES_2 = 32   # fixed width of the last conv stacks in the reference
POS_EMBED_RATIO = 0.1


@functools.lru_cache(maxsize=256)
def linear_align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix of 1-D linear resampling with align_corners=True."""
  m = np.zeros((n_out, n_in), np.float64)
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for i in range(n_out):
    src = i * scale
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    t = src - i0
    m[i, i0] += 1.0 - t
    m[i, i1] += t
  return m


def resize_bilinear_ac(x: Array, size: tuple[int, int]) -> Array:
  """Bilinear resize with align_corners=True of NHWC maps (separable, as two matmuls)."""
  _, h, w, _ = x.shape
  oh, ow = int(size[0]), int(size[1])
  if (oh, ow) == (h, w):
    return x
  ay = jnp.asarray(linear_align_corners_matrix(h, oh), x.dtype)
  ax = jnp.asarray(linear_align_corners_matrix(w, ow), x.dtype)
  x = jnp.einsum("oh,nhwc->nowc", ay, x)
  return jnp.einsum("pw,nowc->nopc", ax, x)


@functools.lru_cache(maxsize=256)
def uv_pos_embed(h: int, w: int, channels: int, aspect_ratio: float) -> np.ndarray:
  """[h, w, channels] sinusoidal embedding of a UV grid normalised by the image diagonal.

  Channel layout: [sin(u ω), cos(u ω), sin(v ω), cos(v ω)], ω = 100^(-k/(C/4)).
  """
  diag = (aspect_ratio ** 2 + 1.0) ** 0.5
  span_x, span_y = aspect_ratio / diag, 1.0 / diag
  xs = np.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, dtype=np.float32)
  ys = np.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, dtype=np.float32)
  uu, vv = np.meshgrid(xs, ys, indexing="xy")            # [h, w]
  quarter = channels // 4
  omega = np.arange(quarter, dtype=np.float32) / np.float32(quarter)
  omega = (1.0 / (np.float32(100.0) ** omega)).astype(np.float32)

  def enc(p):
    ang = p.reshape(-1, 1).astype(np.float32) * omega[None]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)

  emb = np.concatenate([enc(uu), enc(vv)], axis=1).reshape(h, w, -1)
  if emb.shape[-1] != channels:
    raise ValueError(f"the DPT position embedding needs channels divisible by 4, got {channels}")
  return (emb * np.float32(POS_EMBED_RATIO)).astype(np.float32)


def activate(x: Array, kind: str) -> Array:
  kind = kind.lower()
  if kind == "exp":
    return jnp.exp(x)
  if kind == "expm1":
    return jnp.expm1(x)
  if kind == "expp1":
    return jnp.exp(x) + 1
  if kind == "relu":
    return jax.nn.relu(x)
  if kind == "sigmoid":
    return jax.nn.sigmoid(x)
  if kind == "softplus":
    return jax.nn.softplus(x)
  if kind == "tanh":
    return jnp.tanh(x)
  return x


class ResidualConvUnit(nnx.Module):
  def __init__(self, features: int, *, rngs: Keys):
    self.conv1 = Conv2d(features, features, 3, rngs=rngs, padding=1)
    self.conv2 = Conv2d(features, features, 3, rngs=rngs, padding=1)

  def __call__(self, x: Array) -> Array:
    y = self.conv1(jax.nn.relu(x))
    y = self.conv2(jax.nn.relu(y))
    return y + x


class FusionBlock(nnx.Module):
  """(lateral residual) -> residual unit -> bilinear upsample -> 1x1 conv."""

  def __init__(self, features: int, *, rngs: Keys, has_residual: bool = True):
    self.resConfUnit1 = ResidualConvUnit(features, rngs=rngs) if has_residual else None
    self.resConfUnit2 = ResidualConvUnit(features, rngs=rngs)
    self.out_conv = Conv2d(features, features, 1, rngs=rngs)

  def __call__(self, x: Array, lateral: Array | None = None, size=None) -> Array:
    if lateral is not None and self.resConfUnit1 is not None:
      x = x + self.resConfUnit1(lateral)
    x = self.resConfUnit2(x)
    if size is None:
      size = (int(x.shape[1] * 2), int(x.shape[2] * 2))
    x = resize_bilinear_ac(x, size)
    return self.out_conv(x)


class Scratch(nnx.Module):
  """Stage adapters, both fusion chains and the output stacks (reference `head.scratch`)."""

  def __init__(self, cfg: DA3Config, *, rngs: Keys):
    f = cfg.head_features
    oc = cfg.head_out_channels
    for i in range(4):
      setattr(self, f"layer{i + 1}_rn", Conv2d(oc[i], f, 3, rngs=rngs, padding=1, use_bias=False))
    for suffix in ("", "_aux"):
      for i in range(1, 5):
        setattr(self, f"refinenet{i}{suffix}", FusionBlock(f, rngs=rngs, has_residual=i != 4))
    self.output_conv1 = Conv2d(f, f // 2, 3, rngs=rngs, padding=1)
    self.output_conv2 = nnx.List([
        Conv2d(f // 2, HEAD_FEATURES_2, 3, rngs=rngs, padding=1), None,
        Conv2d(HEAD_FEATURES_2, cfg.head_output_dim, 1, rngs=rngs)])

    def out1_stack():
      widths = {5: [f // 2, f, f // 2, f, f // 2], 3: [f // 2, f, f // 2], 1: [f // 2]}
      convs, cin = [], f
      for cout in widths[cfg.aux_out1_conv_num]:
        convs.append(Conv2d(cin, cout, 3, rngs=rngs, padding=1))
        cin = cout
      return nnx.List(convs)

    self.output_conv1_aux = nnx.List([out1_stack() for _ in range(cfg.aux_pyramid_levels)])
    # reference Sequential: conv, Permute, LayerNorm (shared), Permute, ReLU, conv
    self.output_conv2_aux = nnx.List([
        nnx.List([Conv2d(f // 2, HEAD_FEATURES_2, 3, rngs=rngs, padding=1), None, None, None, None,
                  Conv2d(HEAD_FEATURES_2, 7, 1, rngs=rngs)])
        for _ in range(cfg.aux_pyramid_levels)])
    self.output_conv2_aux_norm = LayerNorm(HEAD_FEATURES_2, rngs=rngs, eps=1e-5)


class DualDPT(nnx.Module):
  """Depth + ray head over the four backbone features."""

  def __init__(self, cfg: DA3Config, *, rngs: Keys | int):
    rngs = as_keys(rngs)
    oc = cfg.head_out_channels
    dim_in = cfg.feature_dim
    self.cfg = cfg
    self.norm = LayerNorm(dim_in, rngs=rngs, eps=1e-5)
    self.projects = nnx.List([Conv2d(dim_in, c, 1, rngs=rngs) for c in oc])
    self.resize_layers = nnx.List([
        PatchConvTranspose2d(oc[0], oc[0], 4, rngs=rngs),
        PatchConvTranspose2d(oc[1], oc[1], 2, rngs=rngs),
        None,
        Conv2d(oc[3], oc[3], 3, rngs=rngs, stride=2, padding=1)])
    self.scratch = Scratch(cfg, rngs=rngs)

  def _pos(self, x: Array, height: int, width: int) -> Array:
    if not self.cfg.head_pos_embed:
      return x
    _, h, w, c = x.shape
    return x + jnp.asarray(uv_pos_embed(h, w, c, width / height), x.dtype)[None]

  def __call__(self, feats: list[Array], height: int, width: int) -> dict[str, Array]:
    """feats: 4 x [N, ph*pw, C] patch tokens -> depth [N,H,W], depth_conf, ray [N,h,w,6], ray_conf."""
    cfg = self.cfg
    p = cfg.patch_size
    ph, pw = height // p, width // p
    sc = self.scratch
    levels = []
    for i in range(4):
      x = feats[i].astype(jnp.float32)
      x = self.norm(x).reshape(x.shape[0], ph, pw, -1)
      x = self._pos(self.projects[i](x), height, width)
      if self.resize_layers[i] is not None:
        x = self.resize_layers[i](x)
      levels.append(x)
    l1, l2, l3, l4 = (getattr(sc, f"layer{i + 1}_rn")(levels[i]) for i in range(4))

    out = sc.refinenet4(l4, size=l3.shape[1:3])
    aux = sc.refinenet4_aux(l4, size=l3.shape[1:3])
    out = sc.refinenet3(out, l3, size=l2.shape[1:3])
    aux = sc.refinenet3_aux(aux, l3, size=l2.shape[1:3])
    out = sc.refinenet2(out, l2, size=l1.shape[1:3])
    aux = sc.refinenet2_aux(aux, l2, size=l1.shape[1:3])
    out = sc.refinenet1(out, l1)
    aux = sc.refinenet1_aux(aux, l1)

    out = sc.output_conv1(out)
    h_out, w_out = int(ph * p / cfg.down_ratio), int(pw * p / cfg.down_ratio)
    out = self._pos(resize_bilinear_ac(out, (h_out, w_out)), height, width)
    out = sc.output_conv2[2](jax.nn.relu(sc.output_conv2[0](out)))
    depth = activate(out[..., :-1], cfg.activation)
    if depth.shape[-1] == 1:
      depth = depth[..., 0]
    depth_conf = activate(out[..., -1], cfg.conf_activation)

    last = len(sc.output_conv1_aux) - 1
    for conv in sc.output_conv1_aux[last]:
      aux = conv(aux)
    aux = self._pos(aux, height, width)
    stack = sc.output_conv2_aux[last]
    aux = stack[5](jax.nn.relu(sc.output_conv2_aux_norm(stack[0](aux))))
    return {"depth": depth, "depth_conf": depth_conf,
            "ray": aux[..., :-1], "ray_conf": activate(aux[..., -1], cfg.conf_activation)}
