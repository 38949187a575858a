"""Clip-level rollouts (WorldCompass §1.1): O(N + G) model passes instead of O(N * G).

For target clip n (1-indexed; latents 4(n-1)..4n-1):
  1. the prefix (clips 1..n-1) is generated once with the rollout policy (AR rollout);
  2. the context of clip n is chosen (recent + first chunk + FOV retrieval, <= 20 latents)
     and its K/V cache built once;
  3. G candidates of clip n are denoised from fresh noise in one batched program, every
     candidate attending to that one cache (broadcast, never copied).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax import sampling
from wc_jax.context import select_context
from wc_jax.models.worldplay.model import TextCache, TextTokens, VisionCache


@dataclasses.dataclass
class Trajectory:
  """One training trajectory (the reference trains one trajectory per data-parallel rank)."""
  text_states: np.ndarray       # [1, Lt, Dt]
  text_mask: np.ndarray         # [1, Lt]
  byt5_states: np.ndarray       # [1, Lb, Db]
  byt5_mask: np.ndarray         # [1, Lb]
  vision_states: np.ndarray     # [1, Lv, Dv]
  first_latent: np.ndarray      # [C, H, W] the first frame's latent (i2v condition)
  actions: np.ndarray           # [T] 81-way labels, one per latent
  w2c: np.ndarray               # [T, 4, 4]
  Ks: np.ndarray                # [T, 3, 3] normalised intrinsics


@dataclasses.dataclass
class ClipRollout:
  clip: int                     # n, 1-indexed
  x0: jax.Array                 # [G, C, chunk, H, W] clean candidate latents (rollout policy)
  prefix: jax.Array             # [1, C, chunk*(n-1), H, W] generated prefix latents
  cond: jax.Array               # [1, C+1, chunk, H, W] condition channels of the clip
  action: jax.Array             # [1, chunk]
  viewmats: jax.Array           # [1, chunk, 4, 4]
  Ks: jax.Array                 # [1, chunk, 3, 3]
  text_cache: TextCache
  ctx: VisionCache | None
  context_indices: list[int]
  chunk_generations: int        # prefix chunks + G candidate chunks (the O(N + G) count)
  dit_calls: int                # batched DiT invocations (text, context, Euler steps)


def cond_latents(first_latent: np.ndarray, frames: int) -> np.ndarray:
  """[1, C+1, T, H, W]: the first-frame latent on frame 0, zeros elsewhere, and the i2v mask."""
  c, h, w = first_latent.shape
  cond = np.zeros((1, c + 1, frames, h, w), np.float32)
  cond[0, :c, 0] = first_latent
  cond[0, c, 0] = 1.0
  return cond


@functools.partial(jax.jit, static_argnums=(0,))
def _text_fn(apply, state, text):
  return apply(state, "text_cache", text)


@functools.partial(jax.jit, static_argnums=(0, 8))
def _context_fn(apply, state, hs, a, vm, k, tc, valid, context_timestep):
  return apply(state, "context_cache", hs, a, vm, k, tc, valid=valid,
               timestep=jnp.full(a.shape, context_timestep, jnp.float32))


@functools.partial(jax.jit, static_argnums=(0,))
def _candidates_fn(apply, state, noise, cond, a, vm, k, tc, ctx, sig):
  """Euler-integrates G candidates (batch of `noise`) against one broadcast context."""
  g = noise.shape[0]
  bc = lambda x: jnp.broadcast_to(x, (g,) + x.shape[1:])

  def vel(x, t, aux):
    st, tc, ctx = aux   # batch-1 caches: the model broadcasts them layer by layer
    hs = jnp.concatenate([x, bc(cond)], axis=1)
    return apply(st, "denoise_chunk", hs, jnp.full((g, a.shape[1]), t), bc(a), bc(vm), bc(k), tc, ctx)

  return sampling.euler(vel, noise, sig, (state, tc, ctx))


class ClipRolloutEngine:
  """Jitted pieces of the rollout for one model (apply) and static shapes.

  Contexts are padded to `memory_frames`, so every clip index uses the same compiled
  context and candidate programs.
  """

  def __init__(self, apply, *, chunk: int, steps: int, shift: float, memory_frames: int = 20,
               recent: int = 12, context_timestep: float = 14.0, points_local: np.ndarray | None = None):
    self.apply = apply
    self.chunk = chunk
    self.sig = sampling.sigmas(steps, shift)
    self.steps = steps
    self.memory_frames = memory_frames
    self.recent = recent
    self.context_timestep = context_timestep
    if points_local is None:
      from wc_jax.context import sphere_points
      points_local = sphere_points(50000, 8.0)
    self.points_local = points_local
    self._sig = jnp.asarray(self.sig)
    self._text = functools.partial(_text_fn, apply)
    self._context = lambda *args: _context_fn(apply, *args, context_timestep)
    self._candidates = lambda *args: _candidates_fn(apply, *args, self._sig)

  def encode_text(self, model_state, text: TextTokens) -> TextCache:
    return self._text(model_state, text)

  def context(self, model_state, latents, cond, traj: Trajectory, start: int, text_cache: TextCache):
    """Context cache for the chunk starting at latent `start` (None for the first chunk)."""
    if start == 0:
      return None, []
    idx = select_context(traj.w2c, start, self.points_local, memory_frames=self.memory_frames,
                         recent=self.recent, chunk=self.chunk)
    n = len(idx)
    take = np.asarray(idx + [idx[-1]] * (self.memory_frames - n))
    valid = jnp.asarray(np.arange(len(take)) < n)[None]
    hs = jnp.concatenate([latents[:, :, take], cond[:, :, take]], axis=1)
    ctx = self._context(model_state, hs, jnp.asarray(traj.actions[None, take], jnp.float32),
                        jnp.asarray(traj.w2c[None, take], jnp.float32), jnp.asarray(traj.Ks[None, take], jnp.float32),
                        text_cache, valid)
    return ctx, idx

  def rollout(self, model_state, text: TextTokens, traj: Trajectory, clip: int, num_candidates: int,
              key: jax.Array) -> ClipRollout:
    """Prefix once, context once, G candidates of clip `clip` batched."""
    chunk = self.chunk
    frames = chunk * clip
    if clip < 1 or frames > len(traj.actions):
      raise ValueError(f"clip {clip} needs {frames} latents; the trajectory has {len(traj.actions)}")
    c, h, w = traj.first_latent.shape
    cond = jnp.asarray(cond_latents(traj.first_latent, frames))
    k_prefix, k_cand = jax.random.split(key)
    latents = jax.random.normal(k_prefix, (1, c, frames, h, w), jnp.float32)
    text_cache = self.encode_text(model_state, text)
    calls = 1
    a_all = jnp.asarray(traj.actions[None, :frames], jnp.float32)
    vm_all = jnp.asarray(traj.w2c[None, :frames], jnp.float32)
    k_all = jnp.asarray(traj.Ks[None, :frames], jnp.float32)
    for ci in range(clip - 1):                 # the prefix, generated once
      s0 = ci * chunk
      sl = slice(s0, s0 + chunk)
      ctx, _ = self.context(model_state, latents, cond, traj, s0, text_cache)
      calls += (ctx is not None) + self.steps
      x = self._candidates(model_state, latents[:, :, sl], cond[:, :, sl], a_all[:, sl], vm_all[:, sl], k_all[:, sl],
                           text_cache, ctx)
      latents = latents.at[:, :, sl].set(x)
    s0 = (clip - 1) * chunk
    sl = slice(s0, s0 + chunk)
    ctx, idx = self.context(model_state, latents, cond, traj, s0, text_cache)
    calls += (ctx is not None) + self.steps
    noise = jax.random.normal(k_cand, (num_candidates, c, chunk, h, w), jnp.float32)
    x0 = self._candidates(model_state, noise, cond[:, :, sl], a_all[:, sl], vm_all[:, sl], k_all[:, sl],
                          text_cache, ctx)
    return ClipRollout(clip=clip, x0=x0, prefix=latents[:, :, :s0], cond=cond[:, :, sl], action=a_all[:, sl],
                       viewmats=vm_all[:, sl], Ks=k_all[:, sl], text_cache=text_cache, ctx=ctx, context_indices=idx,
                       chunk_generations=(clip - 1) + num_candidates, dit_calls=calls)
