"""The reward stage of an RL step: decode the candidate clips, score them with every
configured reward, and hand the scores (and the frames, for logging) to the trainer.

A plain data type in the rewards layer, so that anything that builds one (the trainer's
component builder, the synthetic-world study, tests) needs nothing from the trainer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class RewardStage:
  """Decodes candidate clips and scores them with the configured rewards."""
  decode: Callable            # latents [B, C, T', h, w] -> frames [B, F, H, W, 3] in [0, 1]
  rewards: dict[str, Callable]  # name -> fn(frames [G,F,H,W,3], first_frame [H,W,3], actions [chunk]) -> [G]
  weights: dict[str, float]

  def __call__(self, r: Any, first_latent_window: jax.Array | None):
    """Scores one clip rollout `r` (x0 [G,C,T',h,w] candidates, prefix [1,C,T_p,h,w], action [1,T']).

    Window = previous latent (later chunks: 1 + 4*4 = 17 frames) + the candidate's 4 latents.
    """
    g = r.x0.shape[0]
    if first_latent_window is not None:
      lat = jnp.concatenate([jnp.broadcast_to(first_latent_window, (g,) + first_latent_window.shape[1:]), r.x0], axis=2)
    else:
      lat = r.x0
    frames = self.decode(lat)
    if first_latent_window is not None:
      frames = frames[:, -(4 * r.x0.shape[2] + 1):]
    first = self.decode(r.prefix[:, :, :1] if r.prefix.shape[2] else r.x0[:1, :, :1])[0, 0]
    scores = {name: fn(frames, first, r.action[0]) for name, fn in self.rewards.items()}
    return scores, frames
