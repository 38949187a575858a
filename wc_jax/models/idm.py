"""Inverse dynamics model (IDM): consecutive frames (or latents) -> 81-way action.

SWIRL (arXiv 2602.06130) trains a forward world model and an IDM in
alternation, each rewarded by the other. For WorldCompass the IDM is a learned
interaction reward: it reads a generated clip step by step and scores how
likely the commanded action is (`wc_jax.rewards.idm.idm_reward`). Unlike the
pose-based reward it is differentiable, fast, and can be refitted on real
(video, action) data while the generator trains.

Step s of a sequence x[0..F-1] reads the k+1 inputs x[s*k .. (s+1)*k]
(k = `frames_per_step`: 4 for decoded frames, one latent = 4 frames; 1 for
latents) plus the difference of its last and first input, so a window of
F = S*k + 1 inputs gives S steps. The encoder is a small strided conv net with
global average pooling and an MLP classifier.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wc_jax.actions import NUM_ACTIONS


@dataclasses.dataclass(frozen=True)
class IDMConfig:
  in_channels: int = 3           # 3 for RGB frames, 32 for WorldPlay latents
  frames_per_step: int = 4       # inputs per action step (4 frames = 1 latent)
  widths: tuple[int, ...] = (32, 64, 128, 128)
  hidden: int = 256
  num_actions: int = NUM_ACTIONS
  frames_in_unit_range: bool = True  # map [0,1] frames to [-1,1]; False for latents

  def __post_init__(self):
    if self.frames_per_step < 1 or self.in_channels < 1 or not self.widths:
      raise ValueError(f"bad IDMConfig {self}")

  def num_steps(self, num_inputs: int) -> int:
    """Steps S of a window of F inputs (F = S*k + 1); ValueError otherwise."""
    k = self.frames_per_step
    if num_inputs < k + 1 or (num_inputs - 1) % k:
      raise ValueError(f"an IDM with frames_per_step={k} needs S*{k}+1 inputs (S >= 1), "
                       f"got {num_inputs}")
    return (num_inputs - 1) // k


class InverseDynamicsModel(nnx.Module):
  """x [F,H,W,C] (or [B,F,H,W,C]) -> action logits [S,A] (or [B,S,A])."""

  def __init__(self, cfg: IDMConfig = IDMConfig(), *, rngs: nnx.Rngs):
    self.config = cfg
    c = cfg.in_channels * (cfg.frames_per_step + 2)
    convs = []
    for w in cfg.widths:
      convs.append(nnx.Conv(c, w, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs))
      c = w
    self.convs = nnx.List(convs)
    self.fc1 = nnx.Linear(c, cfg.hidden, rngs=rngs)
    self.fc2 = nnx.Linear(cfg.hidden, cfg.num_actions, rngs=rngs)

  def step_inputs(self, x):
    """[F,H,W,C] -> [S,H,W,(k+2)C]: each step's k+1 inputs and their end-to-end difference."""
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"InverseDynamicsModel: inputs must be [F,H,W,{cfg.in_channels}] (or "
                       f"batched [B,F,H,W,{cfg.in_channels}]), got shape {x.shape}")
    k = cfg.frames_per_step
    s = cfg.num_steps(x.shape[0])
    x = x.astype(jnp.float32)
    if cfg.frames_in_unit_range:
      x = 2.0 * x - 1.0
    idx = jnp.arange(s)[:, None] * k + jnp.arange(k + 1)[None]   # [S,k+1]
    g = x[idx]                                                    # [S,k+1,H,W,C]
    parts = [g[:, i] for i in range(k + 1)] + [g[:, -1] - g[:, 0]]
    return jnp.concatenate(parts, axis=-1)

  def __call__(self, x):
    if x.ndim == 5:
      return jax.vmap(self._one)(x)
    return self._one(x)

  def _one(self, x):
    h = self.step_inputs(x)
    for conv in self.convs:
      h = jax.nn.silu(conv(h))
    h = jnp.mean(h, axis=(1, 2))
    return self.fc2(jax.nn.silu(self.fc1(h)))


def init_idm(cfg: IDMConfig = IDMConfig(), seed: int = 0) -> InverseDynamicsModel:
  """Builds an IDM with host-side (numpy) LeCun-normal kernels and zero biases.

  Same distribution family as the Flax initialisers, but without compiling a
  random-number program per parameter shape (seconds each on a small CPU host).
  """
  import numpy as np
  graphdef, state = nnx.split(nnx.eval_shape(lambda: InverseDynamicsModel(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if path[-1] == "kernel":
      fan_in = int(np.prod(x.shape[:-1]))
      return jnp.asarray(rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(fan_in))
    return jnp.zeros(x.shape, x.dtype)

  pure = nnx.to_pure_dict(state)
  pure = jax.tree_util.tree_map_with_path(
      lambda p, x: fill(tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p), x), pure)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def step_targets(actions, num_steps: int):
  """The commanded labels the S steps predict: the last S of the window's L
  latent labels (a first-chunk window has one step fewer than latents)."""
  n = actions.shape[-1]
  if num_steps > n:
    raise ValueError(f"{num_steps} IDM steps need at least {num_steps} commanded actions, got {n}")
  return actions[..., n - num_steps:]


def idm_loss(model: InverseDynamicsModel, clips, actions):
  """Mean cross-entropy of the commanded actions.

  Args:
    clips: [B,F,H,W,C] windows (F = S*k + 1).
    actions: int [B,L] commanded labels per latent (L >= S; the last S are used).
  Returns:
    (loss scalar, accuracy scalar).
  """
  if clips.ndim != 5:
    raise ValueError(f"idm_loss: clips must be [B,F,H,W,C], got shape {clips.shape}")
  if actions.ndim != 2 or actions.shape[0] != clips.shape[0]:
    raise ValueError(f"idm_loss: actions must be [B,L] with B={clips.shape[0]}, got shape "
                     f"{actions.shape}")
  logits = model(clips)
  y = step_targets(actions, logits.shape[1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
  return loss, acc


def make_optimizer(model: InverseDynamicsModel, learning_rate: float = 1e-3,
                   weight_decay: float = 1e-4, clip_norm: float = 1.0) -> nnx.Optimizer:
  """AdamW with gradient clipping, over the IDM's parameters."""
  tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                   optax.adamw(learning_rate, weight_decay=weight_decay))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model: InverseDynamicsModel, optimizer: nnx.Optimizer, clips, actions):
  """One optimiser step on a (clips, actions) batch; returns (loss, accuracy)."""
  (loss, acc), grads = nnx.value_and_grad(idm_loss, has_aux=True)(model, clips, actions)
  optimizer.update(model, grads)
  return loss, acc


def fit(model: InverseDynamicsModel, batches: Iterable, num_steps: int,
        optimizer: nnx.Optimizer | None = None, log_every: int = 0) -> list[tuple[float, float]]:
  """Fits the IDM for `num_steps` on an iterable of (clips [B,F,H,W,C], actions [B,L]).

  Call it between generator RL steps to alternate (SWIRL): e.g. every n
  generator steps, `fit(idm, real_batches, m, opt)` with the same optimizer.
  Returns the (loss, accuracy) history.
  """
  optimizer = optimizer if optimizer is not None else make_optimizer(model)
  history = []
  it: Iterator = iter(batches)
  for step in range(num_steps):
    try:
      clips, actions = next(it)
    except StopIteration:
      break
    loss, acc = train_step(model, optimizer, jnp.asarray(clips), jnp.asarray(actions, jnp.int32))
    history.append((float(loss), float(acc)))
    if log_every and (step + 1) % log_every == 0:
      print(f"idm step {step + 1}: loss {history[-1][0]:.4f} acc {history[-1][1]:.3f}")
  return history
