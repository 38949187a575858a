"""The HunyuanVideo-1.5 causal 3-D VAE (AutoencoderKLConv3D) in Flax NNX.

Public tensors use the reference layout, video [B, C, T, H, W] in [-1, 1] and
latents [B, z, T', H/16, W/16]; inside, activations are channels-last.

Time is causal everywhere, so a video can be processed whole or in chunks that
carry a cache (a pytree of the last two input frames of every causal conv):

    frames, cache = decode_chunk(vae, z[:, :, :n], None)      # start of the video
    more, cache = decode_chunk(vae, z[:, :, n:n + 4], cache)  # its next 4 latents

Both give the same frames as `decode(vae, z)`, and the second call costs the
same memory however long the video before it was. The reference encodes frame
0 and then 4-frame chunks, and decodes one latent frame per call; `encode` /
`decode` with `chunk_latents=1` replays exactly that schedule.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models.vae.config import LOGVAR_RANGE, VAEConfig
from wc_jax.models.vae.layers import (AttnBlock, CausalConv3d, Downsample, RMSNorm, ResnetBlock,
                                      Upsample, shard_activation)
from wc_jax.sharding import state_shardings


# ---------------------------------------------------------------------------- modules
class Encoder(nnx.Module):
  """Video [B, T, H, W, 3] -> moments [B, T', H/16, W/16, 2z] (mean | logvar)."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, rngs=rngs)
    chans = cfg.block_out_channels
    self.conv_in = CausalConv3d(cfg.in_channels, chans[0], 3, **kw)
    down = []
    block_in = chans[0]
    for ch, after, kind in cfg.encoder_levels():
      level = nnx.Module()
      blocks = []
      for _ in range(cfg.layers_per_block):
        blocks.append(ResnetBlock(block_in, ch, **kw))
        block_in = ch
      level.block = nnx.List(blocks)
      if kind is not None:
        level.downsample = Downsample(block_in, after, kind == "spatiotemporal", **kw)
        block_in = after
      down.append(level)
    self.down = nnx.List(down)
    self.mid = nnx.Module()
    self.mid.block_1 = ResnetBlock(block_in, block_in, **kw)
    self.mid.attn_1 = AttnBlock(block_in, **kw)
    self.mid.block_2 = ResnetBlock(block_in, block_in, **kw)
    self.norm_out = RMSNorm(block_in, **kw)
    self.conv_out = CausalConv3d(block_in, 2 * cfg.latent_channels, 3, **kw)
    self.group = chans[-1] // (2 * cfg.latent_channels)

  def __call__(self, x: jax.Array, cache: dict | None = None):
    c = cache or {}
    new = {"down": {}, "mid": {}}
    h, new["conv_in"] = self.conv_in(x, c.get("conv_in"))
    for i, level in enumerate(self.down):
      old = c.get("down", {}).get(str(i), {})
      lc = {"block": {}}
      for j, block in enumerate(level.block):
        h, lc["block"][str(j)] = block(h, old.get("block", {}).get(str(j)))
      if hasattr(level, "downsample"):
        h, lc["downsample"] = level.downsample(h, old.get("downsample"))
      new["down"][str(i)] = lc
    mid = c.get("mid", {})
    h, new["mid"]["block_1"] = self.mid.block_1(h, mid.get("block_1"))
    h = self.mid.attn_1(h)
    h, new["mid"]["block_2"] = self.mid.block_2(h, mid.get("block_2"))
    shortcut = jnp.mean(h.reshape(h.shape[:-1] + (-1, self.group)), axis=-1)
    h = jax.nn.silu(self.norm_out(h))
    h, new["conv_out"] = self.conv_out(h, c.get("conv_out"))
    return shard_activation(h + shortcut), new


class Decoder(nnx.Module):
  """Latents [B, T', h, w, z] -> video [B, 1+4(T'-1), 16h, 16w, 3] at the start of a video."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, rngs=rngs)
    chans = tuple(reversed(cfg.block_out_channels))
    block_in = chans[0]
    self.repeats = block_in // cfg.latent_channels
    self.conv_in = CausalConv3d(cfg.latent_channels, block_in, 3, **kw)
    self.mid = nnx.Module()
    self.mid.block_1 = ResnetBlock(block_in, block_in, **kw)
    self.mid.attn_1 = AttnBlock(block_in, **kw)
    self.mid.block_2 = ResnetBlock(block_in, block_in, **kw)
    up = []
    for ch, after, kind in cfg.decoder_levels():
      level = nnx.Module()
      blocks = []
      for _ in range(cfg.layers_per_block + 1):
        blocks.append(ResnetBlock(block_in, ch, **kw))
        block_in = ch
      level.block = nnx.List(blocks)
      if kind is not None:
        level.upsample = Upsample(block_in, after, kind == "spatiotemporal", **kw)
        block_in = after
      up.append(level)
    self.up = nnx.List(up)
    self.norm_out = RMSNorm(block_in, **kw)
    self.conv_out = CausalConv3d(block_in, cfg.out_channels, 3, **kw)

  def __call__(self, z: jax.Array, cache: dict | None = None):
    c = cache or {}
    new = {"up": {}, "mid": {}}
    h, new["conv_in"] = self.conv_in(z, c.get("conv_in"))
    h = h + jnp.repeat(z.astype(h.dtype), self.repeats, axis=-1)
    mid = c.get("mid", {})
    h, new["mid"]["block_1"] = self.mid.block_1(h, mid.get("block_1"))
    h = self.mid.attn_1(h)
    h, new["mid"]["block_2"] = self.mid.block_2(h, mid.get("block_2"))
    for i, level in enumerate(self.up):
      old = c.get("up", {}).get(str(i), {})
      lc = {"block": {}}
      for j, block in enumerate(level.block):
        h, lc["block"][str(j)] = block(h, old.get("block", {}).get(str(j)))
      if hasattr(level, "upsample"):
        h, lc["upsample"] = level.upsample(h, old.get("upsample"))
      new["up"][str(i)] = lc
    h = jax.nn.silu(self.norm_out(h))
    h, new["conv_out"] = self.conv_out(h, c.get("conv_out"))
    return shard_activation(h), new


class AutoencoderKL(nnx.Module):
  """Encoder + decoder; parameter paths mirror the reference state-dict keys."""

  def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)


# ---------------------------------------------------------------------------- posterior
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Posterior:
  """Diagonal Gaussian over latents, all [B, z, T', h, w] (reference layout).

  `parameters` is the raw encoder output (mean | logvar, before the clamp).
  """
  parameters: jax.Array

  @property
  def mean(self) -> jax.Array:
    return jnp.split(self.parameters, 2, axis=1)[0]

  @property
  def logvar(self) -> jax.Array:
    return jnp.clip(jnp.split(self.parameters, 2, axis=1)[1], *LOGVAR_RANGE)

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def mode(self) -> jax.Array:
    return self.mean

  def sample(self, key: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


# ---------------------------------------------------------------------------- input checks
def _expect(cond: bool, msg: str):
  if not cond:
    raise ValueError(msg)


def check_video(cfg: VAEConfig, video, start: bool = True) -> None:
  """Raises ValueError naming the expected shape when `video` cannot be encoded."""
  ft, fs = cfg.ffactor_temporal, cfg.ffactor_spatial
  frames = f"1+{ft}k" if start else f"{ft}k"
  want = f"video [B, {cfg.in_channels}, {frames}, H, W] (H, W multiples of {fs}), floating point in [-1, 1]"
  shape = tuple(getattr(video, "shape", ()))
  dtype = getattr(video, "dtype", None)
  _expect(dtype is not None and jnp.issubdtype(dtype, jnp.floating),
          f"expected a {want}; got dtype {dtype}")
  _expect(len(shape) == 5, f"expected a {want}; got shape {shape}")
  b, ch, t, h, w = shape
  _expect(ch == cfg.in_channels, f"expected a {want}; got {ch} channels in shape {shape}")
  ok_t = (t >= 1 and (t - 1) % ft == 0) if start else (t >= ft and t % ft == 0)
  _expect(ok_t, f"expected a {want}; got {t} frames in shape {shape}")
  _expect(h % fs == 0 and w % fs == 0 and h > 0 and w > 0,
          f"expected a {want}; got H, W = {h}, {w} in shape {shape}")


def check_latents(cfg: VAEConfig, z) -> None:
  """Raises ValueError naming the expected shape when `z` cannot be decoded."""
  want = f"latents [B, {cfg.latent_channels}, T', h, w], floating point"
  shape = tuple(getattr(z, "shape", ()))
  dtype = getattr(z, "dtype", None)
  _expect(dtype is not None and jnp.issubdtype(dtype, jnp.floating), f"expected {want}; got dtype {dtype}")
  _expect(len(shape) == 5, f"expected {want}; got shape {shape}")
  _expect(shape[1] == cfg.latent_channels,
          f"expected {want}; got {shape[1]} channels in shape {shape}")
  _expect(min(shape) > 0, f"expected {want}; got an empty shape {shape}")


# ---------------------------------------------------------------------------- steps
def _to_cl(x):
  return jnp.moveaxis(x, 1, -1)


def _to_cf(x):
  return jnp.moveaxis(x, -1, 1)


@nnx.jit
def _encode_step(model: AutoencoderKL, video: jax.Array, cache):
  h, cache = model.encoder(shard_activation(_to_cl(video).astype(jnp.dtype(model.config.dtype))), cache)
  return _to_cf(h), cache


@nnx.jit
def _decode_step(model: AutoencoderKL, z: jax.Array, cache):
  h, cache = model.decoder(shard_activation(_to_cl(z).astype(jnp.dtype(model.config.dtype))), cache)
  return _to_cf(h), cache


def encode_chunk(model: AutoencoderKL, video, cache=None):
  """Encodes frames [B, C, t, H, W] that follow `cache` (None: start of the video).

  Returns (moments [B, 2z, t', H/16, W/16], cache). At the start t = 1+4k,
  afterwards t = 4k.
  """
  check_video(model.config, video, start=cache is None)
  return _encode_step(model, jnp.asarray(video), cache)


def decode_chunk(model: AutoencoderKL, z, cache=None):
  """Decodes latents [B, z, t', h, w] that follow `cache` (None: start of the video).

  Returns (video [B, C, t, 16h, 16w], cache) with t = 1+4(t'-1) at the start
  and 4t' afterwards.
  """
  check_latents(model.config, z)
  return _decode_step(model, jnp.asarray(z), cache)


def encode(model: AutoencoderKL, video, chunk_latents: int | None = None, cache=None,
           return_cache: bool = False):
  """Encodes a video [B, C, 1+4k, H, W] into a Posterior.

  chunk_latents=None runs it in one call; n runs chunks of n latent frames
  (the first one 1+4(n-1) frames, then 4n), which is the reference's schedule
  for n=1 and costs memory independent of the video's length.
  """
  check_video(model.config, video, start=cache is None)
  video = jnp.asarray(video)
  ft = model.config.ffactor_temporal
  t = video.shape[2]
  if chunk_latents is None:
    bounds = [0, t]
  else:
    _expect(chunk_latents >= 1, f"chunk_latents must be >= 1, got {chunk_latents}")
    first = 1 + ft * (chunk_latents - 1) if cache is None else ft * chunk_latents
    bounds = [0] + list(range(min(first, t), t, ft * chunk_latents)) + [t]
  parts = []
  for a, b in zip(bounds[:-1], bounds[1:]):
    out, cache = _encode_step(model, video[:, :, a:b], cache)
    parts.append(out)
  post = Posterior(jnp.concatenate(parts, axis=2) if len(parts) > 1 else parts[0])
  return (post, cache) if return_cache else post


def decode(model: AutoencoderKL, z, chunk_latents: int | None = None, cache=None,
           return_cache: bool = False):
  """Decodes latents [B, z, T', h, w] into a video [B, C, 1+4(T'-1), 16h, 16w].

  chunk_latents=None decodes in one call; n decodes n latent frames per call,
  carrying the cache. With `cache` from an earlier call the latents continue
  that video (4T' frames come out).
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
  return (video, cache) if return_cache else video


def scale_latents(cfg: VAEConfig, z):
  """Encoder latents -> DiT latents (the pipeline multiplies by scaling_factor)."""
  shift = cfg.shift_factor or 0.0
  return (z - shift) * cfg.scaling_factor


def unscale_latents(cfg: VAEConfig, z):
  """DiT latents -> decoder latents."""
  shift = cfg.shift_factor or 0.0
  return z / cfg.scaling_factor + shift


# ---------------------------------------------------------------------------- spatial tiling
def _blend_ramp(n: int, dtype):
  return jnp.arange(n, dtype=jnp.float32).astype(dtype) / n


def _blend(a, b, extent: int, axis: int):
  """b's first `extent` entries along `axis` fade in from a's last ones (linear)."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  a_tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
  b_head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
  shape = [1] * b.ndim
  shape[axis] = extent
  w = _blend_ramp(extent, b.dtype).reshape(shape)
  head = a_tail * (1 - w) + b_head * w
  return jnp.concatenate([head, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis=axis)


def tiled_decode(model: AutoencoderKL, z, tile_latent: int | None = None, overlap: float = 0.25,
                 chunk_latents: int | None = None):
  """Decodes large frames tile by tile and blends the seams linearly.

  Tiles are `tile_latent` latents square (default sample_size / 16), taken
  every tile·(1−overlap) latents; each decoded tile fades into its upper and
  left neighbours over tile·16·overlap pixels, as the reference's tiled decode
  does. Peak memory follows the tile, not the frame.
  """
  cfg = model.config
  check_latents(cfg, z)
  z = jnp.asarray(z)
  fs = cfg.ffactor_spatial
  tile = tile_latent or cfg.sample_size // fs
  stride = int(tile * (1 - overlap))
  _expect(tile >= 1 and stride >= 1, f"tile_latent={tile} with overlap={overlap} gives no stride")
  extent = int(tile * fs * overlap)
  limit = tile * fs - extent
  hh, ww = z.shape[-2:]
  rows = []
  for i in range(0, hh, stride):
    row = []
    for j in range(0, ww, stride):
      t = decode(model, z[..., i:i + tile, j:j + tile], chunk_latents=chunk_latents)
      if rows:
        t = _blend(rows[-1][len(row)], t, extent, axis=-2)
      if row:
        t = _blend(row[-1], t, extent, axis=-1)
      row.append(t)
    rows.append(row)
  out = jnp.concatenate([jnp.concatenate([t[..., :limit, :limit] for t in r], axis=-1) for r in rows],
                        axis=-2)
  return out


# ---------------------------------------------------------------------------- building / params
def init_model(cfg: VAEConfig, seed: int = 0) -> AutoencoderKL:
  """A randomly initialised VAE (torch-default-like uniform init)."""
  return AutoencoderKL(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: VAEConfig) -> AutoencoderKL:
  """The model with ShapeDtypeStructs instead of arrays (nothing allocated)."""
  return nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))


def param_shardings(model: AutoencoderKL, mesh) -> nnx.State:
  """NamedShardings for nnx.state(model, nnx.Param), from each parameter's logical names.

  Works on an abstract model too (see `abstract_model`), for placing tensors
  as a converter reads them.
  """
  return state_shardings(nnx.state(model, nnx.Param), mesh)


def shard_model(model: AutoencoderKL, mesh) -> AutoencoderKL:
  """Places every parameter on `mesh` by its logical names (in place)."""
  shardings = param_shardings(model, mesh)
  state = nnx.state(model, nnx.Param)
  placed = jax.tree.map(lambda v, s: jax.device_put(v.get_value(), s), state, shardings,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
  nnx.update(model, placed)
  return model


def params_of(model: AutoencoderKL) -> dict:
  """The parameters as a nested dict with string keys (the converter's layout)."""
  return _stringify(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def model_from_params(cfg: VAEConfig, params: Mapping) -> AutoencoderKL:
  """Builds the module from `cfg` and puts `params` (nested dict, converter layout) in it.

  Nothing is initialised first, so loading the full-size VAE allocates its
  weights once. Every parameter must be present with the model's shape.
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
    raise ValueError(f"VAE params do not fit the model: missing {missing[:10]}, unexpected {extra[:10]}, "
                     f"shape mismatches {bad[:10]}")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
  nnx.update(model, state)
  return model


def _stringify(tree):
  if isinstance(tree, Mapping):
    return {str(k): _stringify(v) for k, v in tree.items()}
  return tree
