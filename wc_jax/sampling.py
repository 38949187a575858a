"""Flow-matching sampling: the shifted sigma schedule, Euler steps, and the AR rollout.

sigma = linspace(1, 0, N+1), shifted sigma' = s*sigma / (1 + (s-1)*sigma); the model sees
t = 1000*sigma'; Euler: x <- x + (sigma'_{i+1} - sigma'_i) * v.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.context import select_context


def sigmas(steps: int, shift: float = 5.0) -> np.ndarray:
  """[steps+1] float32 shifted schedule, from 1 to 0."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  s = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)
  return (shift * s / (1.0 + (shift - 1.0) * s)).astype(np.float32)


def euler(velocity_fn: Callable, x, sig, aux=None):
  """Integrates dx/dsigma = v from sig[0] to sig[-1]; velocity_fn(x, t, aux), t = 1000*sigma.

  `aux` (e.g. model state and caches) rides in the loop carry, so modules merged inside
  velocity_fn live at the loop's trace level (what nnx transforms require)."""
  sig = jnp.asarray(sig, jnp.float32)

  def step(i, carry):
    x, aux = carry
    v = velocity_fn(x, sig[i] * 1000.0, aux)
    return (x + (sig[i + 1] - sig[i]) * v.astype(jnp.float32)).astype(x.dtype), aux

  return jax.lax.fori_loop(0, sig.shape[0] - 1, step, (x, aux))[0]


@dataclasses.dataclass
class Rollout:
  latents: np.ndarray                 # [B, C, T, H, W] final latents
  context_indices: list[list[int]]    # per chunk, the context latents used
  model_passes: int                   # number of DiT calls (text + context + denoising)


def ar_rollout(apply, state, *, latents, cond_latents, viewmats, Ks, action, text, sig, points_local,
               chunk: int = 4, memory_frames: int = 20, recent: int = 12, context_timestep: float = 14.0,
               chunks: int | None = None, pad_context: bool = True) -> Rollout:
  """Autoregressive generation of `latents` [B, C, T, H, W] chunk by chunk (reference
  `_ar_rollout_inner`, no CFG). `apply`/`state` from `wc_jax.models.worldplay.model.functional`.

  cond_latents [B, C+1, T, H, W] (first-frame latent | mask); viewmats [B,T,4,4] w2c; Ks [B,T,3,3];
  action [B,T]; text: TextTokens. With pad_context, every context is padded to `memory_frames`
  latents (masked), so one compiled program serves every chunk.
  """
  b, c, t, h, w = latents.shape
  n_chunks = chunks or t // chunk
  if n_chunks * chunk > t:
    raise ValueError(f"{n_chunks} chunks of {chunk} latents need T >= {n_chunks * chunk}, got {t}")
  text_cache = jax.jit(lambda st, x: apply(st, "text_cache", x))(state, text)
  passes = 1
  sig = jnp.asarray(sig, jnp.float32)

  @jax.jit
  def context(st, hs, a, vm, k, tc, valid):
    return apply(st, "context_cache", hs, a, vm, k, tc, valid=valid,
                 timestep=jnp.full(a.shape, context_timestep, jnp.float32))

  @jax.jit
  def denoise(st, x, cond, a, vm, k, tc, ctx):
    def vel(x, tt, aux):
      st, tc, ctx = aux
      hs = jnp.concatenate([x, cond], axis=1)
      return apply(st, "denoise_chunk", hs, jnp.full(a.shape, tt), a, vm, k, tc, ctx)
    return euler(vel, x, sig, (st, tc, ctx))

  lat = jnp.asarray(latents)
  cond_all = jnp.asarray(cond_latents)
  vm_all, k_all, a_all = jnp.asarray(viewmats), jnp.asarray(Ks), jnp.asarray(action)
  w2c_host = np.asarray(viewmats)[0]
  chosen: list[list[int]] = []
  for ci in range(n_chunks):
    s0 = ci * chunk
    sl = slice(s0, s0 + chunk)
    ctx = None
    idx = []
    if ci > 0:
      idx = select_context(w2c_host, s0, points_local, memory_frames=memory_frames, recent=recent, chunk=chunk)
      n = len(idx)
      pad = (memory_frames - n) if pad_context and n < memory_frames else 0
      take = np.asarray(idx + [idx[-1]] * pad)
      valid = jnp.asarray(np.arange(len(take)) < n)[None].repeat(b, 0)
      hs = jnp.concatenate([lat[:, :, take], cond_all[:, :, take]], axis=1)
      ctx = context(state, hs, a_all[:, take], vm_all[:, take], k_all[:, take], text_cache, valid)
      passes += 1
    chosen.append(idx)
    x = denoise(state, lat[:, :, sl], cond_all[:, :, sl], a_all[:, sl], vm_all[:, sl], k_all[:, sl], text_cache, ctx)
    passes += int(sig.shape[0]) - 1
    lat = lat.at[:, :, sl].set(x)
  return Rollout(np.asarray(lat), chosen, passes)
