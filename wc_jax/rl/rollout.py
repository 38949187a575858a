"""Clip-level rollouts (WorldCompass §1.1): O(N + G) model passes instead of O(N * G).

For target clip n (1-indexed; latents 4(n-1)..4n-1):
  1. the prefix (clips 1..n-1) is generated once with the rollout policy (AR rollout);
  2. the context of clip n is chosen (recent + first chunk + FOV retrieval, <= 20 latents)
     and its K/V cache built once;
  3. G candidates of clip n are denoised from fresh noise in one batched program, every
     candidate attending to that one cache (broadcast, never copied).

The chunk loop and its compiled programs are `wc_jax.inference.ChunkEngine`'s (shared with
generation and evaluation); this module keeps the RL data types and the key discipline.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.inference.engine import ChunkEngine, i2v_condition
from wc_jax.models.worldplay.model import TextCache, TextTokens, VisionCache


@dataclasses.dataclass
class TrainingExample:
  """One training example: a trajectory's conditioning, first latent and commanded camera path
  (the reference trains one per data-parallel rank; `rl.trajectories_per_step` of them per step)."""
  text_states: np.ndarray       # [1, Lt, Dt]
  text_mask: np.ndarray         # [1, Lt]
  byt5_states: np.ndarray       # [1, Lb, Db]
  byt5_mask: np.ndarray         # [1, Lb]
  vision_states: np.ndarray     # [1, Lv, Dv]
  first_latent: np.ndarray      # [C, H, W] the first frame's latent (i2v condition)
  actions: np.ndarray           # [T] 81-way labels, one per latent
  w2c: np.ndarray               # [T, 4, 4]
  Ks: np.ndarray                # [T, 3, 3] normalised intrinsics
  real_frames: np.ndarray | None = None   # [4T-3, H, W, 3] uint8 real video (sources with video), else None


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


class ClipRolloutEngine(ChunkEngine):
  """The chunk engine with the RL entry point: `rollout(state, text, traj, clip, G, key)`.

  Contexts are padded to `memory_frames`, so every clip index uses the same compiled
  context and candidate programs.
  """

  def rollout(self, model_state, text: TextTokens, traj: TrainingExample, clip: int, num_candidates: int,
              key: jax.Array) -> ClipRollout:
    """Prefix once, context once, G candidates of clip `clip` batched.

    key -> (k_prefix, k_cand): the prefix starts from normal(k_prefix, [1, C, chunk*clip, H, W])
    (its first chunk*(clip-1) latents), the candidates from normal(k_cand, [G, C, chunk, H, W])."""
    chunk = self.chunk
    frames = chunk * clip
    if clip < 1 or frames > len(traj.actions):
      raise ValueError(f"clip {clip} needs {frames} latents; the trajectory has {len(traj.actions)}")
    c, h, w = traj.first_latent.shape
    s0 = (clip - 1) * chunk
    sl = slice(s0, s0 + chunk)
    cond = i2v_condition(traj.first_latent[None], frames)
    k_prefix, k_cand = jax.random.split(key)
    prefix_noise = jax.random.normal(k_prefix, (1, c, frames, h, w), jnp.float32)[:, :, :s0]
    noise = jax.random.normal(k_cand, (num_candidates, c, chunk, h, w), jnp.float32)
    a_all = jnp.asarray(traj.actions[None, :frames], jnp.float32)
    vm_all = jnp.asarray(traj.w2c[None, :frames], jnp.float32)
    k_all = jnp.asarray(traj.Ks[None, :frames], jnp.float32)
    out = self.clip_candidates(model_state, clip=clip, prefix_noise=prefix_noise, candidate_noise=noise, cond=cond,
                               viewmats=vm_all, Ks=k_all, action=a_all, text=text, w2c=np.asarray(traj.w2c))
    return ClipRollout(clip=clip, x0=out.x0, prefix=out.prefix, cond=cond[:, :, sl], action=a_all[:, sl],
                       viewmats=vm_all[:, sl], Ks=k_all[:, sl], text_cache=out.text_cache, ctx=out.ctx,
                       context_indices=out.context_indices, chunk_generations=(clip - 1) + num_candidates,
                       dit_calls=out.model_passes)
