"""Rewards that work in the synthetic world: an IDM trained on ground truth, and a drift term.

* `idm`: SWIRL's learned interaction reward. An inverse-dynamics model
  (`wc_jax.models.idm`, one frame per step here) is trained on rendered clips with
  their commanded labels; a candidate's reward is the IDM's mean log-likelihood of the
  commanded actions (`wc_jax.rewards.idm_reward`, clamped at -10).
* `drift`: the paper's quality drift with fixed, model-free statistics of each frame:
  detail Q = mean image-gradient magnitude (a generator that blurs loses it, one that
  adds noise gains it) and the mean colour (a generator that drifts in colour, a
  failure seen in early runs here, moves it). The reward is
  -mean_k (|Q(frame_k) - Q(first)| / Q(first) + sum_c |mean_c(frame_k) - mean_c(first)|).

The evaluation uses a second IDM trained from another seed on other scenes, so the
reported accuracy is not the number RL optimised (see `evaluate`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.models import idm as idm_lib
from wc_jax.rewards.advantages import shuffle_within_groups
from wc_jax.rewards.idm import idm_reward
from wc_jax.rewards.stage import RewardStage


def idm_config(cfg) -> idm_lib.IDMConfig:
  return idm_lib.IDMConfig(in_channels=3, frames_per_step=1, widths=tuple(cfg.idm.widths), hidden=int(cfg.idm.hidden))


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Light augmentation so a ground-truth IDM also reads generated frames: per clip, a
  random mix with a 2x2-blurred copy and a little noise."""
  n, t, h, w, c = frames.shape
  blur = frames.reshape(n, t, h // 2, 2, w // 2, 2, c).mean((3, 5)).repeat(2, 2).repeat(2, 3)
  a = rng.uniform(0, 1, (n, 1, 1, 1, 1)) * (rng.uniform(size=(n, 1, 1, 1, 1)) < 0.5)
  out = (1 - a) * frames + a * blur + rng.normal(0, 0.02, frames.shape) * (rng.uniform(size=(n, 1, 1, 1, 1)) < 0.5)
  return np.clip(out, 0, 1).astype(np.float32)


def train_idm(frames: np.ndarray, actions: np.ndarray, cfg, seed: int, steps: int | None = None,
              log=print) -> tuple[idm_lib.InverseDynamicsModel, list]:
  """Fits an IDM on clips frames [N, L, H, W, 3] with labels [N, L]. Returns (model, history)."""
  if frames.ndim != 5 or actions.shape != frames.shape[:2]:
    raise ValueError(f"train_idm: need frames [N,L,H,W,3] and actions [N,L], got {frames.shape} and {actions.shape}")
  steps = int(cfg.idm.steps if steps is None else steps)
  model = idm_lib.init_idm(idm_config(cfg), seed=seed)
  opt = idm_lib.make_optimizer(model, learning_rate=float(cfg.idm.lr))
  rng = np.random.default_rng(seed)
  bs = min(int(cfg.idm.batch_size), len(frames))

  def batches():
    while True:
      idx = rng.choice(len(frames), bs, replace=False)
      yield degrade(frames[idx], rng), actions[idx]

  hist = idm_lib.fit(model, batches(), steps, opt)
  if hist:
    log(f"idm seed {seed}: {steps} steps, loss {np.mean([h[0] for h in hist[-20:]]):.3f}, "
        f"train acc {np.mean([h[1] for h in hist[-20:]]):.3f}")
  return model, hist


def save_idm(model, path) -> None:
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(state)}
  np.savez(path, **flat)


def load_idm(path, cfg) -> idm_lib.InverseDynamicsModel:
  model = idm_lib.init_idm(idm_config(cfg), seed=0)
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  z = np.load(path)
  for k, _ in _flatten(pure):
    _set(pure, k, jnp.asarray(z["/".join(map(str, k))]))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


def _flatten(d, prefix=()):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _set(d, path, value):
  for k in path[:-1]:
    d = d[k]
  d[path[-1]] = value


def sharpness(frames):
  """Q: mean absolute image gradient per frame, [..., H, W, 3] -> [...]."""
  gx = jnp.abs(jnp.diff(frames, axis=-2)).mean((-1, -2, -3))
  gy = jnp.abs(jnp.diff(frames, axis=-3)).mean((-1, -2, -3))
  return gx + gy


def drift_reward(frames, first):
  """Detail and colour drift from the first frame, for one candidate's frames [F, H, W, 3]."""
  q0 = sharpness(first)
  detail = jnp.abs(sharpness(frames) - q0) / jnp.maximum(q0, 1e-3)                  # [F]
  colour = jnp.sum(jnp.abs(frames.mean((1, 2)) - first.mean((0, 1))), axis=-1)       # [F]
  return -jnp.mean(detail + colour)


def predicted_actions(idm, frames):
  """IDM argmax labels of every step of clips [B, F, H, W, 3] -> [B, F-1]."""
  return jnp.argmax(idm(frames), axis=-1)


def make_reward_stage(latent, idm, weights: dict) -> RewardStage:
  """The trainer's reward stage: decode = the latent map's inverse; rewards idm and drift."""
  unknown = set(weights) - {"idm", "drift"}
  if unknown:
    raise ValueError(f"make_reward_stage: unknown rewards {sorted(unknown)} (have: idm, drift)")
  decode = jax.jit(latent.decode)
  fns = {"idm": lambda frames, window: idm_reward(frames, window.actions, idm),
         "drift": lambda frames, window: drift_reward(frames, window.first_frame)}
  return RewardStage(decode=decode, rewards={k: fns[k] for k in weights}, weights={k: float(v) for k, v in weights.items()})


class ShuffledRewardStage:
  """The shuffled-reward control run: a reward stage whose scores are permuted within
  each group (`rewards.advantages.shuffle_within_groups`) before the trainer sees them.
  Same rollouts, rewards, advantage statistics and update size as the real run; no link
  between a candidate and its reward. Deterministic in (seed, call count)."""

  def __init__(self, stage: RewardStage, seed: int):
    self.stage, self.seed, self.calls = stage, int(seed), 0

  def __getattr__(self, name):
    return getattr(self.stage, name)

  def __call__(self, *args, **kwargs):
    scores, frames = self.stage(*args, **kwargs)
    key = jax.random.fold_in(jax.random.key(self.seed), self.calls)
    self.calls += 1
    shuffled = shuffle_within_groups({k: jnp.asarray(v)[None] for k, v in scores.items()}, key)
    return {k: v[0] for k, v in shuffled.items()}, frames

