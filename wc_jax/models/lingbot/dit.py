"""The LingBot-World generator: the Wan2.2 i2v DiT with LingBot's camera branch, in Flax NNX.

One expert (`LingBotDiT`) is the reference `WanModel`; the released model has two of them
(high-noise for t >= 947, low-noise below), switched by the sampler
(`wc_jax.inference.unipc`), both the same graph with different weights.

    velocity = model(x, t, context, y=y, cam=cam)

x [B, C, F, H, W] noisy latent, y [B, Cy, F, H, W] (i2v: 4 mask + image latent channels,
concatenated to x on channels), context [B, Lc, text_dim] umT5 states (Lc <= text_len;
zero-padded to text_len like the reference, and those padded rows are attended: the
reference calls cross-attention without a key mask), cam [B or 1, 384, F, H, W] the camera
conditioning of `wc_jax.models.lingbot.camera` (or None: the camera layers are skipped).
Tokens are in (f, h, w) order over the patch grid; the residual stream stays float32 as in
the reference (its gates are float32 under autocast).
"""
from __future__ import annotations

import dataclasses
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from wc_jax.models.lingbot.config import LingBotConfig
from wc_jax.nn.attention import attention
from wc_jax.nn.layers import LayerNorm, RMSNorm, dense, gelu_tanh
from wc_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")
_ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")

# What `collect=True` records per block (the fixture's per-block intermediates).
BLOCK_INTERMEDIATES = ("self_attn_out", "cam_scale", "cam_shift", "cross_attn_out", "ffn_out", "out")


def _remat_policy(name: str):
  return {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      "save_attn": jax.checkpoint_policies.save_only_these_names("attn_out"),
  }[name]


# ----------------------------------------------------------------------------- numerics

# 2*pi as a float32-exact head (8 significant bits) and a small tail (Cody-Waite reduction).
_TWO_PI_HI = 6.28125
_TWO_PI_LO = 2 * math.pi - 6.28125


def sinusoid(t: jax.Array, dim: int) -> jax.Array:
  """[cos | sin] embedding of timesteps t [...] -> [..., dim], float32.

  The reference evaluates it in float64 (t up to 1000); float32 arguments would be off by
  ~1e-4 rad. Here t = round(t) + rest and each frequency = 12-bit head + tail, so the big
  product round(t)*head is exact in float32 (t < 4096), and the 2*pi reduction is exact too.
  """
  half = dim // 2
  f64 = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
  exp = np.floor(np.log2(f64))
  f_hi = np.round(f64 / 2.0 ** (exp - 11)) * 2.0 ** (exp - 11)   # 12 significant bits
  f_lo = f64 - f_hi
  t = jnp.asarray(t, jnp.float32)
  t_hi = jnp.round(t)
  t_lo = t - t_hi
  big = t_hi[..., None] * jnp.asarray(f_hi, jnp.float32)
  small = t_hi[..., None] * jnp.asarray(f_lo, jnp.float32) + t_lo[..., None] * jnp.asarray(f64, jnp.float32)
  n = jnp.round(big / (2 * math.pi))
  arg = ((big - n * _TWO_PI_HI) - n * _TWO_PI_LO) + small
  return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def rope_angles(cfg: LingBotConfig, n: int) -> np.ndarray:
  """[n, head_dim/2] float64 angles of positions 0..n-1: the reference's complex table (its
  `freqs`), sections (f | h | w) of d - 4(d//6), 2(d//6), 2(d//6) real dims, each with
  theta^(-2j/d_section)."""
  parts = [np.outer(np.arange(n, dtype=np.float64),
                    1.0 / np.power(cfg.rope_theta, np.arange(0, d, 2, dtype=np.float64) / d))
           for d in cfg.rope_dims]
  return np.concatenate(parts, axis=1)


def rope_tables(cfg: LingBotConfig, f: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """cos, sin [f*h*w, head_dim/2] of the 3-axis RoPE over the (f, h, w) patch grid.

  Pairs (2i, 2i+1) of a head are complex numbers; the first section rotates with the frame
  index, then the row, then the column. Built in float64 on the host (the grid is static),
  as the reference's float64 table."""
  a = rope_angles(cfg, max(f, h, w))
  s0, s1 = cfg.rope_dims[0] // 2, cfg.rope_dims[1] // 2
  af, ah, aw = a[:f, :s0], a[:h, s0:s0 + s1], a[:w, s0 + s1:]
  grid = np.concatenate([
      np.broadcast_to(af[:, None, None], (f, h, w, af.shape[1])),
      np.broadcast_to(ah[None, :, None], (f, h, w, ah.shape[1])),
      np.broadcast_to(aw[None, None, :], (f, h, w, aw.shape[1])),
  ], axis=-1).reshape(f * h * w, -1)
  return np.cos(grid).astype(np.float32), np.sin(grid).astype(np.float32)


def apply_rope(x, cos, sin):
  """x [B, L, H, D] with interleaved (re, im) pairs; cos/sin [L, D/2]."""
  dtype = x.dtype
  xr = x.astype(jnp.float32).reshape(x.shape[:-1] + (-1, 2))
  re, im = xr[..., 0], xr[..., 1]
  c, s = jnp.asarray(cos)[None, :, None], jnp.asarray(sin)[None, :, None]
  out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1)
  return out.reshape(x.shape).astype(dtype)


# ----------------------------------------------------------------------------- layers

def _linear(din, dout, axes, cfg: LingBotConfig, rngs, kernel_init=None, dtype=None):
  kw = dict(dtype=dtype or cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
  return dense(din, dout, axes, kernel_init=kernel_init or nnx.initializers.xavier_uniform(), **kw)


class MLP(nnx.Module):
  """fc1 -> act -> fc2 (reference nn.Sequential(Linear, act, Linear))."""

  def __init__(self, din, hidden, dout, act, axes, cfg: LingBotConfig, *, rngs: nnx.Rngs, kernel_init=None,
               dtype=None):
    self.act = act
    self.fc1 = _linear(din, hidden, axes[0], cfg, rngs, kernel_init, dtype)
    self.fc2 = _linear(hidden, dout, axes[1], cfg, rngs, kernel_init, dtype)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Attention(nnx.Module):
  """Wan self/cross attention: q, k, v, o projections; RMSNorm on q and k over the full
  width (before the head split)."""

  def __init__(self, cfg: LingBotConfig, *, rngs: nnx.Rngs):
    c = cfg.dim
    self.cfg = cfg
    for n in ("q", "k", "v"):
      setattr(self, n, _linear(c, c, ("embed", "heads"), cfg, rngs))
    self.o = _linear(c, c, ("heads", "embed"), cfg, rngs)
    self.norm_q = RMSNorm(c, eps=cfg.eps, param_dtype=cfg.params_dtype)
    self.norm_k = RMSNorm(c, eps=cfg.eps, param_dtype=cfg.params_dtype)

  def _heads(self, x):
    return constrain(einops.rearrange(x, "b l (h d) -> b l h d", h=self.cfg.num_heads), _ACT_HEADS)

  def __call__(self, x, context=None, rope=None):
    """Self-attention (context None, with RoPE) or cross-attention to `context` (no RoPE, no mask)."""
    cfg = self.cfg
    dt = cfg.compute_dtype
    x = x.astype(dt)
    src = x if context is None else context.astype(dt)
    q = self._heads(self.norm_q(self.q(x)))
    k = self._heads(self.norm_k(self.k(src)))
    v = self._heads(self.v(src))
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = attention(q, k, v, None, impl=cfg.attention_impl, block_kv=cfg.attention_block_kv)
    out = checkpoint_name(out.reshape(x.shape[:2] + (-1,)), "attn_out")
    return self.o(out)


class Block(nnx.Module):
  """WanAttentionBlock + LingBot camera injection (after self-attention, before cross-attention)."""

  def __init__(self, cfg: LingBotConfig, *, rngs: nnx.Rngs):
    c = cfg.dim
    self.cfg = cfg
    self.modulation = nnx.Param(jax.random.normal(rngs.params(), (6, c), cfg.params_dtype) / math.sqrt(c),
                                out_sharding=(None, "embed"))
    self.norm1 = LayerNorm(c, eps=cfg.eps, affine=False)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.norm3 = LayerNorm(c, eps=cfg.eps, affine=True, param_dtype=cfg.params_dtype)
    self.cross_attn = Attention(cfg, rngs=rngs)
    self.norm2 = LayerNorm(c, eps=cfg.eps, affine=False)
    self.ffn = MLP(c, cfg.ffn_dim, c, gelu_tanh, (("embed", "mlp"), ("mlp", "embed")), cfg, rngs=rngs)
    for n in ("cam_injector_layer1", "cam_injector_layer2", "cam_scale_layer", "cam_shift_layer"):
      setattr(self, n, _linear(c, c, ("embed", "embed_out"), cfg, rngs))

  def __call__(self, x, e0, context, cam, rope, collect: bool = False):
    """x [B, L, C] float32; e0 [B, 1 or L, 6, C]; context [B, Lt, C]; cam [B or 1, L, C] or None."""
    dt = self.cfg.compute_dtype
    e = self.modulation[...].astype(jnp.float32) + e0.astype(jnp.float32)
    shift1, scale1, gate1, shift2, scale2, gate2 = (e[:, :, i] for i in range(6))
    y = self.self_attn((self.norm1(x) * (1 + scale1) + shift1).astype(dt), rope=rope)
    x = x + y.astype(jnp.float32) * gate1
    rec = {"self_attn_out": y} if collect else {}
    if cam is not None:
      h = cam + self.cam_injector_layer2(jax.nn.silu(self.cam_injector_layer1(cam)))
      cam_scale, cam_shift = self.cam_scale_layer(h), self.cam_shift_layer(h)
      x = (1.0 + cam_scale.astype(jnp.float32)) * x + cam_shift.astype(jnp.float32)
      if collect:
        rec.update(cam_scale=cam_scale, cam_shift=cam_shift)
    z = self.cross_attn(self.norm3(x), context=context)
    x = x + z.astype(jnp.float32)
    f = self.ffn((self.norm2(x) * (1 + scale2) + shift2).astype(dt))
    x = constrain(x + f.astype(jnp.float32) * gate2, _ACT)
    if collect:
      rec.update(cross_attn_out=z, ffn_out=f, out=x)
    return x, rec


class Head(nnx.Module):
  def __init__(self, cfg: LingBotConfig, *, rngs: nnx.Rngs):
    c = cfg.dim
    self.norm = LayerNorm(c, eps=cfg.eps, affine=False)
    # the reference runs the head (like the time embedding) in float32 under its autocast
    self.head = _linear(c, cfg.out_dim * cfg.patch_volume, ("embed", "in_features"), cfg, rngs,
                        kernel_init=nnx.initializers.zeros_init(), dtype=jnp.float32)
    self.modulation = nnx.Param(jax.random.normal(rngs.params(), (2, c), cfg.params_dtype) / math.sqrt(c),
                                out_sharding=(None, "embed"))

  def __call__(self, x, e):
    """x [B, L, C]; e [B, 1 or L, C] (the time embedding, not e0)."""
    m = self.modulation[...].astype(jnp.float32)[None, None] + e.astype(jnp.float32)[:, :, None]
    shift, scale = m[:, :, 0], m[:, :, 1]
    return self.head(self.norm(x) * (1 + scale) + shift)


# ----------------------------------------------------------------------------- the model

class LingBotDiT(nnx.Module):
  """One LingBot-World expert: Wan2.2 DiT (i2v) + camera branch."""

  def __init__(self, cfg: LingBotConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.dim
    pv = cfg.patch_volume
    normal = nnx.initializers.normal(0.02)
    self.patch_embedding = _linear(cfg.in_dim * pv, c, ("in_features", "embed"), cfg, rngs)
    self.patch_embedding_wancamctrl = _linear(cfg.camera_channels * pv, c, ("in_features", "embed"), cfg, rngs)
    self.c2ws_hidden_states_layer1 = _linear(c, c, ("embed", "embed_out"), cfg, rngs)
    self.c2ws_hidden_states_layer2 = _linear(c, c, ("embed_out", "embed"), cfg, rngs)
    self.text_embedding = MLP(cfg.text_dim, c, c, gelu_tanh, (("in_features", "embed"), ("embed", "embed_out")),
                              cfg, rngs=rngs, kernel_init=normal)
    # time embedding and projection stay float32 (the reference's float32 autocast region)
    self.time_embedding = MLP(cfg.freq_dim, c, c, jax.nn.silu, (("in_features", "embed"), ("embed", "embed_out")),
                              cfg, rngs=rngs, kernel_init=normal, dtype=jnp.float32)
    self.time_projection = _linear(c, 6 * c, ("embed", "modulation"), cfg, rngs, dtype=jnp.float32)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return Block(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.head = Head(cfg, rngs=rngs)

  # -- layer loop: nnx.scan over the stacked blocks, each under nnx.remat
  def _scan(self, fn, carry):
    cfg = self.cfg

    def body(block, carry):
      return fn(block, carry)

    if cfg.remat_policy != "none":
      body = nnx.remat(body, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
    scan = nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0), length=cfg.num_layers)
    return scan(self.blocks, carry)

  # -- inputs
  def _grid(self, x, y):
    cfg = self.cfg
    if x.ndim != 5:
      raise ValueError(f"x must be a latent [B, C, F, H, W], got {tuple(x.shape)}")
    cy = 0 if y is None else y.shape[1]
    if y is not None and (y.ndim != 5 or y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]):
      raise ValueError(f"y must be [B, Cy, F, H, W] matching x {tuple(x.shape)}, got {tuple(y.shape)}")
    if x.shape[1] + cy != cfg.in_dim:
      raise ValueError(f"x channels {x.shape[1]} + y channels {cy} must equal in_dim {cfg.in_dim} "
                       "(i2v: noise + 4 mask + image latent)")
    _, _, f, h, w = x.shape
    pt, ph, pw = cfg.patch_size
    if f % pt or h % ph or w % pw:
      raise ValueError(f"latent size (F,H,W)=({f},{h},{w}) must be divisible by patch {cfg.patch_size}")
    return f // pt, h // ph, w // pw

  def _patchify(self, x):
    pt, ph, pw = self.cfg.patch_size
    return einops.rearrange(x, "b c (f pt) (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)

  def _unpatchify(self, x, grid):
    pt, ph, pw = self.cfg.patch_size
    f, h, w = grid
    return einops.rearrange(x, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)", f=f, h=h, w=w,
                            pt=pt, ph=ph, pw=pw)

  def embed_time(self, t, batch: int, length: int):
    """(e [B, 1 or L, C], e0 [B, 1 or L, 6, C]) float32. t: scalar, [B] (one per sample,
    as the i2v pipeline passes) or [B, L] (per token)."""
    cfg = self.cfg
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
      t = jnp.broadcast_to(t, (batch,))
    if t.ndim == 1:
      if t.shape[0] not in (1, batch):
        raise ValueError(f"t must be a scalar, [B={batch}] or [B, L={length}], got {tuple(t.shape)}")
      t = jnp.broadcast_to(t, (batch,))[:, None]
    elif t.shape != (batch, length):
      raise ValueError(f"t must be a scalar, [B={batch}] or [B, L={length}], got {tuple(t.shape)}")
    e = self.time_embedding(sinusoid(t, cfg.freq_dim))
    e0 = self.time_projection(jax.nn.silu(e))
    return e, e0.reshape(e0.shape[:2] + (6, cfg.dim))

  def embed_text(self, context):
    """[B, Lc, text_dim] -> [B, text_len, C]; rows past Lc are zeros before the embedding (as the
    reference pads) and are attended like any other row."""
    cfg = self.cfg
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim or context.shape[1] > cfg.text_len:
      raise ValueError(f"context must be [B, Lc <= {cfg.text_len}, {cfg.text_dim}], got {tuple(context.shape)}")
    pad = cfg.text_len - context.shape[1]
    context = jnp.pad(context.astype(cfg.compute_dtype), ((0, 0), (0, pad), (0, 0)))
    return constrain(self.text_embedding(context), _ACT)

  def embed_camera(self, cam, grid, batch: int):
    """[B or 1, 384, F, H, W] -> (patch embedding, final camera states) [B or 1, L, C]."""
    cfg = self.cfg
    pt, ph, pw = cfg.patch_size
    want = (cfg.camera_channels, grid[0] * pt, grid[1] * ph, grid[2] * pw)
    if cam.ndim != 5 or tuple(cam.shape[1:]) != want or cam.shape[0] not in (1, batch):
      raise ValueError(f"cam must be [B or 1, {want[0]}, F, H, W] = [{batch}, {', '.join(map(str, want))}] "
                       f"(wc_jax.models.lingbot.camera), got {tuple(cam.shape)}")
    c = self.patch_embedding_wancamctrl(self._patchify(cam.astype(cfg.compute_dtype)))
    return c, c + self.c2ws_hidden_states_layer2(jax.nn.silu(self.c2ws_hidden_states_layer1(c)))

  def __call__(self, x, t, context, *, y=None, cam=None, collect: bool = False):
    """Velocity [B, out_dim, F, H, W]. collect: also return a dict of intermediates."""
    cfg = self.cfg
    grid = self._grid(x, y)
    b = x.shape[0]
    if context.shape[0] != b:
      raise ValueError(f"context batch {context.shape[0]} != latent batch {b}")
    if y is not None:
      x = jnp.concatenate([x, y.astype(x.dtype)], axis=1)
    tokens = self.patch_embedding(self._patchify(x.astype(cfg.compute_dtype)))
    h = constrain(tokens.astype(jnp.float32), _ACT)
    length = h.shape[1]
    e, e0 = self.embed_time(t, b, length)
    ctx = self.embed_text(context)
    cam_in = cam_final = None
    if cam is not None:
      cam_in, cam_final = self.embed_camera(cam, grid, b)
    rope = rope_tables(cfg, *grid)

    def fn(block, h):
      return block(h, e0, ctx, cam_final, rope, collect=collect)

    h, per_block = self._scan(fn, h)
    head = self.head(h, e)
    out = self._unpatchify(head.astype(jnp.float32), grid)
    if not collect:
      return out
    inter = dict(
        patch_embedding_out=einops.rearrange(tokens, "b (f h w) c -> b c f h w", f=grid[0], h=grid[1], w=grid[2]),
        time_embedding_out=jnp.broadcast_to(e, (b, length, cfg.dim)),
        e0=jnp.broadcast_to(e0, (b, length, 6, cfg.dim)),
        text_embedding_out=ctx, head_out=head, grid_sizes=np.asarray([grid] * b))
    inter["time_projection_out"] = inter["e0"].reshape(b, length, 6 * cfg.dim)
    if cam is not None:
      inter.update(cam_patch_embedding_out=cam_in, cam_emb_final=cam_final,
                   cam_hidden_layer2_out=cam_final - cam_in)
    for name, arr in per_block.items():
      for i in range(cfg.num_layers):
        inter[f"block{i}.{name}"] = arr[i]
    return out, inter


def build(cfg: LingBotConfig, seed: int = 0) -> LingBotDiT:
  return LingBotDiT(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: LingBotConfig) -> LingBotDiT:
  """The model with ShapeDtypeStruct leaves: nothing allocated (A14B planning, conversion)."""
  return nnx.eval_shape(lambda: LingBotDiT(cfg, rngs=nnx.Rngs(0)))


def load_params(model: nnx.Module, params: dict) -> nnx.Module:
  """Assigns a nested dict of arrays (wc_jax layout, e.g. from wc_jax.convert.lingbot) to `model`."""
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  want = _flat(pure)
  got = _flat(params)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  if missing or extra:
    raise ValueError(f"parameter tree does not match the model: missing {missing[:10]}, unexpected {extra[:10]}")
  bad = [f"{k}: model {tuple(want[k].shape)} vs given {tuple(np.shape(got[k]))}" for k in sorted(want)
         if tuple(want[k].shape) != tuple(np.shape(got[k]))]
  if bad:
    raise ValueError(f"parameter shapes do not match the model: {bad[:10]}")

  def assign(path, leaf):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    return jnp.asarray(got[key], dtype=leaf.dtype)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(assign, pure))
  nnx.update(model, state)
  return model


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(_flat(v, key))
    else:
      out[key] = v
  return out


@dataclasses.dataclass(frozen=True)
class Apply:
  """apply(state, *args, **kwargs): a pure call of the expert rebuilt from `state`. Hashable by
  graph structure, so both experts (one graph) share compiled programs."""
  graphdef: object

  def __call__(self, state, *args, **kwargs):
    return nnx.merge(self.graphdef, state)(*args, **kwargs)


def functional(model: nnx.Module):
  """(apply, state): split for jax.jit (the sampler passes the two experts' states)."""
  graphdef, state = nnx.split(model)
  return Apply(graphdef), state


def randomize(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """Re-draws every parameter with the fixtures' rule (nothing zero), so a random expert has
  non-trivial outputs and a live camera branch (demos, tests): kernels N(0, 1/fan_in),
  norm scales 1 + 0.1 N, biases 0.1 N, modulation N(0, 1)/sqrt(dim). Real runs load a checkpoint."""
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  dim = model.cfg.dim

  def draw(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    stacked = any(str(getattr(p, "key", p)) == "blocks" for p in path)
    core = x.shape[1:] if stacked else x.shape
    if name == "modulation":
      v = rng.standard_normal(x.shape) / np.sqrt(dim)
    elif name == "kernel":
      v = rng.standard_normal(x.shape) / np.sqrt(core[0])
    elif name == "weight":
      v = 1.0 + 0.1 * rng.standard_normal(x.shape)
    else:
      v = 0.1 * rng.standard_normal(x.shape)
    return jnp.asarray(v, x.dtype)

  pure = nnx.to_pure_dict(state)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, pure))
  nnx.update(model, state)
  return model
