"""The Wan2.1 causal 3-D VAE (z16, stride (4, 8, 8)) of LingBot-World in Flax NNX.

Public tensors use the reference layout: video [B, 3, T, H, W] in [-1, 1],
latents [B, z, T', H/8, W/8] with T = 1 + 4(T' - 1). Inside, activations are
channels-last.

`encode` returns the normalised posterior mean, (mu - mean) / std, which is
what the released wrapper hands the DiT; `decode` undoes it. Both replay the
reference's schedule by default: the encoder sees frame 0, then chunks of 4
frames; the decoder sees one latent frame per call; every call carries the
cache of the one before, so memory does not grow with the video's length.
`chunk_latents=n` runs n latent frames per call, `None` the whole video in one
call; all give the same numbers up to float rounding.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.wan_vae.config import WanVAEConfig
from wc_jax.models.wan_vae.layers import (AttentionBlock, CausalConv3d, Conv, ResidualBlock, Resample, RMSNorm,
                                          shard_activation)
from wc_jax.sharding import state_shardings


# ---------------------------------------------------------------------------- modules
def _run_list(layers, h, cache):
  """Runs an nnx.List of blocks, each (x, cache) -> (x, cache); caches keyed by index."""
  old = cache or {}
  new = {}
  for i, layer in enumerate(layers):
    h, c = layer(h, old.get(str(i)))
    if c is not None:
      new[str(i)] = c
  return h, new


class Encoder3d(nnx.Module):
  """Video [B, T, H, W, 3] -> [B, T', H/8, W/8, 2z] (posterior mean | logvar before `conv1`).

  `downsamples` and `middle` are indexed as the reference's nn.Sequential, so
  parameter paths map onto its state-dict keys.
  """

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, rngs=rngs)
    dims = cfg.encoder_dims()
    self.conv1 = CausalConv3d(cfg.in_channels, dims[0], **kw)
    blocks, scale = [], 1.0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(cin, cout, **kw))
        if scale in cfg.attn_scales:
          blocks.append(AttentionBlock(cout, **kw))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
        blocks.append(Resample(cout, mode, **kw))
        scale /= 2.0
    self.downsamples = nnx.List(blocks)
    out = dims[-1]
    self.middle = nnx.List([ResidualBlock(out, out, **kw), AttentionBlock(out, **kw), ResidualBlock(out, out, **kw)])
    self.head_norm = RMSNorm(out, **kw)
    self.head_conv = CausalConv3d(out, 2 * cfg.z_dim, **kw)

  def __call__(self, x: jax.Array, cache: dict | None = None):
    c = cache or {}
    new = {}
    h, new["conv1"] = self.conv1(x, c.get("conv1"))
    h, new["downsamples"] = _run_list(self.downsamples, h, c.get("downsamples"))
    h, new["middle"] = _run_list(self.middle, h, c.get("middle"))
    h, new["head"] = self.head_conv(jax.nn.silu(self.head_norm(h)), c.get("head"))
    return h, new


class Decoder3d(nnx.Module):
  """[B, T', h, w, z] (after `conv2`) -> video [B, 1+4(T'-1), 8h, 8w, 3] at the start of a video."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, rngs=rngs)
    dims = cfg.decoder_dims()
    scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
    self.conv1 = CausalConv3d(cfg.z_dim, dims[0], **kw)
    self.middle = nnx.List([ResidualBlock(dims[0], dims[0], **kw), AttentionBlock(dims[0], **kw),
                            ResidualBlock(dims[0], dims[0], **kw)])
    blocks = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      if i > 0:           # every upsample before this level halved the channels
        cin //= 2
      for _ in range(cfg.num_res_blocks + 1):
        blocks.append(ResidualBlock(cin, cout, **kw))
        if scale in cfg.attn_scales:
          blocks.append(AttentionBlock(cout, **kw))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "upsample3d" if cfg.temperal_upsample[i] else "upsample2d"
        blocks.append(Resample(cout, mode, **kw))
        scale *= 2.0
    self.upsamples = nnx.List(blocks)
    self.head_norm = RMSNorm(dims[-1], **kw)
    self.head_conv = CausalConv3d(dims[-1], 3, **kw)

  def __call__(self, x: jax.Array, cache: dict | None = None):
    c = cache or {}
    new = {}
    h, new["conv1"] = self.conv1(x, c.get("conv1"))
    h, new["middle"] = _run_list(self.middle, h, c.get("middle"))
    h, new["upsamples"] = _run_list(self.upsamples, h, c.get("upsamples"))
    h, new["head"] = self.head_conv(jax.nn.silu(self.head_norm(h)), c.get("head"))
    return h, new


class WanVAE(nnx.Module):
  """Encoder, decoder and the two 1x1x1 convs around the latent; paths mirror the reference keys."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, rngs=rngs)
    self.config = cfg
    self.encoder = Encoder3d(cfg, rngs=rngs)
    self.conv1 = Conv(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), **kw)
    self.conv2 = Conv(cfg.z_dim, cfg.z_dim, (1, 1, 1), **kw)
    self.decoder = Decoder3d(cfg, rngs=rngs)


# ---------------------------------------------------------------------------- input checks
def _expect(cond: bool, msg: str):
  if not cond:
    raise ValueError(msg)


def check_video(cfg: WanVAEConfig, video, start: bool = True) -> None:
  """Raises ValueError naming the expected shape when `video` cannot be encoded."""
  ft, fs = cfg.temporal_stride, cfg.spatial_stride
  frames = f"1+{ft}k" if start else f"{ft}k (k >= 1)"
  want = f"video [B, {cfg.in_channels}, {frames} frames, H, W] (H, W multiples of {fs}), floating point in [-1, 1]"
  shape = tuple(getattr(video, "shape", ()))
  dtype = getattr(video, "dtype", None)
  _expect(dtype is not None and jnp.issubdtype(dtype, jnp.floating), f"expected a {want}; got dtype {dtype}")
  _expect(len(shape) == 5, f"expected a {want}; got shape {shape}")
  _, ch, t, h, w = shape
  _expect(ch == cfg.in_channels, f"expected a {want}; got {ch} channels in shape {shape}")
  ok_t = (t >= 1 and (t - 1) % ft == 0) if start else (t >= ft and t % ft == 0)
  _expect(ok_t, f"expected a {want}; got {t} frames in shape {shape}")
  _expect(h > 0 and w > 0 and h % fs == 0 and w % fs == 0,
          f"expected a {want}; got H, W = {h}, {w} in shape {shape}")


def check_latents(cfg: WanVAEConfig, z) -> None:
  """Raises ValueError naming the expected shape when `z` cannot be decoded."""
  want = f"latents [B, {cfg.z_dim}, T', h, w], floating point"
  shape = tuple(getattr(z, "shape", ()))
  dtype = getattr(z, "dtype", None)
  _expect(dtype is not None and jnp.issubdtype(dtype, jnp.floating), f"expected {want}; got dtype {dtype}")
  _expect(len(shape) == 5, f"expected {want}; got shape {shape}")
  _expect(shape[1] == cfg.z_dim, f"expected {want}; got {shape[1]} channels in shape {shape}")
  _expect(min(shape) > 0, f"expected {want}; got an empty shape {shape}")


# ---------------------------------------------------------------------------- latent normalisation
def _consts(cfg: WanVAEConfig):
  mean = jnp.asarray(np.asarray(cfg.latents_mean, np.float32)).reshape(1, -1, 1, 1, 1)
  inv_std = jnp.asarray(1.0 / np.asarray(cfg.latents_std, np.float32)).reshape(1, -1, 1, 1, 1)
  return mean, inv_std


def normalize_latents(cfg: WanVAEConfig, mu):
  """Encoder mean -> DiT latents: (mu - mean) * (1 / std), as the reference multiplies."""
  mean, inv_std = _consts(cfg)
  return (mu - mean.astype(mu.dtype)) * inv_std.astype(mu.dtype)


def denormalize_latents(cfg: WanVAEConfig, z):
  """DiT latents -> decoder input: z / (1 / std) + mean."""
  mean, inv_std = _consts(cfg)
  return z / inv_std.astype(z.dtype) + mean.astype(z.dtype)


# ---------------------------------------------------------------------------- steps
def _to_cl(x):
  return jnp.moveaxis(x, 1, -1)


def _to_cf(x):
  return jnp.moveaxis(x, -1, 1)


@nnx.jit
def _encode_step(model: WanVAE, video: jax.Array, cache):
  x = shard_activation(_to_cl(video).astype(jnp.dtype(model.config.dtype)))
  h, cache = model.encoder(x, cache)
  return _to_cf(h), cache


@nnx.jit
def _posterior(model: WanVAE, encoder_out: jax.Array):
  return _to_cf(model.conv1(_to_cl(encoder_out)))


@nnx.jit
def _decode_step(model: WanVAE, z: jax.Array, cache):
  """Normalised latents -> frames; the normalisation and `conv2` are per frame, so they
  run per chunk here (the reference runs them on all latents first)."""
  x = denormalize_latents(model.config, z.astype(jnp.dtype(model.config.dtype)))
  x = shard_activation(model.conv2(_to_cl(x)))
  h, cache = model.decoder(x, cache)
  return _to_cf(h), cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Encoded:
  """Everything the encoder computes, all [B, C, T', h, w].

  `encoder_out` is the input of `conv1`, `posterior` its output (mean | logvar);
  `latents` the normalised mean, which is all the reference's encode returns.
  """
  encoder_out: jax.Array
  posterior: jax.Array
  latents: jax.Array

  @property
  def mu(self) -> jax.Array:
    return jnp.split(self.posterior, 2, axis=1)[0]

  @property
  def logvar(self) -> jax.Array:
    """Raw (the reference neither clamps nor uses it in encode)."""
    return jnp.split(self.posterior, 2, axis=1)[1]


def _frame_bounds(t: int, first: int, step: int) -> list[int]:
  return [0] + list(range(min(first, t), t, step)) + [t]


def encode_chunk(model: WanVAE, video, cache=None):
  """Runs the encoder on frames [B, 3, t, H, W] that follow `cache` (None: start of the video).

  Returns (encoder output [B, 2z, t', H/8, W/8], cache); t = 1+4k at the start, 4k after.
  """
  check_video(model.config, video, start=cache is None)
  return _encode_step(model, jnp.asarray(video), cache)


def encode_all(model: WanVAE, video, chunk_latents: int | None = 1, cache=None,
               return_cache: bool = False):
  """Encodes a video [B, 3, 1+4k, H, W]; returns `Encoded` (and the cache if asked).

  chunk_latents=1 is the reference's schedule (frame 0, then 4 frames per call).
  """
  cfg = model.config
  check_video(cfg, video, start=cache is None)
  video = jnp.asarray(video)
  ft, t = cfg.temporal_stride, video.shape[2]
  if chunk_latents is None:
    bounds = [0, t]
  else:
    _expect(chunk_latents >= 1, f"chunk_latents must be >= 1, got {chunk_latents}")
    first = 1 + ft * (chunk_latents - 1) if cache is None else ft * chunk_latents
    bounds = _frame_bounds(t, first, ft * chunk_latents)
  parts = []
  for a, b in zip(bounds[:-1], bounds[1:]):
    out, cache = _encode_step(model, video[:, :, a:b], cache)
    parts.append(out)
  enc = jnp.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
  post = _posterior(model, enc)
  result = Encoded(enc, post, normalize_latents(cfg, jnp.split(post, 2, axis=1)[0]))
  return (result, cache) if return_cache else result


def encode(model: WanVAE, video, chunk_latents: int | None = 1):
  """Video [B, 3, 1+4k, H, W] in [-1, 1] -> normalised latents [B, z, 1+k, H/8, W/8]
  (the reference `Wan2_1_VAE.encode`, batched)."""
  return encode_all(model, video, chunk_latents).latents


def decode_chunk(model: WanVAE, z, cache=None):
  """Decodes normalised latents [B, z, t', h, w] that follow `cache` (None: start of the video).

  Returns (raw video [B, 3, t, 8h, 8w], cache) with t = 1+4(t'-1) at the start, 4t' after.
  """
  check_latents(model.config, z)
  return _decode_step(model, jnp.asarray(z), cache)


def decode(model: WanVAE, z, chunk_latents: int | None = 1, clamp: bool = True, cache=None,
           return_cache: bool = False):
  """Normalised latents [B, z, T', h, w] -> video [B, 3, 1+4(T'-1), 8h, 8w].

  clamp=True clips to [-1, 1] as `Wan2_1_VAE.decode` does; False gives the raw
  `WanVAE_.decode`. chunk_latents=1 (default) is the reference's schedule.
  """
  check_latents(model.config, z)
  z = jnp.asarray(z)
  t = z.shape[2]
  step = t if chunk_latents is None else chunk_latents
  _expect(step >= 1, f"chunk_latents must be >= 1, got {chunk_latents}")
  parts = []
  for a in range(0, t, step):
    out, cache = _decode_step(model, z[:, :, a:a + step], cache)
    parts.append(out)
  video = jnp.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
  if clamp:
    video = jnp.clip(video, -1.0, 1.0)
  return (video, cache) if return_cache else video


# ---------------------------------------------------------------------------- spatial tiling
def _blend(a, b, extent: int, axis: int):
  """b's first `extent` entries along `axis` fade in linearly from a's last ones."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  a_tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
  b_head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
  shape = [1] * b.ndim
  shape[axis] = extent
  w = (jnp.arange(extent, dtype=jnp.float32) / extent).astype(b.dtype).reshape(shape)
  head = a_tail * (1 - w) + b_head * w
  return jnp.concatenate([head, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis=axis)


def tiled_decode(model: WanVAE, z, tile_latent: int = 32, overlap: float = 0.25,
                 chunk_latents: int | None = 1, clamp: bool = True):
  """Decodes large frames tile by tile (each with the full causal schedule) and blends seams.

  Not in the reference: Wan2.1's VAE decodes whole frames. This is a wc_jax
  memory option: tiles of `tile_latent` latents, taken every
  tile*(1-overlap) latents, each fading into its upper and left neighbours
  over tile*8*overlap pixels. Frames of one tile or less give `decode` exactly;
  larger ones differ from it near the seams (the decoder's receptive field
  crosses them), so parity checks use `decode`.
  """
  cfg = model.config
  check_latents(cfg, z)
  z = jnp.asarray(z)
  fs = cfg.spatial_stride
  stride = int(tile_latent * (1 - overlap))
  _expect(tile_latent >= 1 and stride >= 1, f"tile_latent={tile_latent} with overlap={overlap} gives no stride")
  hh, ww = z.shape[-2:]
  if hh <= tile_latent and ww <= tile_latent:
    return decode(model, z, chunk_latents=chunk_latents, clamp=clamp)
  extent = (tile_latent - stride) * fs     # a tile's overlap with the next one, in pixels
  limit = stride * fs
  rows = []
  for i in range(0, hh, stride):
    row = []
    for j in range(0, ww, stride):
      t = decode(model, z[..., i:i + tile_latent, j:j + tile_latent], chunk_latents=chunk_latents, clamp=False)
      if rows:
        t = _blend(rows[-1][len(row)], t, extent, axis=-2)
      if row:
        t = _blend(row[-1], t, extent, axis=-1)
      row.append(t)
      if j + tile_latent >= ww:
        break
    rows.append(row)
    if i + tile_latent >= hh:
      break
  def crop(t, last_i, last_j):
    t = t if last_i else t[..., :limit, :]
    return t if last_j else t[..., :limit]
  out = jnp.concatenate(
      [jnp.concatenate([crop(t, ri == len(rows) - 1, ci == len(r) - 1) for ci, t in enumerate(r)], axis=-1)
       for ri, r in enumerate(rows)], axis=-2)
  return jnp.clip(out, -1.0, 1.0) if clamp else out


# ---------------------------------------------------------------------------- building / params
def init_model(cfg: WanVAEConfig, seed: int = 0) -> WanVAE:
  """A randomly initialised VAE (torch-default-like uniform init)."""
  return WanVAE(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: WanVAEConfig) -> WanVAE:
  """The model with ShapeDtypeStructs instead of arrays (nothing allocated)."""
  return nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))


def param_shardings(model: WanVAE, mesh) -> nnx.State:
  """NamedShardings for nnx.state(model, nnx.Param), from each parameter's logical names."""
  return state_shardings(nnx.state(model, nnx.Param), mesh)


def shard_model(model: WanVAE, mesh) -> WanVAE:
  """Places every parameter on `mesh` by its logical names (in place)."""
  shardings = param_shardings(model, mesh)
  state = nnx.state(model, nnx.Param)
  placed = jax.tree.map(lambda v, s: jax.device_put(v.get_value(), s), state, shardings,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
  nnx.update(model, placed)
  return model


def param_shapes(cfg: WanVAEConfig) -> dict[str, tuple[int, ...]]:
  """wc_jax parameter path ("encoder/downsamples/3/conv1/conv/kernel") -> shape, without allocating."""
  state = nnx.state(abstract_model(cfg), nnx.Param)
  return {"/".join(map(str, k)): tuple(v.get_value().shape) for k, v in nnx.to_flat_state(state)}


def params_of(model: WanVAE) -> dict:
  """The parameters as a nested dict with string keys (the converter's layout)."""
  return _stringify(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def model_from_params(cfg: WanVAEConfig, params: Mapping) -> WanVAE:
  """Builds the module from `cfg` and puts `params` (nested dict, converter layout) in it.

  Nothing is initialised first, so the full-size VAE's weights are allocated once.
  """
  model = abstract_model(cfg)
  state = nnx.state(model, nnx.Param)
  want = {"/".join(map(str, k)): tuple(v.get_value().shape) for k, v in nnx.to_flat_state(state)}
  have = {}
  def rec(prefix, node):
    for k, v in node.items():
      path = f"{prefix}/{k}" if prefix else str(k)
      if isinstance(v, Mapping):
        rec(path, v)
      else:
        have[path] = v
  rec("", params)
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  bad = [f"{k}: {tuple(np.shape(have[k]))} vs model {want[k]}" for k in sorted(set(want) & set(have))
         if tuple(np.shape(have[k])) != want[k]]
  if missing or extra or bad:
    raise ValueError(f"Wan VAE params do not fit the model: missing {missing[:10]}, unexpected {extra[:10]}, "
                     f"shape mismatches {bad[:10]}")
  nnx.replace_by_pure_dict(state, _match_int_keys(params, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


def _match_int_keys(tree, like):
  """`tree` (string keys) spelled like `like` (nnx.List entries have int keys), arrays as jnp."""
  if not isinstance(tree, Mapping):
    return jnp.asarray(tree)
  spelled = {str(k): k for k in like}
  return {spelled.get(str(k), k): _match_int_keys(v, like[spelled.get(str(k), k)]) for k, v in tree.items()}


def _stringify(tree):
  if isinstance(tree, Mapping):
    return {str(k): _stringify(v) for k, v in tree.items()}
  return tree
