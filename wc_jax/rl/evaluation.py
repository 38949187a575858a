"""Evaluation during training (the reference's `_eval`): at step 1 and every `evaluation.every` RL
steps, the checkpoint-EMA model generates a fixed, held-out set of trajectories in full
(`evaluation.latents` latents, `evaluation.steps` Euler steps, the AR chunk engine with FOV context), and
every clip of every video is scored by the run's rewards with the same windows as training.

The set is fixed by `evaluation.seed` (synthetic conditioning, never the training stream) or read
from `evaluation.split` of the run's records; the videos depend only on the EMA weights, so a
resumed run evaluates exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wc_jax.inference.engine import ChunkEngine, i2v_condition

log = logging.getLogger("wc_jax.train")


@dataclasses.dataclass
class _Clip:
  """What the reward stage reads of a clip (the fields of `ClipRollout` it uses)."""
  clip: int
  x0: Any
  prefix: Any
  action: Any


def held_out_trajectories(cfg, mcfg, num_latents: int) -> list:
  """`evaluation.trajectories` trajectories: synthetic ones from `evaluation.seed`, or the records of
  `evaluation.split` at data.path."""
  from wc_jax.rl.data_source import SyntheticTrajectories
  e = cfg.evaluation
  source = e.get("source", "synthetic")
  hw = (int(cfg.sampling.latent_height), int(cfg.sampling.latent_width))
  if source == "synthetic":
    it = SyntheticTrajectories(cfg, mcfg, hw, num_latents, int(e.seed))
    return [next(it) for _ in range(int(e.trajectories))]
  if source != "records":
    raise ValueError(f"evaluation.source must be 'synthetic' or 'records', got {source!r}")
  import copy
  from wc_jax.rl.data_source import make_data
  ecfg = copy.deepcopy(cfg)
  with ecfg.unlocked():
    ecfg.data.source, ecfg.data.split, ecfg.data.shuffle, ecfg.data.num_epochs = "records", e.split, False, 1
  it = make_data(ecfg, mcfg)
  out = []
  for _ in range(int(e.trajectories)):
    try:
      out.append(next(it))
    except StopIteration:
      break
  if not out:
    raise ValueError(f"evaluation.split={e.split!r} of {cfg.data.path} has no records")
  return out


class TrainingEval:
  """Runs the evaluation; `due(step)` says when."""

  def __init__(self, cfg, mcfg, apply, reward_stage, encode_text):
    e = cfg.evaluation
    self.every = int(e.every)
    self.chunk = int(mcfg.chunk_latents)
    self.latents = int(e.latents)
    if self.latents % self.chunk:
      raise ValueError(f"evaluation.latents={self.latents} must be a multiple of model.chunk_latents ({self.chunk})")
    self.seed = int(e.seed)
    self.engine = ChunkEngine.from_config(apply, cfg, steps=int(e.steps))
    self.stage = reward_stage
    self.encode_text = encode_text
    self.trajectories = held_out_trajectories(cfg, mcfg, self.latents)

  def due(self, step: int) -> bool:
    return self.every > 0 and (step == 1 or step % self.every == 0)

  def run(self, params) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics "eval/<reward>/mean" and per clip, frames [N, F, H, W, 3], per-video combined score)."""
    per_reward: dict[str, list] = {}
    videos, combined = [], []
    weights = self.stage.weights
    for i, traj in enumerate(self.trajectories):
      c, h, w = traj.first_latent.shape
      n = self.latents
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(self.seed), i), (1, c, n, h, w), jnp.float32)
      out = self.engine.generate(params, latents=noise, cond=i2v_condition(traj.first_latent[None], n),
                                 viewmats=traj.w2c[None, :n], Ks=traj.Ks[None, :n], action=traj.actions[None, :n],
                                 text=self.encode_text(params, traj), w2c=np.asarray(traj.w2c[:n]))
      lat = out.latents
      video_score = 0.0
      for clip in range(1, n // self.chunk + 1):
        s0 = (clip - 1) * self.chunk
        r = _Clip(clip=clip, x0=lat[:, :, s0:s0 + self.chunk], prefix=lat[:, :, :s0],
                  action=jnp.asarray(traj.actions[None, s0:s0 + self.chunk]))
        prev = lat[:, :, s0 - 1:s0] if s0 else None
        scores, _ = self.stage(r, prev, getattr(traj, "real_frames", None))
        for k, v in scores.items():
          per_reward.setdefault(k, []).append((clip, float(np.asarray(v)[0])))
          video_score += weights.get(k, 0.0) * float(np.asarray(v)[0])
      videos.append(np.asarray(self.stage.decode(lat))[0])
      combined.append(video_score / (n // self.chunk))
    metrics = {"eval/trajectories": len(self.trajectories)}
    for k, vals in per_reward.items():
      metrics[f"eval/{k}/mean"] = float(np.mean([v for _, v in vals]))
      last = max(c for c, _ in vals)
      metrics[f"eval/{k}/last_clip"] = float(np.mean([v for c, v in vals if c == last]))
    return metrics, np.stack(videos), np.asarray(combined)
