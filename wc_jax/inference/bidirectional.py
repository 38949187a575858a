"""Bidirectional generation: the reference's `bi_rollout` (WorldPlay's bidirectional model).

The clip is generated in chunks of `chunk` latents (the reference: 16); each chunk is denoised
by full-attention forward passes of the DiT (`WorldPlayDiT.forward`, no chunk-causal mask, no
K/V caches) over [context latents; the chunk's latents]:

  context   for a chunk starting at s > 0: the union of the AR retrieval (`select_context`)
            of each of its `sub_chunk`-latent pieces (the reference: 4), minus the chunk itself;
            those latents are already clean and enter every step at `context_timestep`
            (the reference's stabilization level 15 - 1 = 14), with their own cameras and actions;
  cond      the i2v condition of the first positions of the window (cond[:, :, :n]), as the
            reference slices it: the first-frame latent sits on the window's first position;
  text      re-encoded at every step with timestep_txt = t (the bidirectional forward feeds the
            step's timestep to the text refiner and the text stream);
  update    Euler over the shifted sigmas; only the chunk's latents are kept.

Classifier-free guidance: v = v_neg + g (v - v_neg), both branches on the same window.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.inference.context import select_context
from wc_jax.inference.sampling import euler

TEXT_KEYS = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states")


def context_indices(w2c, start: int, chunk: int, points_local, *, sub_chunk: int = 4, memory_frames: int = 20,
                    recent: int = 12) -> list[int]:
  """Sorted context latents of the bidirectional chunk [start, start+chunk): the union of the
  AR retrieval of its `sub_chunk`-latent pieces, without the chunk's own latents."""
  if start == 0:
    return []
  picked: set[int] = set()
  for s in range(start, start + chunk, sub_chunk):
    picked.update(select_context(w2c, s, points_local, memory_frames=memory_frames, recent=recent, chunk=sub_chunk))
  return sorted(picked - set(range(start, start + chunk)))


def plan(w2c, num_latents: int, chunk: int, points_local, *, sub_chunk: int = 4, memory_frames: int = 20,
         recent: int = 12) -> list[tuple[int, int, list[int]]]:
  """(start, end, context indices) of every chunk: chunks of `chunk` latents (chunk 0 or one
  longer than the clip: the whole clip in one pass; the last may be shorter). Host-side, from
  the cameras alone, so the window sizes are known before any model runs."""
  chunk = num_latents if chunk <= 0 else min(chunk, num_latents)
  return [(s, min(s + chunk, num_latents),
           context_indices(w2c, s, min(s + chunk, num_latents) - s, points_local, sub_chunk=sub_chunk,
                           memory_frames=memory_frames, recent=recent))
          for s in range(0, num_latents, chunk)]


@functools.lru_cache(maxsize=None)
def _chunk_program(apply):
  """Euler over `sig` for one chunk x [1, C, c, h, w] beside clean context ctx [1, C, n, h, w]."""
  def run(state, x, ctx, cond, action, viewmats, Ks, pos, neg, sig, ctx_t, scale):
    n = ctx.shape[2]

    def vel(x, t, aux):
      st, pos, neg = aux
      hs = jnp.concatenate([jnp.concatenate([ctx, x], axis=2), cond], axis=1)
      tt = jnp.concatenate([jnp.full((1, n), ctx_t, jnp.float32), jnp.full((1, x.shape[2]), t, jnp.float32)], axis=1)

      def one(states):
        text = apply(st, "encode_text", *states, jnp.full((1,), t, jnp.float32))
        return apply(st, "forward", hs, tt, text, action=action, viewmats=viewmats, Ks=Ks)[:, :, n:]

      v = one(pos)
      if neg is not None:
        vn = one(neg)
        v = vn + scale * (v - vn)
      return v

    return euler(vel, x, sig, (state, pos, neg))
  return jax.jit(run)


@dataclasses.dataclass
class BiRollout:
  latents: jax.Array                  # [1, C, T, h, w]
  context_indices: list[list[int]]    # per chunk
  model_passes: int                   # DiT forward passes (CFG counts two per step)


def generate(apply, state, *, noise, cond, action, viewmats, Ks, states: dict, sig, chunks, neg_states=None,
             guidance: float = 1.0, context_timestep: float = 14.0, progress: bool = True) -> BiRollout:
  """The whole clip along `chunks` (from `plan`). noise [1, C, T, h, w], cond [1, C+1, T, h, w],
  action [1, T], viewmats [1, T, 4, 4], Ks [1, T, 3, 3]; states / neg_states: the DiT's encoder
  inputs keyed as `TEXT_KEYS` (batch 1)."""
  from tqdm import tqdm
  lat = jnp.asarray(noise, jnp.float32)
  cond, action = jnp.asarray(cond, jnp.float32), jnp.asarray(action, jnp.float32)
  viewmats, Ks = jnp.asarray(viewmats, jnp.float32), jnp.asarray(Ks, jnp.float32)
  pos = tuple(jnp.asarray(states[k]) for k in TEXT_KEYS)
  neg = None if neg_states is None else tuple(jnp.asarray(neg_states[k]) for k in TEXT_KEYS)
  sig = jnp.asarray(sig, jnp.float32)
  program = _chunk_program(apply)
  chosen, passes = [], 0
  for s, e, idx in tqdm(chunks, desc="chunks", unit="chunk", disable=not progress):
    take = np.asarray(list(idx) + list(range(s, e)))
    n = len(take)
    x = program(state, lat[:, :, s:e], lat[:, :, np.asarray(idx, int)], cond[:, :, :n], action[:, take],
                viewmats[:, take], Ks[:, take], pos, neg, sig, jnp.float32(context_timestep), jnp.float32(guidance))
    lat = lat.at[:, :, s:e].set(x)
    chosen.append(list(idx))
    passes += (sig.shape[0] - 1) * (1 if neg is None else 2)
  return BiRollout(lat, chosen, passes)
