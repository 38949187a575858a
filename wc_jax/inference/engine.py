"""The autoregressive chunk engine: one owner of the compiled programs of AR inference.

Generation (`wc_jax.generate`), the RL clip rollout (`wc_jax.rl.rollout`), the fixture replay
of the reference pipeline (`wc_jax.fixtures.dit`) and the before/after evaluation
(`wc_jax.world.evaluate`) all run chunks through one `ChunkEngine`:

  text cache   once per conditioning (batch 1; the model broadcasts it over any batch);
  context      for chunk start s > 0: context latents chosen on the host from the camera poses
               (`select_context`, FOV retrieval over `retrieval_points` points), padded to
               `memory_frames` (masked) so every chunk uses one compiled program, run once at
               `context_timestep` -> VisionCache;
  denoise      Euler over the shifted sigma schedule of a batch of noise against those caches;
               cond / action / cameras / caches of batch 1 serve a batch of G candidates.

The three programs are jitted once per engine (`traces` counts how often each was traced);
the engine holds no model weights, so one engine serves every weight version of a model.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.inference.context import select_context, sphere_points
from wc_jax.inference.sampling import euler, sigmas

# The reference samples 50000 points in a ball of radius 8 for the FOV-overlap retrieval
# (the DiT fixture's recorded rollout carries exactly these: points_local [50000, 3]).
RETRIEVAL_POINTS = 50000
RETRIEVAL_RADIUS = 8.0


def i2v_condition(first, frames: int) -> jax.Array:
  """[B, C, H, W] first-frame latents -> [B, C+1, T, H, W] image-to-video condition channels:
  the first-frame latent on frame 0, zeros elsewhere, and the i2v mask (1 on frame 0)."""
  first = jnp.asarray(first, jnp.float32)
  b, c, h, w = first.shape
  cond = jnp.zeros((b, c + 1, frames, h, w), jnp.float32)
  cond = cond.at[:, :c, 0].set(first)
  return cond.at[:, c, 0].set(1.0)


def denoise_candidates(apply, state, noise, cond, action, viewmats, Ks, text_cache, ctx, sig):
  """Euler-integrates a batch of `noise` [G, C, chunk, H, W] from sig[0] to sig[-1].

  cond [1|G, C+1, chunk, H, W], action [1|G, chunk], viewmats [1|G, chunk, 4, 4], Ks
  [1|G, chunk, 3, 3]; caches of batch 1 are broadcast layer by layer inside the model (one
  context serves every candidate, never copied). Pure: jit it (the engine does)."""
  g = noise.shape[0]
  bc = lambda x: jnp.broadcast_to(x, (g,) + x.shape[1:])

  def vel(x, t, aux):
    st, tc, ctx = aux
    hs = jnp.concatenate([x, bc(cond)], axis=1)
    return apply(st, "denoise_chunk", hs, jnp.full((g, action.shape[1]), t), bc(action), bc(viewmats), bc(Ks), tc, ctx)

  return euler(vel, noise, sig, (state, text_cache, ctx))


@dataclasses.dataclass
class Rollout:
  """A whole AR video."""
  latents: jax.Array                  # [B, C, T, H, W] final latents
  context_indices: list[list[int]]    # per chunk, the context latents used
  model_passes: int                   # DiT calls (text + context + denoising)


@dataclasses.dataclass
class ClipSample:
  """Prefix (clips 1..n-1) generated once, then G candidates of clip n against one context."""
  x0: jax.Array                       # [G, C, chunk, H, W] clean candidates
  prefix: jax.Array                   # [1, C, chunk*(n-1), H, W] generated prefix latents
  text_cache: Any                     # TextCache (batch 1)
  ctx: Any                            # VisionCache (batch 1) or None for clip 1
  context_indices: list[int]          # the context latents of clip n
  model_passes: int                   # batched DiT calls (text if encoded here, contexts, Euler steps)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


class ChunkEngine:
  """AR chunk inference for one model function `apply` (from `functional(model)`) and settings.

  Model state (weights) is an argument of every call, so one engine (and its compiled
  programs) serves the base model, the policy and its EMAs alike.
  """

  def __init__(self, apply, *, chunk: int, steps: int, shift: float, memory_frames: int = 20, recent: int = 12,
               context_timestep: float = 14.0, retrieval_points: int = RETRIEVAL_POINTS, retrieval_seed: int = 0,
               points_local: np.ndarray | None = None):
    self.apply = apply
    self.chunk = int(chunk)
    self.steps = int(steps)
    self.shift = float(shift)
    self.memory_frames = int(memory_frames)
    self.recent = int(recent)
    self.context_timestep = float(context_timestep)
    self.sig = sigmas(self.steps, self.shift)
    if points_local is None:
      points_local = sphere_points(int(retrieval_points), RETRIEVAL_RADIUS, seed=retrieval_seed)
    self.points_local = np.asarray(points_local, np.float32)
    self.retrieval_points = len(self.points_local)
    self._sig = jnp.asarray(self.sig)
    self.traces: collections.Counter = collections.Counter()   # how often each program was traced
    self._text = jax.jit(self._text_program)
    self._context = jax.jit(self._context_program)
    self._denoise = jax.jit(self._denoise_program)
    # the compiled candidate denoiser, public so that `python -m wc_jax.plan --path=rollout`
    # lowers the very program the RL rollout runs
    self.denoise_program = self._denoise

  @classmethod
  def from_config(cls, apply, cfg, **overrides) -> "ChunkEngine":
    """Settings from a run config: model.chunk_latents / context_timestep and the sampling
    section (steps, shift, max/recent context frames, optional retrieval_points)."""
    s, m = cfg.sampling, cfg.model
    kw = dict(chunk=int(m.chunk_latents), steps=int(s.steps), shift=float(s.shift),
              memory_frames=int(s.max_context_frames), recent=int(s.recent_context_frames),
              context_timestep=float(m.get("context_timestep", 14.0)),
              retrieval_points=int(s.get("retrieval_points", RETRIEVAL_POINTS)))
    kw.update(overrides)
    return cls(apply, **kw)

  # -- the compiled programs
  def _text_program(self, state, text):
    self.traces["text"] += 1
    return self.apply(state, "text_cache", text)

  def _context_program(self, state, hs, action, viewmats, Ks, text_cache, valid):
    self.traces["context"] += 1
    return self.apply(state, "context_cache", hs, action, viewmats, Ks, text_cache, valid=valid,
                      timestep=jnp.full(action.shape, self.context_timestep, jnp.float32))

  def _denoise_program(self, state, noise, cond, action, viewmats, Ks, text_cache, ctx, sig):
    self.traces["denoise"] += 1
    return denoise_candidates(self.apply, state, noise, cond, action, viewmats, Ks, text_cache, ctx, sig)

  # -- the pieces
  def encode_text(self, state, text):
    """TextTokens -> TextCache (one DiT pass)."""
    return self._text(state, text)

  def select_context(self, w2c, start: int) -> list[int]:
    """Sorted context latent indices of the chunk starting at `start`; w2c [T, 4, 4] on the host."""
    return select_context(w2c, start, self.points_local, memory_frames=self.memory_frames, recent=self.recent,
                          chunk=self.chunk)

  def context(self, state, latents, cond, action, viewmats, Ks, start: int, text_cache, w2c=None):
    """(VisionCache, indices) of the chunk starting at latent `start`; (None, []) for start 0.

    latents [B, C, >=start, H, W], cond [B, C+1, ...], action [B, T], viewmats [B, T, 4, 4],
    Ks [B, T, 3, 3]; retrieval uses `w2c` (default viewmats[0]) for the whole batch."""
    if start == 0:
      return None, []
    w2c = np.asarray(viewmats)[0] if w2c is None else np.asarray(w2c)
    idx = self.select_context(w2c, start)
    n = len(idx)
    take = np.asarray(idx + [idx[-1]] * max(0, self.memory_frames - n))
    b = latents.shape[0]
    valid = jnp.asarray(np.arange(len(take)) < n)[None].repeat(b, 0)
    hs = jnp.concatenate([latents[:, :, take], cond[:, :, take]], axis=1)
    ctx = self._context(state, hs, action[:, take], viewmats[:, take], Ks[:, take], text_cache, valid)
    return ctx, idx

  def denoise(self, state, noise, cond, action, viewmats, Ks, text_cache, ctx):
    """Clean latents of a chunk for each noise in the batch (`denoise_candidates`)."""
    return self._denoise(state, noise, cond, action, viewmats, Ks, text_cache, ctx, self._sig)

  def _text_cache(self, state, text, text_cache):
    if (text is None) == (text_cache is None):
      raise ValueError("pass exactly one of text (TextTokens) and text_cache (TextCache)")
    if text_cache is not None:
      return text_cache, 0
    return self.encode_text(state, text), 1

  def _ar(self, state, lat, cond, action, viewmats, Ks, text_cache, w2c, n_chunks: int):
    """Chunks 0..n_chunks-1 of `lat` in place; returns (latents, context indices, passes)."""
    chosen, passes = [], 0
    for ci in range(n_chunks):
      s0 = ci * self.chunk
      sl = slice(s0, s0 + self.chunk)
      ctx, idx = self.context(state, lat, cond, action, viewmats, Ks, s0, text_cache, w2c)
      passes += (ctx is not None) + self.steps
      chosen.append(idx)
      x = self.denoise(state, lat[:, :, sl], cond[:, :, sl], action[:, sl], viewmats[:, sl], Ks[:, sl], text_cache,
                       ctx)
      lat = lat.at[:, :, sl].set(x)
    return lat, chosen, passes

  # -- the callers' entry points
  def generate(self, state, *, latents, cond, viewmats, Ks, action, text=None, text_cache=None,
               chunks: int | None = None, w2c=None) -> Rollout:
    """Autoregressive generation of `latents` [B, C, T, H, W] (the initial noise) chunk by
    chunk (reference `_ar_rollout_inner`, no CFG).

    cond [B, C+1, T, H, W] (`i2v_condition`); viewmats [B, T, 4, 4] w2c; Ks [B, T, 3, 3];
    action [B, T]; text: TextTokens (encoded here, one pass) or text_cache: TextCache;
    chunks: how many chunks (default T // chunk); w2c: the poses used for context retrieval
    (default viewmats[0], shared by the batch)."""
    t = latents.shape[2]
    n_chunks = chunks or t // self.chunk
    if n_chunks * self.chunk > t:
      raise ValueError(f"{n_chunks} chunks of {self.chunk} latents need T >= {n_chunks * self.chunk}, got {t}")
    tc, passes = self._text_cache(state, text, text_cache)
    w2c = np.asarray(viewmats)[0] if w2c is None else w2c
    lat, chosen, n = self._ar(state, _f32(latents), _f32(cond), _f32(action), _f32(viewmats), _f32(Ks), tc, w2c,
                              n_chunks)
    return Rollout(lat, chosen, passes + n)

  def clip_candidates(self, state, *, clip: int, prefix_noise, candidate_noise, cond, viewmats, Ks, action,
                      text=None, text_cache=None, w2c=None) -> ClipSample:
    """The prefix (clips 1..clip-1) generated once from `prefix_noise` [1, C, chunk*(clip-1), H, W],
    the context of clip `clip` built once, and the G candidates `candidate_noise` [G, C, chunk, H, W]
    denoised in one batched program against it: O(N + G) chunk generations, not O(N * G).

    cond / viewmats / Ks / action: batch 1, at least chunk*clip latents."""
    s0 = (clip - 1) * self.chunk
    sl = slice(s0, s0 + self.chunk)
    if clip < 1 or action.shape[1] < s0 + self.chunk:
      raise ValueError(f"clip {clip} needs {s0 + self.chunk} latents; got {action.shape[1]}")
    if prefix_noise.shape[2] != s0:
      raise ValueError(f"clip {clip} needs a prefix of {s0} latents, got {prefix_noise.shape[2]}")
    tc, passes = self._text_cache(state, text, text_cache)
    cond, action, viewmats, Ks = _f32(cond), _f32(action), _f32(viewmats), _f32(Ks)
    w2c = np.asarray(viewmats)[0] if w2c is None else w2c
    prefix, _, n = self._ar(state, _f32(prefix_noise), cond, action, viewmats, Ks, tc, w2c, clip - 1)
    ctx, idx = self.context(state, prefix, cond, action, viewmats, Ks, s0, tc, w2c)
    passes += n + (ctx is not None) + self.steps
    x0 = self.denoise(state, _f32(candidate_noise), cond[:, :, sl], action[:, sl], viewmats[:, sl], Ks[:, sl], tc,
                      ctx)
    return ClipSample(x0=x0, prefix=prefix, text_cache=tc, ctx=ctx, context_indices=idx, model_passes=passes)
