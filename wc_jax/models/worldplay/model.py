"""The WorldPlay generator: HunyuanVideo-1.5 DiT with WorldPlay's action branches, in Flax NNX.

Two call paths, as in the reference:

* `forward` - the full forward of base training: text and video tokens in joint
  attention, optionally chunk-causal (a video chunk sees text, itself and earlier
  chunks; text sees text only).
* the autoregressive path - `text_cache` (text K/V once), `context_cache` (context
  latents once at the context timestep -> per-layer vision K/V) and `denoise_chunk`
  (a 4-latent chunk attending to [text; context; itself]). Caches are explicit
  pytrees with the layer as leading axis, returned and passed in, so one context
  cache serves any number of candidate chunks.

Token layout: image tokens in (t, h, w) order; conditioning tokens reordered to
[vision | ByT5 valid | LLM valid | padding (zeroed)], the reference's order.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from wc_jax.models.worldplay.config import DiTConfig
from wc_jax.models.worldplay.rope import apply_projmat, apply_rope, prope_matrices, rope_tables
from wc_jax.nn.attention import Mask, attention
from wc_jax.nn.layers import LayerNorm, RMSNorm, TimestepEmbedder, dense, gelu, gelu_tanh
from wc_jax.sharding import constrain

_ACT = ("activation_batch", "activation_length", "activation_embed")
_ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")


# ----------------------------------------------------------------------------- pytrees

class TextTokens(NamedTuple):
  """Conditioning tokens after the embedders and reordering."""
  tokens: jax.Array    # [B, Lt, C]
  mask: jax.Array      # [B, Lt] bool, valid tokens first
  vec: jax.Array       # [B, C] timestep_txt embedding (text-stream modulation input)


class TextCache(NamedTuple):
  """Per-layer text K (after qk-norm, no RoPE) and V."""
  k: jax.Array         # [L, B, Lt, H, D]
  v: jax.Array         # [L, B, Lt, H, D]
  mask: jax.Array      # [B, Lt] bool


class VisionCache(NamedTuple):
  """Per-layer context K/V for both attention branches (0 = RoPE, 1 = PRoPE)."""
  k: jax.Array         # [L, 2, B, N, H, D]
  v: jax.Array         # [L, 2, B, N, H, D]
  valid: jax.Array     # [B, N] bool (padded context frames are False)
  frames: jax.Array    # [B] int32: number of valid context frames (RoPE offset of the target chunk)


# ----------------------------------------------------------------------------- helpers

def _per_frame(x, frames: int, fn):
  """Applies fn(x [B, T, S/T, C]) and flattens back: per-frame modulation without
  materialising per-token modulation vectors."""
  b, s, c = x.shape
  return fn(x.reshape(b, frames, s // frames, c)).reshape(b, s, c)


def _modulate(x, shift, scale, frames: int):
  return _per_frame(x, frames, lambda y: y * (1 + scale[:, :, None]) + shift[:, :, None])


def _gate(x, gate, frames: int):
  return _per_frame(x, frames, lambda y: y * gate[:, :, None])


def _layer_norm(x, eps=1e-6):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _remat_policy(name: str):
  return {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      "save_attn": jax.checkpoint_policies.save_only_these_names("attn_out"),
  }[name]


# ----------------------------------------------------------------------------- conditioning

class MLPBlock(nnx.Module):
  """fc1 -> act -> fc2 (out width defaults to the input width)."""

  def __init__(self, dim: int, hidden: int, act, *, cfg: DiTConfig, rngs: nnx.Rngs, out: int | None = None,
               axes=(("embed", "mlp"), ("mlp", "embed"))):
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.act = act
    self.fc1 = dense(dim, hidden, axes[0], **kw)
    self.fc2 = dense(hidden, out or dim, axes[1], **kw)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class RefinerBlock(nnx.Module):
  """Self-attention + MLP over the LLM tokens, gated by the pooled/timestep vector."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    c = cfg.hidden_size
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.heads = cfg.heads
    self.impl = cfg.attention_impl
    self.norm1 = LayerNorm(c, eps=1e-6, param_dtype=cfg.params_dtype)
    self.self_attn_qkv = dense(c, 3 * c, ("embed", "qkv"), **kw)
    self.self_attn_proj = dense(c, c, ("heads", "embed"), **kw)
    self.norm2 = LayerNorm(c, eps=1e-6, param_dtype=cfg.params_dtype)
    self.mlp = MLPBlock(c, cfg.mlp_hidden, jax.nn.silu, cfg=cfg, rngs=rngs)
    self.adaLN_modulation = dense(c, 2 * c, ("embed", "modulation"), **kw)

  def __call__(self, x, c, mask):
    gate_msa, gate_mlp = jnp.split(self.adaLN_modulation(jax.nn.silu(c)), 2, axis=-1)
    qkv = self.self_attn_qkv(self.norm1(x))
    q, k, v = einops.rearrange(qkv, "b l (k h d) -> k b l h d", k=3, h=self.heads)
    attn = attention(q, k, v, Mask(kv_valid=mask, q_valid=mask), impl=self.impl)
    x = x + self.self_attn_proj(attn.reshape(x.shape)) * gate_msa[:, None]
    return x + self.mlp(self.norm2(x)) * gate_mlp[:, None]


class TokenRefiner(nnx.Module):
  """The reference SingleTokenRefiner: LLM states -> hidden, refined by 2 blocks."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    c = cfg.hidden_size
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.input_embedder = dense(cfg.text_dim, c, ("in_features", "embed"), **kw)
    self.t_embedder = TimestepEmbedder(c, **kw)
    self.c_embedder = MLPBlock(cfg.text_dim, c, jax.nn.silu, cfg=cfg, rngs=rngs, out=c,
                               axes=(("in_features", "embed"), ("embed", "embed_out")))
    self.blocks = nnx.List([RefinerBlock(cfg, rngs=rngs) for _ in range(cfg.refiner_depth)])

  def __call__(self, x, t, mask):
    maskf = mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(x.astype(jnp.float32) * maskf, axis=1) / jnp.maximum(jnp.sum(maskf, axis=1), 1.0)
    c = self.t_embedder(t) + self.c_embedder(pooled.astype(x.dtype))
    x = self.input_embedder(x)
    mask = mask.astype(bool).at[:, 0].set(True)  # the reference keeps token 0 visible (no NaN rows)
    for block in self.blocks:
      x = block(x, c, mask)
    return x


class ByT5Mapper(nnx.Module):
  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    self.layernorm = LayerNorm(cfg.byt5_in_dim, eps=1e-5, param_dtype=cfg.params_dtype)
    self.fc1 = dense(cfg.byt5_in_dim, cfg.byt5_hidden_dim, ("in_features", "mlp"), **kw)
    self.fc2 = dense(cfg.byt5_hidden_dim, cfg.byt5_out_dim, ("mlp", "embed_out"), **kw)
    self.fc3 = dense(cfg.byt5_out_dim, cfg.hidden_size, ("embed_out", "embed"), **kw)

  def __call__(self, x):
    return self.fc3(gelu(self.fc2(gelu(self.fc1(self.layernorm(x))))))


class VisionProjection(nnx.Module):
  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    d = cfg.vision_dim
    self.norm_in = LayerNorm(d, eps=1e-5, param_dtype=cfg.params_dtype)
    self.fc1 = dense(d, d, ("in_features", "mlp"), **kw)
    self.fc2 = dense(d, cfg.hidden_size, ("mlp", "embed"), **kw)
    self.norm_out = LayerNorm(cfg.hidden_size, eps=1e-5, param_dtype=cfg.params_dtype)

  def __call__(self, x):
    return self.norm_out(self.fc2(gelu(self.fc1(self.norm_in(x)))))


# ----------------------------------------------------------------------------- double block

class DoubleStreamBlock(nnx.Module):
  """Separate img/txt weights, joint attention, RMS qk-norm, gelu_tanh MLPs, six-way
  modulation per stream, and the PRoPE camera branch on the image stream."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    c, hd = cfg.hidden_size, cfg.head_dim
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    zeros = nnx.initializers.zeros_init()
    self.cfg = cfg
    for s in ("img", "txt"):
      setattr(self, f"{s}_mod", dense(c, 6 * c, ("embed", "modulation"), kernel_init=zeros, **kw))
      for n in ("q", "k", "v"):
        setattr(self, f"{s}_attn_{n}", dense(c, c, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw))
      setattr(self, f"{s}_attn_q_norm", RMSNorm(hd, eps=cfg.qk_norm_eps, param_dtype=cfg.params_dtype))
      setattr(self, f"{s}_attn_k_norm", RMSNorm(hd, eps=cfg.qk_norm_eps, param_dtype=cfg.params_dtype))
      setattr(self, f"{s}_attn_proj", dense(c, c, ("heads", "embed"), use_bias=cfg.qkv_bias, **kw))
      setattr(self, f"{s}_mlp", MLPBlock(c, cfg.mlp_hidden, gelu_tanh, cfg=cfg, rngs=rngs))
    # WorldPlay's camera branch; zero-init so a fresh branch leaves the base model unchanged.
    self.img_attn_prope_proj = dense(c, c, ("heads", "embed"), use_bias=cfg.qkv_bias, kernel_init=zeros, **kw)

  # -- pieces
  def _mods(self, stream: str, vec):
    # the six modulation vectors whole on every `tensor` chip (tiny: [B, T, C] each): left to
    # propagation, their split of the 6C output slices C unevenly and the projections they
    # gate get partitioned around it (a 4x repeat of the attention projection on 16 chips)
    mods = jnp.split(getattr(self, f"{stream}_mod")(jax.nn.silu(vec)), 6, axis=-1)
    axes = ("activation_batch",) + (None,) * (vec.ndim - 1)
    return [constrain(m, axes, f"{stream} modulation") for m in mods]

  def _qkv(self, stream: str, x, shift, scale, frames):
    h = self.cfg.heads
    xm = _modulate(_layer_norm(x), shift, scale, frames)
    q, k, v = (getattr(self, f"{stream}_attn_{n}")(xm) for n in ("q", "k", "v"))
    q, k, v = (einops.rearrange(t, "b l (h d) -> b l h d", h=h) for t in (q, k, v))
    q = getattr(self, f"{stream}_attn_q_norm")(q)
    k = getattr(self, f"{stream}_attn_k_norm")(k)
    return (constrain(q, _ACT_HEADS, f"{stream} q"), constrain(k, _ACT_HEADS, f"{stream} k"),
            constrain(v, _ACT_HEADS, f"{stream} v"))

  def _mlp_out(self, stream, x, shift, scale, gate, frames):
    y = getattr(self, f"{stream}_mlp")(_modulate(_layer_norm(x), shift, scale, frames))
    return x + _gate(y, gate, frames)

  def _img_attn_out(self, img, out_rope, out_prope, p_mat, gate, frames):
    b, s, _ = img.shape
    out_prope = apply_projmat(out_prope, p_mat, frames).reshape(b, s, -1)
    out_rope = checkpoint_name(out_rope.reshape(b, s, -1), "attn_out")
    y = self.img_attn_proj(out_rope) + self.img_attn_prope_proj(out_prope)
    return img + _gate(y, gate, frames)

  # -- call paths
  def joint(self, img, txt, vec_img, vec_txt, rope, prope, txt_mask, chunk_ids):
    """Full forward block. img [B,S,C], txt [B,Lt,C], vec_img [B,T,C], vec_txt [B,C]."""
    cfg = self.cfg
    frames = vec_img.shape[1]
    im = self._mods("img", vec_img)
    tm = [m[:, None] for m in self._mods("txt", vec_txt)]
    iq, ik, iv = self._qkv("img", img, im[0], im[1], frames)
    tq, tk, tv = self._qkv("txt", txt, tm[0], tm[1], 1)
    pt, pinv, p = prope
    pq, pk, pv = apply_projmat(iq, pt, frames), apply_projmat(ik, pinv, frames), apply_projmat(iv, pinv, frames)
    iq, ik = apply_rope(iq, *rope), apply_rope(ik, *rope)
    lt = txt.shape[1]
    ones = jnp.ones(img.shape[:2], bool)
    kv_valid = jnp.concatenate([txt_mask, ones], axis=1)
    txt_chunk, img_chunk = chunk_ids
    kv_chunk = None if img_chunk is None else np.concatenate([txt_chunk, img_chunk])
    mask = Mask(kv_valid=kv_valid, q_valid=kv_valid, q_chunk=kv_chunk, kv_chunk=kv_chunk)
    out = attention(jnp.concatenate([tq, iq], 1), jnp.concatenate([tk, ik], 1), jnp.concatenate([tv, iv], 1),
                    mask, impl=cfg.attention_impl, block_kv=cfg.attention_block_kv)
    mask_p = Mask(kv_valid=kv_valid, q_chunk=img_chunk, kv_chunk=kv_chunk)
    out_p = attention(pq, jnp.concatenate([tk, pk], 1), jnp.concatenate([tv, pv], 1), mask_p,
                      impl=cfg.attention_impl, block_kv=cfg.attention_block_kv)
    img = self._img_attn_out(img, out[:, lt:], out_p, p, im[2], frames)
    img = self._mlp_out("img", img, im[3], im[4], im[5], frames)
    txt_out = out[:, :lt].reshape(txt.shape[0], lt, -1)
    txt = txt + _gate(self.txt_attn_proj(txt_out), tm[2], 1)
    txt = self._mlp_out("txt", txt, tm[3], tm[4], tm[5], 1)
    return constrain(img, _ACT, "image tokens"), constrain(txt, _ACT, "text tokens")

  def text_only(self, txt, vec_txt, txt_mask):
    """AR text pass: text attends to text; returns the new txt and its (K, V)."""
    cfg = self.cfg
    tm = [m[:, None] for m in self._mods("txt", vec_txt)]
    tq, tk, tv = self._qkv("txt", txt, tm[0], tm[1], 1)
    out = attention(tq, tk, tv, Mask(kv_valid=txt_mask, q_valid=txt_mask), impl=cfg.attention_impl,
                    block_kv=cfg.attention_block_kv)
    txt = txt + _gate(self.txt_attn_proj(out.reshape(txt.shape)), tm[2], 1)
    txt = self._mlp_out("txt", txt, tm[3], tm[4], tm[5], 1)
    return txt, (tk, tv)

  def vision(self, img, vec_img, rope, prope, txt_k, txt_v, txt_mask, ctx_k, ctx_v, ctx_valid, self_valid=None):
    """AR vision pass. Queries of both branches attend to [text; context; self].

    ctx_k/ctx_v: [2, B, N, H, D] or None. Returns new img and this call's (K, V) [2,B,S,H,D].
    """
    cfg = self.cfg
    b, s, _ = img.shape
    frames = vec_img.shape[1]
    im = self._mods("img", vec_img)
    iq, ik, iv = self._qkv("img", img, im[0], im[1], frames)
    pt, pinv, p = prope
    pq, pk, pv = apply_projmat(iq, pt, frames), apply_projmat(ik, pinv, frames), apply_projmat(iv, pinv, frames)
    iq, ik = apply_rope(iq, *rope), apply_rope(ik, *rope)
    self_k = jnp.stack([ik, pk])
    self_v = jnp.stack([iv, pv])
    # Caches of batch 1 serve a batch of b candidates: broadcast here, inside the layer, so
    # only one layer's expanded K/V is ever alive (never [L, b, ...] copies of the cache).
    bb = lambda x, axis: jnp.broadcast_to(x, x.shape[:axis] + (b,) + x.shape[axis + 1:])
    keys = [jnp.broadcast_to(bb(txt_k, 0)[None], (2, b) + txt_k.shape[1:])]
    vals = [jnp.broadcast_to(bb(txt_v, 0)[None], (2, b) + txt_v.shape[1:])]
    valid = [bb(txt_mask, 0)]
    if ctx_k is not None:
      keys.append(bb(ctx_k, 1))
      vals.append(bb(ctx_v, 1))
      valid.append(bb(ctx_valid, 0))
    keys.append(self_k)
    vals.append(self_v)
    valid.append(jnp.ones((b, s), bool) if self_valid is None else self_valid)
    # the RoPE and PRoPE branches as 2H heads, head h's two branches side by side ([2, B, L, H, D]
    # -> [B, L, 2H, D]): the batch and the `tensor` split of the heads stay as they are
    heads = lambda x: jnp.moveaxis(x, 0, 3).reshape(x.shape[1:3] + (2 * x.shape[3], x.shape[4]))
    k_all = heads(jnp.concatenate(keys, axis=2))
    v_all = heads(jnp.concatenate(vals, axis=2))
    kv_valid = jnp.concatenate(valid, axis=1)
    q_all = constrain(heads(jnp.stack([iq, pq])), _ACT_HEADS, "vision queries")
    out = attention(q_all, k_all, v_all, Mask(kv_valid=kv_valid), impl=cfg.attention_impl,
                    block_kv=cfg.attention_block_kv)
    out = out.reshape(out.shape[:2] + (out.shape[2] // 2, 2, out.shape[3]))
    img = self._img_attn_out(img, out[..., 0, :], out[..., 1, :], p, im[2], frames)
    img = self._mlp_out("img", img, im[3], im[4], im[5], frames)
    return constrain(img, _ACT, "image tokens"), (self_k, self_v)


# ----------------------------------------------------------------------------- the model

class WorldPlayDiT(nnx.Module):
  """HunyuanVideo-1.5 DiT (double-stream only) + WorldPlay action label and PRoPE branches."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.hidden_size
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
    pt, ph, pw = cfg.patch_size
    self.img_in = dense(cfg.in_channels * pt * ph * pw, c, ("in_features", "embed"), **kw)
    self.time_in = TimestepEmbedder(c, **kw)
    self.action_in = TimestepEmbedder(c, zero_out=True, **kw)
    self.txt_in = TokenRefiner(cfg, rngs=rngs)
    self.byt5_in = ByT5Mapper(cfg, rngs=rngs)
    self.vision_in = VisionProjection(cfg, rngs=rngs)
    self.cond_type_embedding = nnx.Param(jnp.zeros((3, c), cfg.params_dtype), out_sharding=("vocab", "embed"))

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return DoubleStreamBlock(cfg, rngs=rngs)

    self.double_blocks = make_blocks(rngs)
    self.final_adaLN = dense(c, 2 * c, ("embed", "modulation"), kernel_init=nnx.initializers.zeros_init(), **kw)
    self.final_linear = dense(c, pt * ph * pw * cfg.out_channels, ("embed", "in_features"),
                              kernel_init=nnx.initializers.zeros_init(), **kw)

  # -- layer loop: nnx.scan over the stacked blocks, each under nnx.remat
  def _scan(self, fn, carry, xs):
    cfg = self.cfg

    def body(block, carry, x):
      return fn(block, carry, x)

    if cfg.remat_policy != "none":
      body = nnx.remat(body, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
    scan = nnx.scan(body, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0), length=cfg.depth)
    return scan(self.double_blocks, carry, xs)

  # -- inputs
  def _check_video(self, hidden_states):
    cfg = self.cfg
    if hidden_states.ndim != 5 or hidden_states.shape[1] != cfg.in_channels:
      raise ValueError(f"hidden_states must be [B, {cfg.in_channels}, T, H, W] (latents | cond latents | mask), "
                       f"got {tuple(hidden_states.shape)}")
    _, _, t, h, w = hidden_states.shape
    pt, ph, pw = cfg.patch_size
    if t % pt or h % ph or w % pw:
      raise ValueError(f"latent size (T,H,W)=({t},{h},{w}) must be divisible by patch {cfg.patch_size}")
    return t // pt, h // ph, w // pw

  def _patchify(self, x):
    pt, ph, pw = self.cfg.patch_size
    tokens = einops.rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)
    return constrain(self.img_in(tokens.astype(self.cfg.compute_dtype)), _ACT, "image tokens")

  def _unpatchify(self, x, t, h, w):
    pt, ph, pw = self.cfg.patch_size
    return einops.rearrange(x, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt,
                            ph=ph, pw=pw)

  def _frame_vec(self, timestep, action, batch: int, frames: int):
    """Per latent frame: time embedding + action-label embedding, [B, T, C]."""
    timestep = _per_frame_input(timestep, batch, frames, "timestep")
    vec = self.time_in(timestep.reshape(-1))
    if action is not None:
      action = _per_frame_input(action, batch, frames, "action")
      vec = vec + self.action_in(action.reshape(-1).astype(jnp.float32))
    return vec.reshape(batch, frames, -1)

  def _cameras(self, viewmats, Ks, batch, frames):
    if viewmats is None or Ks is None:
      raise ValueError("viewmats [B,T,4,4] and Ks [B,T,3,3] are required (WorldPlay's PRoPE branch)")
    if viewmats.shape != (batch, frames, 4, 4):
      raise ValueError(f"viewmats must be [B,T,4,4]=({batch},{frames},4,4), got {tuple(viewmats.shape)}")
    if Ks.shape != (batch, frames, 3, 3):
      raise ValueError(f"Ks must be [B,T,3,3]=({batch},{frames},3,3), got {tuple(Ks.shape)}")
    return prope_matrices(viewmats, Ks)

  def encode_text(self, text_states, text_mask, byt5_states, byt5_mask, vision_states, timestep_txt,
                  vision_mask=None) -> TextTokens:
    """LLM tokens (refiner) + ByT5 tokens + vision tokens -> [vision | byt5 | text] valid first."""
    cfg = self.cfg
    b = text_states.shape[0]
    for name, x, d in (("text_states", text_states, cfg.text_dim), ("byt5_text_states", byt5_states, cfg.byt5_in_dim),
                       ("vision_states", vision_states, cfg.vision_dim)):
      if x.ndim != 3 or x.shape[0] != b or x.shape[-1] != d:
        raise ValueError(f"{name} must be [B={b}, L, {d}], got {tuple(x.shape)}")
    for name, m, x in (("encoder_attention_mask", text_mask, text_states), ("byt5_text_mask", byt5_mask, byt5_states)):
      if m.shape != x.shape[:2]:
        raise ValueError(f"{name} must be [B, L]={tuple(x.shape[:2])}, got {tuple(m.shape)}")
    timestep_txt = jnp.broadcast_to(jnp.asarray(timestep_txt, jnp.float32).reshape(-1), (b,))
    text_mask = text_mask.astype(bool)
    byt5_mask = byt5_mask.astype(bool)
    vision_mask = jnp.ones(vision_states.shape[:2], bool) if vision_mask is None else vision_mask.astype(bool)
    cte = self.cond_type_embedding[...].astype(cfg.compute_dtype)
    vec_txt = self.time_in(timestep_txt)
    txt = self.txt_in(text_states.astype(cfg.compute_dtype), timestep_txt, text_mask) + cte[0]
    byt5 = self.byt5_in(byt5_states.astype(cfg.compute_dtype)) + cte[1]
    vis = self.vision_in(vision_states.astype(cfg.compute_dtype)) + cte[2]
    tokens = jnp.concatenate([vis, byt5, txt], axis=1)
    mask = jnp.concatenate([vision_mask, byt5_mask, text_mask], axis=1)
    # stable sort: valid tokens first in segment order, padding after (and zeroed)
    order = jnp.argsort(jnp.where(mask, 0, 1), axis=1, stable=True)
    tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
    mask = jnp.take_along_axis(mask, order, axis=1)
    tokens = jnp.where(mask[..., None], tokens, 0).astype(cfg.compute_dtype)
    return TextTokens(constrain(tokens, _ACT, "text tokens"), mask, vec_txt)

  # -- call path (a): full forward
  def forward(self, hidden_states, timestep, text: TextTokens, *, action=None, viewmats=None, Ks=None,
              causal: bool = False, collect: bool = False):
    """Velocity [B, C, T, H, W] for latents+conditions `hidden_states` [B, 2C+1, T, H, W].

    timestep/action: [B, T] or [T] (one per latent frame). causal: chunk-causal mask with
    `cfg.chunk_latents` latent frames per chunk (base training); else bidirectional.
    collect: also return (per-layer img [L,B,S,C], per-layer txt [L,B,Lt,C], final tokens).
    """
    cfg = self.cfg
    b = hidden_states.shape[0]
    t, h, w = self._check_video(hidden_states)
    img = self._patchify(hidden_states)
    vec = self._frame_vec(timestep, action, b, t)
    prope = self._cameras(viewmats, Ks, b, t)
    rope = rope_tables(cfg.rope_dims, cfg.rope_theta, t, h, w)
    if causal:
      chunk_ids = (np.full(text.tokens.shape[1], -1, np.int32),
                   np.repeat(np.arange(t) // cfg.chunk_latents, h * w).astype(np.int32))
    else:
      chunk_ids = (None, None)

    def fn(block, carry, _):
      img, txt = carry
      carry = block.joint(img, txt, vec, text.vec, rope, prope, text.mask, chunk_ids)
      return carry, (carry if collect else None)

    (img, _), per_layer = self._scan(fn, (img, text.tokens), None)
    tokens = self._final_tokens(img, vec, t)
    out = self._unpatchify(tokens, t, h, w)
    if collect:
      return out, (per_layer[0], per_layer[1], tokens)
    return out

  def _final_tokens(self, img, vec, t):
    shift, scale = jnp.split(self.final_adaLN(jax.nn.silu(vec)), 2, axis=-1)
    return self.final_linear(_modulate(_layer_norm(img), shift, scale, t))

  def _final(self, img, vec, t, h, w):
    return self._unpatchify(self._final_tokens(img, vec, t), t, h, w)

  # -- call path (b): autoregressive with explicit caches
  def text_cache(self, text: TextTokens) -> TextCache:
    """Runs the text stream alone (text attends to text) and keeps every layer's K/V."""

    def fn(block, txt, _):
      return block.text_only(txt, text.vec, text.mask)

    _, (k, v) = self._scan(fn, text.tokens, None)
    return TextCache(k, v, text.mask)

  def _vision_pass(self, hidden_states, timestep, action, viewmats, Ks, cache: TextCache, ctx: VisionCache | None,
                   t_start, self_valid=None):
    cfg = self.cfg
    b = hidden_states.shape[0]
    t, h, w = self._check_video(hidden_states)
    if cache.k.shape[0] != cfg.depth or cache.k.shape[1] not in (1, b):
      raise ValueError(f"text cache is for {cache.k.shape[0]} layers / batch {cache.k.shape[1]}, "
                       f"model has {cfg.depth} layers and the input batch is {b} (a cache of batch 1 is shared)")
    if ctx is not None and ctx.k.shape[2] not in (1, b):
      raise ValueError(f"context cache batch {ctx.k.shape[2]} must be 1 (shared) or the input batch {b}")
    img = self._patchify(hidden_states)
    vec = self._frame_vec(timestep, action, b, t)
    prope = self._cameras(viewmats, Ks, b, t)
    rope = rope_tables(cfg.rope_dims, cfg.rope_theta, t, h, w, t_start=t_start)
    if ctx is None:
      xs = (cache.k, cache.v, None, None)
      ctx_valid = None
    else:
      xs = (cache.k, cache.v, ctx.k, ctx.v)
      ctx_valid = ctx.valid

    def fn(block, img, x):
      tk, tv, ck, cv = x
      return block.vision(img, vec, rope, prope, tk, tv, cache.mask, ck, cv, ctx_valid, self_valid)

    img, kv = self._scan(fn, img, xs)
    return img, kv, vec, (t, h, w)

  def context_cache(self, hidden_states, action, viewmats, Ks, cache: TextCache, *, timestep=None,
                    valid=None) -> VisionCache:
    """Context latents [B, 2C+1, N, H, W] run once (RoPE t = 0..N-1, timestep
    `cfg.context_timestep`) -> per-layer vision K/V. `valid` [B, N] marks padded frames."""
    b, _, n = hidden_states.shape[:3]
    if timestep is None:
      timestep = jnp.full((b, n), self.cfg.context_timestep, jnp.float32)
    if valid is not None and valid.shape != (b, n):
      raise ValueError(f"valid must be [B, N]=({b},{n}), got {tuple(valid.shape)}")
    frame_valid = jnp.ones((b, n), bool) if valid is None else valid.astype(bool)
    h, w = hidden_states.shape[3] // self.cfg.patch_size[1], hidden_states.shape[4] // self.cfg.patch_size[2]
    token_valid = jnp.repeat(frame_valid, h * w, axis=1)
    _, (k, v), _, _ = self._vision_pass(hidden_states, timestep, action, viewmats, Ks, cache, None, 0,
                                        self_valid=None if valid is None else token_valid)
    return VisionCache(k, v, token_valid, jnp.sum(frame_valid, axis=1).astype(jnp.int32))

  def denoise_chunk(self, hidden_states, timestep, action, viewmats, Ks, cache: TextCache,
                    ctx: VisionCache | None = None):
    """Velocity of a target chunk [B, 2C+1, 4, H, W] attending to [text; context; itself].

    The chunk's temporal RoPE index starts at the number of valid context frames.
    """
    if ctx is not None:
      # RoPE tables are shared across the batch: rows are expected to have the same context
      # length (the RL rollout's candidates all share one context).
      t_start = ctx.frames[0]
    else:
      t_start = 0
    img, _, vec, (t, h, w) = self._vision_pass(hidden_states, timestep, action, viewmats, Ks, cache, ctx, t_start)
    return self._final(img, vec, t, h, w)


def _per_frame_input(x, batch: int, frames: int, name: str):
  x = jnp.asarray(x)
  if x.ndim == 1 and x.shape[0] == frames:
    return jnp.broadcast_to(x[None], (batch, frames))
  if x.ndim == 1 and x.shape[0] == batch * frames:
    return x.reshape(batch, frames)
  if x.shape == (batch, frames):
    return x
  raise ValueError(f"{name} must have one value per latent frame: [B, T]=({batch},{frames}) or [T], "
                   f"got {tuple(x.shape)}")


def build(cfg: DiTConfig, seed: int = 0) -> WorldPlayDiT:
  return WorldPlayDiT(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: DiTConfig) -> WorldPlayDiT:
  """The model with ShapeDtypeStruct leaves: no memory allocated (8B planning, conversion)."""
  return nnx.eval_shape(lambda: WorldPlayDiT(cfg, rngs=nnx.Rngs(0)))


def load_params(model: nnx.Module, params: dict) -> nnx.Module:
  """Assigns a nested dict of arrays (wc_jax layout, e.g. from a converter) to `model`."""
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  missing, extra = _dict_diff(pure, params)
  if missing or extra:
    raise ValueError(f"parameter tree does not match the model: missing {missing[:10]}, unexpected {extra[:10]}")
  def check(path, want, got):
    if tuple(want.shape) != tuple(np.shape(got)):
      raise ValueError(f"parameter {'/'.join(map(str, path))}: model {tuple(want.shape)} vs given {np.shape(got)}")
    return jnp.asarray(got, dtype=want.dtype)
  new = jax.tree_util.tree_map_with_path(lambda p, w, g: check([getattr(k, "key", k) for k in p], w, g), pure,
                                         _as_pure(params, pure))
  nnx.replace_by_pure_dict(state, new)
  nnx.update(model, state)
  return model


def _as_pure(params, like):
  """Keys of nnx.List entries are ints in pure dicts; converted checkpoints use strings."""
  if isinstance(like, dict):
    out = {}
    for k in like:
      src = params.get(k, params.get(str(k)))
      out[k] = _as_pure(src, like[k])
    return out
  return params


def _dict_diff(a, b, prefix=""):
  missing, extra = [], []
  if isinstance(a, dict) and isinstance(b, dict):
    ka = {str(k): k for k in a}
    kb = {str(k): k for k in b}
    for k in ka:
      if k not in kb:
        missing.append(prefix + k)
      else:
        m, e = _dict_diff(a[ka[k]], b[kb[k]], prefix + k + "/")
        missing += m
        extra += e
    extra += [prefix + k for k in kb if k not in ka]
  return missing, extra


@dataclasses.dataclass(frozen=True)
class Apply:
  """apply(state, method, *args, **kwargs): a pure call of `method` on the model rebuilt from
  `state`. Hashable by the model's structure, so it can be a static argument of jax.jit and
  two models of one config share compiled programs."""
  graphdef: object

  def __call__(self, state, method: str, *args, **kwargs):
    return getattr(nnx.merge(self.graphdef, state), method)(*args, **kwargs)


def functional(model: nnx.Module):
  """(apply, state) with apply an `Apply`: wrap it in jax.jit with explicit shardings and
  donation (`method` and kwargs must be static python values or arrays)."""
  graphdef, state = nnx.split(model)
  return Apply(graphdef), state


def randomize(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """Re-draws every parameter with the fixtures' rule, zero-initialised ones included, so a
  random model has non-trivial outputs (demos, tests): kernels N(0, 1/fan_in), norm scales
  1 + 0.1 N, biases 0.1 N, cond-type table 0.5 N. Real runs load a checkpoint instead."""
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    shape, dtype = x.shape, x.dtype
    stacked = any(str(getattr(p, "key", p)) == "double_blocks" for p in path)
    core = shape[1:] if stacked else shape
    if name == "cond_type_embedding":
      v = 0.5 * rng.standard_normal(shape)
    elif name == "kernel":
      v = rng.standard_normal(shape) / np.sqrt(core[0])
    elif name == "weight":
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
      v = 0.1 * rng.standard_normal(shape)
    return jnp.asarray(v, dtype)

  pure = nnx.to_pure_dict(state)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, pure))
  nnx.update(model, state)
  return model
