"""SWIRL's alternation (arXiv 2602.06130) as a reward-stage wrapper: the IDM whose log-likelihood
rewards the generator is itself trained, on a schedule, on the current policy's generations.

SWIRL trains a forward world model (FWM) and an inverse-dynamics model (IDM) in alternation with
GRPO, each rewarded by the other, frozen. The FWM's side is the `idm` reward (the IDM's
log-likelihood of the commanded actions, clamped at -10, `wc_jax.rewards.idm`). The IDM's side
here, `objective`:

* "grpo": the IDM is a policy over the 81 actions. For every step of every buffered generated
  clip it samples `samples` actions from its own distribution; an action's reward is 1 when it is
  the commanded one, else 0 (how well the IDM reads the FWM's generations); rewards are z-scored
  within each step's group of samples, and the loss is -mean(A * log q(a)). One gradient step per
  batch of fresh samples, so the PPO ratio is 1 and its clip never acts; no KL term. The paper
  rewards the IDM with the frozen FWM's log-probability of the observed transition given the
  IDM's action; a video diffusion model has no tractable log-probability, so agreement with the
  action the FWM was commanded is the stand-in (the FWM is rewarded for making that action
  readable, the IDM for reading it).
* "supervised": the baseline: cross-entropy of the commanded actions on the REAL frames of the
  same windows (the ground-truth continuation the data carries), the IDM's original training
  objective, so the IDM follows the data rather than the policy.

Schedule: the stage counts the trainer's scoring calls of groups (G >= 2 candidates; the
evaluation's single videos are neither counted nor buffered); after every `every` RL steps
(`every * trajectories_per_step` group calls) it runs `steps` IDM optimizer steps on what it
buffered since the last update, then empties the buffer, so the next step's rewards come from the
updated IDM. Phases of n FWM steps / m IDM steps are every=n, steps=m.

Everything that decides the next rewards (IDM weights, AdamW state, the counters and the buffer)
is the stage's `get_state()` / `set_state()`, which `wc_jax.rl.checkpoint.Checkpointer` saves and
restores with the train state: a resumed run rewards exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax.models import idm as idm_lib
from wc_jax.rewards import batch as batch_lib
from wc_jax.rewards.stage import LATENT_FRAMES, window_frame_range
from wc_jax.rl.config import ConfigError, require_idm_reward

OBJECTIVES = ("grpo", "supervised")


@dataclasses.dataclass(frozen=True)
class SwirlConfig:
  """The `swirl` config section, validated (`from_config`)."""
  enabled: bool = False
  every: int = 1            # IDM phase after every `every` RL steps
  steps: int = 4            # IDM optimizer steps per phase
  objective: str = "grpo"   # "grpo" (SWIRL) or "supervised" (ground truth, the baseline)
  lr: float = 1e-4
  batch_size: int = 16      # clips per IDM step
  samples: int = 8          # GRPO: actions sampled per step (the IDM's group)
  seed: int = 0


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def from_config(section: Any) -> SwirlConfig:
  """The `swirl` section (a ConfigDict or mapping; None = disabled) -> SwirlConfig; a bad value
  raises ConfigError naming it (`config swirl.every = 0: must be an integer >= 1`)."""
  if section is None:
    return SwirlConfig()
  d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  known = {f.name for f in dataclasses.fields(SwirlConfig)}
  for k in d:
    if k not in known:
      raise ConfigError(f"swirl.{k}", d[k], f"unknown key (known: {', '.join(sorted(known))})")
  if not isinstance(d.get("enabled", False), bool):
    raise ConfigError("swirl.enabled", d["enabled"], "must be True or False")
  for k, lo in (("every", 1), ("steps", 1), ("batch_size", 1), ("samples", 2), ("seed", 0)):
    if k in d and (not _is_int(d[k]) or d[k] < lo):
      raise ConfigError(f"swirl.{k}", d[k], f"must be an integer >= {lo}")
  if "objective" in d and d["objective"] not in OBJECTIVES:
    raise ConfigError("swirl.objective", d["objective"], f"must be one of {', '.join(OBJECTIVES)}")
  if "lr" in d:
    lr = d["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr <= 0:
      raise ConfigError("swirl.lr", lr, "must be a number > 0")
  return SwirlConfig(**{k: (float(v) if k == "lr" else v) for k, v in d.items()})


def wrap_reward_stage(stage, idm, cfg, real_window: Callable | None = None, log=None):
  """`stage` (whose `idm` reward reads the module `idm`) with SWIRL's alternation from `cfg.swirl`
  (validated), or `stage` itself when the section is missing or disabled. The trainer's generic path
  (wc_jax.rl.components.build_reward_stage) uses it; the synthetic world's `make_swirl_stage` is the
  same with one frame per latent (`real_window`)."""
  scfg = from_config(cfg.get("swirl", None))
  if not scfg.enabled:
    return stage
  require_idm_reward(stage.weights)
  if idm is None:
    raise ConfigError("swirl.enabled", True, "needs the idm reward's inverse-dynamics model (rewards.idm)")
  return SwirlRewardStage(stage, idm, scfg, int(cfg.rl.get("trajectories_per_step", 1)), real_window=real_window,
                          log=log)


# ----------------------------------------------------------------------------- the IDM's objectives

def grpo_loss(model, clips, actions, key, samples: int):
  """SWIRL's IDM side: GRPO with agreement rewards (module doc). Returns (loss, mean agreement of
  the samples)."""
  logits = model(clips)                                                    # [B,S,A]
  y = idm_lib.step_targets(actions, logits.shape[1])                       # [B,S]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  a = jax.random.categorical(key, jax.lax.stop_gradient(logp), axis=-1, shape=(samples,) + logp.shape[:-1])
  r = (a == y[None]).astype(jnp.float32)                                   # [K,B,S]
  adv = (r - r.mean(0, keepdims=True)) / (r.std(0, keepdims=True) + 1e-6)
  lp = jnp.take_along_axis(logp[None], a[..., None], axis=-1)[..., 0]      # [K,B,S]
  return -jnp.mean(adv * lp), jnp.mean(r)


@nnx.jit(static_argnames=("samples",))
def _grpo_step(model, optimizer, clips, actions, key, samples: int):
  (loss, agree), grads = nnx.value_and_grad(grpo_loss, has_aux=True)(model, clips, actions, key, samples)
  optimizer.update(model, grads)
  return loss, agree


# ----------------------------------------------------------------------------- the stage

def _flat_leaves(tree) -> dict:
  return {f"{i:05d}": np.array(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _unflat_leaves(like, flat: dict):
  leaves, treedef = jax.tree.flatten(like)
  if len(flat) != len(leaves):
    raise ValueError(f"SWIRL state: the checkpoint holds {len(flat)} arrays, this IDM/optimizer has {len(leaves)} "
                     "(another IDM config?)")
  new = []
  for i, old in enumerate(leaves):
    v = np.asarray(flat[f"{i:05d}"])
    if v.shape != np.shape(old):
      raise ValueError(f"SWIRL state: array {i} has shape {v.shape} in the checkpoint, {np.shape(old)} here")
    new.append(jnp.asarray(v, dtype=jnp.asarray(old).dtype))
  return jax.tree.unflatten(treedef, new)


class SwirlRewardStage:
  """Wraps a reward stage whose `idm` reward reads `idm` (the same nnx module: updated in place,
  the reward follows). Use it wherever the stage was used (trainer, tests)."""

  def __init__(self, stage, idm: idm_lib.InverseDynamicsModel, cfg: SwirlConfig, trajectories_per_step: int,
               real_window: Callable | None = None, log=None):
    if not _is_int(trajectories_per_step) or trajectories_per_step < 1:
      raise ValueError(f"SwirlRewardStage: trajectories_per_step must be an integer >= 1, got {trajectories_per_step!r}")
    self.stage, self.idm, self.cfg = stage, idm, cfg
    self.trajectories_per_step = int(trajectories_per_step)
    self.real_window = real_window or getattr(stage, "real_window", None)
    self.optimizer = idm_lib.make_optimizer(idm, learning_rate=cfg.lr)
    self.calls = 0          # group scoring calls so far
    self.updates = 0        # IDM phases so far
    self.buffer: list[dict] = []
    self.history: list[tuple[float, float]] = []   # (loss, agreement or accuracy) of the last phase
    self.log = log
    self.last_batch_sharding = None   # where the last IDM batch lived (None: no mesh)
    self._on_mesh = None

  def __getattr__(self, name):
    if name == "stage":
      raise AttributeError(name)
    return getattr(self.stage, name)

  def __call__(self, r, first_latent_window, real_frames=None):
    scores, frames = self.stage(r, first_latent_window, real_frames)
    if np.shape(r.x0)[0] < 2:        # an evaluation video, not a training group
      return scores, frames
    entry = {"frames": np.array(frames, np.float32), "actions": np.array(r.action[0], np.int32)}
    if self.cfg.objective == "supervised":
      real = self._real(r, frames.shape[1], real_frames)
      entry["real"] = np.array(real, np.float32)
    self.buffer.append(entry)
    self.calls += 1
    if self.calls % (self.trajectories_per_step * self.cfg.every) == 0:
      self.update()
    return scores, frames

  def _real(self, r, n_frames: int, real_frames):
    if real_frames is None:
      raise ValueError("swirl.objective='supervised' trains the IDM on the real frames of each window, but the "
                       "data has none: use data with video (the synthetic world attaches them) or objective='grpo'")
    if self.real_window is not None:
      return np.asarray(self.real_window(r, n_frames, real_frames), np.float32)
    start, stop = window_frame_range(r.clip, np.shape(r.x0)[2], getattr(self.stage, "window", "wc_jax"),
                                     getattr(self.stage, "frames_per_latent", LATENT_FRAMES))
    real = np.asarray(real_frames)[start:stop]
    return real.astype(np.float32) / 255.0 if real.dtype == np.uint8 else real.astype(np.float32)

  def _batches(self, rng):
    """(clips [B,F,H,W,3], actions [B,L]) per IDM step: one window length per batch (chosen with
    probability proportional to its clips), clips drawn without replacement within it."""
    by_len: dict[int, list] = {}
    for e in self.buffer:
      x = e["real"][None] if self.cfg.objective == "supervised" else e["frames"]
      for clip in x:
        by_len.setdefault(clip.shape[0], []).append((clip, e["actions"]))
    lens = sorted(by_len)
    p = np.array([len(by_len[n]) for n in lens], np.float64)
    while True:
      pool = by_len[lens[rng.choice(len(lens), p=p / p.sum())]]
      idx = rng.choice(len(pool), min(self.cfg.batch_size, len(pool)), replace=False)
      yield np.stack([pool[i][0] for i in idx]), np.stack([pool[i][1] for i in idx])

  def _place(self, clips, actions):
    """An IDM batch on the reward stage's mesh, sharded like the reward models' candidates (over the
    data axes) with the IDM and its optimizer replicated: the phase runs data-parallel. A batch that
    does not divide over the data shards runs replicated (logged). No mesh: the default device."""
    clips, actions = jnp.asarray(clips, jnp.float32), jnp.asarray(actions, jnp.int32)
    mesh = getattr(self.stage, "mesh", None)
    if mesh is None:
      return clips, actions
    if self._on_mesh is not mesh:
      replicated = NamedSharding(mesh, P())
      for owner in (self.idm, self.optimizer):
        nnx.update(owner, jax.device_put(nnx.state(owner), replicated))
      self._on_mesh = mesh
    shards = batch_lib.data_shards(mesh)
    if clips.shape[0] % shards:
      logging.info("swirl: an IDM batch of %d clips does not divide over %d data shards; it runs replicated "
                   "(swirl.batch_size a multiple of %d splits it)", clips.shape[0], shards, shards)
      place = NamedSharding(mesh, P())
    else:
      place = batch_lib.candidate_sharding(mesh, clips.ndim)
    self.last_batch_sharding = place
    return (jax.device_put(clips, place),
            jax.device_put(actions, NamedSharding(mesh, P(*place.spec[:1], None))))

  def update(self) -> list[tuple[float, float]]:
    """One IDM phase on the buffer (then emptied). Deterministic in (seed, phase index)."""
    if not self.buffer:
      return []
    rng = np.random.default_rng([self.cfg.seed, self.updates, 0x5A1])
    key = jax.random.fold_in(jax.random.key(self.cfg.seed), self.updates)
    batches = self._batches(rng)
    hist = []
    for i in range(self.cfg.steps):
      clips, actions = self._place(*next(batches))
      if self.cfg.objective == "grpo":
        loss, m = _grpo_step(self.idm, self.optimizer, clips, actions, jax.random.fold_in(key, i),
                             samples=self.cfg.samples)
      else:
        loss, m = idm_lib.train_step(self.idm, self.optimizer, clips, actions)
      hist.append((float(loss), float(m)))
    self.updates += 1
    self.buffer = []
    self.history = hist
    if self.log is not None:
      self.log(f"swirl: IDM phase {self.updates} ({self.cfg.objective}, {len(hist)} steps): loss {hist[-1][0]:.4f}, "
               f"{'agreement' if self.cfg.objective == 'grpo' else 'accuracy'} {np.mean([h[1] for h in hist]):.3f}")
    return hist

  # -- the checkpoint protocol (wc_jax.rl.checkpoint)
  def get_state(self) -> dict:
    state = {"idm": _flat_leaves(nnx.state(self.idm, nnx.Param)), "opt": _flat_leaves(nnx.state(self.optimizer)),
             "calls": self.calls, "updates": self.updates}
    if self.buffer:
      state["buffer"] = {f"{i:05d}": dict(e) for i, e in enumerate(self.buffer)}
    inner = getattr(self.stage, "get_state", None)
    if callable(inner):
      state["inner"] = inner()
    return state

  def set_state(self, state: dict) -> None:
    params = nnx.state(self.idm, nnx.Param)
    nnx.update(self.idm, _unflat_leaves(params, state["idm"]))
    opt = nnx.state(self.optimizer)
    nnx.update(self.optimizer, _unflat_leaves(opt, state["opt"]))
    self.calls, self.updates = int(state["calls"]), int(state["updates"])
    self._on_mesh = None     # the restored arrays are on the default device: place them again
    buf = state.get("buffer", {})
    self.buffer = [{k: np.asarray(v) for k, v in buf[i].items()} for i in sorted(buf)]
    for e in self.buffer:
      e["actions"] = e["actions"].astype(np.int32)
    if "inner" in state:
      self.stage.set_state(state["inner"])
