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
import numpy as np

from wc_jax.rewards.batch import score_candidates
from wc_jax.rewards.registry import RewardWindow
from wc_jax.rewards.similarity import RwmlRule, apply_rwml

LATENT_FRAMES = 4          # decoded frames per latent after the first (the causal VAE's temporal stride)


WINDOWS = ("wc_jax", "released")


def window_frame_range(clip: int, chunk: int, window: str = "wc_jax",
                       frames_per_latent: int = LATENT_FRAMES) -> tuple[int, int]:
  """[start, stop) of the video frames the reward window of clip `clip` (1-indexed) covers.

  Clip 1 decodes its own `chunk` latents: frames 0 .. 4(chunk-1). Later clips, s0 = (clip-1)*chunk:
  "wc_jax" decodes the previous latent + the `chunk` new ones and keeps 1 + 4*chunk frames, from
  the previous latent's last frame 4(s0-1) to 4(s0+chunk-1); "released" (the reference) decodes
  [latent 0 + 2 previous + the new ones] and keeps the new latents' 4*chunk frames (4: the
  decoder's `frames_per_latent`).
  """
  if window not in WINDOWS:
    raise ValueError(f"reward window must be one of {WINDOWS}, got {window!r}")
  f = int(frames_per_latent)
  s0 = (clip - 1) * chunk
  stop = f * (s0 + chunk - 1) + 1
  if clip == 1:
    return 0, stop
  return (f * (s0 - 1) if window == "wc_jax" else stop - f * chunk), stop


@dataclasses.dataclass
class RewardStage:
  """Decodes candidate clips and scores them with the configured rewards.

  `rewards[name](frames [F,H,W,3], window: RewardWindow) -> float32 []` scores ONE candidate;
  the stage maps it over the G candidates (split over the mesh's data axes when `mesh` is
  set, `wc_jax.rewards.batch.score_candidates`). `rwml_rule`: RWML's group rules for one of the
  rewards (binarisation, the easy-group filter; `wc_jax.rewards.similarity.apply_rwml`), or None.
  """
  decode: Callable            # latents [B, C, T', h, w] -> frames [B, F, H, W, 3] in [0, 1]
  rewards: dict[str, Callable]
  weights: dict[str, float]
  mesh: Any = None
  window: str = "wc_jax"      # which frames a clip's rewards read: see window_frame_range
  reads_real: bool = False    # a reward compares with the real continuation (window.real)
  rwml_rule: RwmlRule | None = None
  frames_per_latent: int = LATENT_FRAMES   # the decoder's temporal stride (causal: 1 + f*(T-1) frames)

  def __call__(self, r: Any, first_latent_window: jax.Array | None, real_frames: np.ndarray | None = None):
    """Scores one clip rollout `r` (x0 [G,C,T',h,w] candidates, prefix [1,C,T_p,h,w], action [1,T']).

    `first_latent_window`: the previous latent [1,C,1,h,w] (None for clip 1). `real_frames`: the
    trajectory's whole real video [F_all,H,W,3] (uint8 or [0,1] floats), or None.
    """
    g, chunk = r.x0.shape[0], r.x0.shape[2]
    if self.window not in WINDOWS:
      raise ValueError(f"reward window must be one of {WINDOWS}, got {self.window!r}")
    bc = lambda x: jnp.broadcast_to(x, (g,) + x.shape[1:])
    released = self.window == "released"
    if first_latent_window is None:
      lat = r.x0
    elif released:   # latent 0 + the 2 latents before the clip + the new ones; keep the new frames
      lat = jnp.concatenate([bc(r.prefix[:, :, :1]), bc(r.prefix[:, :, -2:]), r.x0], axis=2)
    else:
      lat = jnp.concatenate([bc(first_latent_window), r.x0], axis=2)
    frames = self.decode(lat)
    f = int(self.frames_per_latent)
    if frames.shape[1] != 1 + f * (lat.shape[2] - 1):
      # the window arithmetic counts f frames per latent: another stride would read the wrong frames
      raise ValueError(f"RewardStage: the decoder made {frames.shape[1]} frames of {lat.shape[2]} latents; "
                       f"frames_per_latent={f} expects {1 + f * (lat.shape[2] - 1)} (a causal VAE's 1 + f*(T-1))")
    start, stop = window_frame_range(r.clip, chunk, self.window, f)
    frames = frames[:, -(stop - start):]
    if released and first_latent_window is None:   # clip 1: each candidate's own first frame
      firsts = frames[:, 0]
    else:
      first = self.decode(r.prefix[:, :, :1] if r.prefix.shape[2] else r.x0[:1, :, :1])[0, 0]
      firsts = jnp.broadcast_to(first, (g,) + first.shape)
    real = None
    if real_frames is not None and self.reads_real:
      real_frames = np.asarray(real_frames)
      if real_frames.shape[0] < stop or real_frames.shape[1:] != tuple(frames.shape[2:]):
        raise ValueError(f"the trajectory's real video has shape {real_frames.shape}; clip {r.clip}'s window "
                         f"needs frames {start}..{stop - 1} of size {tuple(frames.shape[2:])}")
      real = real_frames[start:stop]
      real = jnp.asarray(real, jnp.float32) / 255.0 if real.dtype == np.uint8 else jnp.asarray(real, jnp.float32)
    window = RewardWindow(first_frame=None, actions=jnp.asarray(r.action[0], jnp.int32), real=real)
    fns = dict(self.rewards)
    rule = self.rwml_rule
    if rule is not None:
      if rule.reward not in fns:
        raise ValueError(f"RewardStage: the RWML rule names reward {rule.reward!r}, not one of {sorted(fns)}")
      fns[rule.reward] = rule.similarity          # raw similarities; the rule derives the reward
    scores = {name: score_candidates(lambda f, first, fn=fn: fn(f, dataclasses.replace(window, first_frame=first)),
                                     frames, firsts, mesh=self.mesh)
              for name, fn in fns.items()}
    if rule is not None:
      scores = apply_rwml(scores, rule)
    return scores, frames
