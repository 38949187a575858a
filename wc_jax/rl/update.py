"""The negative-aware update (WorldCompass §1.3) as one jitted function of arrays.

For the kept candidates (best-of-N extremes of each of the step's T trajectories) and a
random subset of the rollout's sigmas:
x_t = (1 - s) x0 + s eps, v_theta = current model, v_old = rollout policy (EMA, no grad),
both on the target clip against the rollout's (frozen) caches; NFT loss; gradients averaged
over sigmas and trajectories (lax.scans, one sigma and trajectory's activations alive at a
time); clip + Muon/AdamW; then both EMAs. A non-finite loss or gradient leaves the state unchanged and is reported.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wc_jax.models.worldplay.model import TextCache, VisionCache
from wc_jax.rewards.nft import nft_loss
from wc_jax.rl.ema import ema_update, policy_decay


class TrainState(NamedTuple):
  params: Any           # nnx.State of the trained DiT parameters (fp32 master weights)
  opt_state: Any
  policy: Any           # rollout-policy EMA ("policy shadow"), same tree as params
  ema: Any              # checkpoint EMA
  step: jax.Array       # int32, optimizer steps taken
  rng: jax.Array        # PRNG key data (uint32), see jax.random.key_data


class UpdateBatch(NamedTuple):
  """The kept samples of an RL step's T trajectories (leading axis T on every field; each
  trajectory's K samples share its batch-1 condition, cameras and caches)."""
  x0: jax.Array         # [T, K, C, chunk, H, W] kept candidates' clean latents
  advantage: jax.Array  # [T, K] combined advantage (normalised weights; clipped in the loss)
  cond: jax.Array       # [T, 1, C+1, chunk, H, W]
  action: jax.Array     # [T, 1, chunk]
  viewmats: jax.Array   # [T, 1, chunk, 4, 4]
  Ks: jax.Array         # [T, 1, chunk, 3, 3]
  text_cache: TextCache  # leaves [T, ...] of the batch-1 caches
  ctx: VisionCache | None
  rl_step: jax.Array    # int32 [] the RL step (1-based): the policy EMA's clock when counted in RL steps


def state_shardings(state: TrainState, mesh) -> TrainState:
  """Every part of the train state sharded from its own Variables' logical-axis metadata: optax's
  moments and the EMA copies are Params carrying their parameter's axes (FSDP like it);
  counters and the RNG key replicated."""
  from wc_jax.sharding import state_shardings as from_metadata
  return from_metadata(state, mesh)


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), t)
  return TrainState(params=params, opt_state=tx.init(params), policy=copy(params), ema=copy(params),
                    step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)))


def _applied(opt_state) -> jax.Array:
  """True when this update really moved the weights (MultiSteps applies every k-th call)."""
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0
  return jnp.asarray(True)


@dataclasses.dataclass(frozen=True)
class UpdateSemantics:
  """How an RL step's kept samples become optimizer steps. The defaults are wc_jax's (one
  optimizer step per RL step over every kept sample, one sigma subset shared by the step, mean
  over sigmas, float timesteps, EMA clock = optimizer steps); `released()` is the released
  code's (worldcompass/fastvideo/training/world_compass_in_train_pipeline.py at da2d0c2)."""
  samples_per_optimizer_step: int = 0      # kept samples per trajectory per optimizer step; 0 = all
  per_sample_sigmas: bool = False          # each kept sample draws its own sigma subset
  sigma_reduction: str = "mean"            # "mean" | "sum" of the loss over the sampled sigmas
  int_timesteps: bool = False              # feed int(sigma * 1000) as the timestep
  ema_clock: str = "optimizer"             # policy EMA decay counted in "optimizer" or "rl" steps

  def __post_init__(self):
    if self.sigma_reduction not in ("mean", "sum"):
      raise ValueError(f"sigma_reduction must be 'mean' or 'sum', got {self.sigma_reduction!r}")
    if self.ema_clock not in ("optimizer", "rl"):
      raise ValueError(f"ema_clock must be 'optimizer' or 'rl', got {self.ema_clock!r}")
    if self.samples_per_optimizer_step < 0:
      raise ValueError(f"samples_per_optimizer_step must be >= 0, got {self.samples_per_optimizer_step}")

  @classmethod
  def released(cls) -> "UpdateSemantics":
    # grad accumulation 2 over the 6 kept samples -> 3 optimizer steps per RL step; the loss summed
    # over the 20 sigmas, each sample its own subset; timestep int(sigma*1000); EMA in RL steps
    return cls(samples_per_optimizer_step=2, per_sample_sigmas=True, sigma_reduction="sum", int_timesteps=True,
               ema_clock="rl")


def make_update_fn(apply, tx: optax.GradientTransformation, *, sigma_schedule, sigma_fraction: float = 0.5,
                   beta: float = 1.0, adv_clip: float = 2.0, released_v_old: bool = False,
                   policy_ema=(0.2, 0.01, 0.9), ckpt_ema_decay: float = 0.9, compute_dtype=jnp.float32,
                   semantics: UpdateSemantics = UpdateSemantics()):
  """Returns update(state, batch) -> (state, metrics); jit it with shardings/donation."""
  schedule = jnp.asarray(sigma_schedule, jnp.float32)
  n_sig = max(1, int(schedule.shape[0] * sigma_fraction))
  sem = semantics

  def velocity(params, batch: UpdateBatch, x_t, sigma):
    """sigma: [] or [K] (per sample)."""
    k = x_t.shape[0]
    tc, ctx = batch.text_cache, batch.ctx      # batch 1: broadcast inside each layer by the model
    bc = lambda x: jnp.broadcast_to(x, (k,) + x.shape[1:])
    hs = jnp.concatenate([x_t, bc(batch.cond)], axis=1)
    t = sigma * 1000.0
    if sem.int_timesteps:
      t = jnp.floor(t)
    t = jnp.broadcast_to(jnp.reshape(t, (-1, 1)), (k, batch.action.shape[1]))
    return apply(params, "denoise_chunk", hs, t, bc(batch.action), bc(batch.viewmats), bc(batch.Ks), tc, ctx)

  def loss_fn(params, v_old, batch, sigma, x_t):
    v = velocity(params, batch, x_t, sigma)
    v_old = jax.lax.stop_gradient(v_old) if not released_v_old else v
    out = nft_loss(v, v_old, x_t, batch.x0, sigma, batch.advantage, beta=beta, adv_clip_max=adv_clip,
                   overwrite_v_old=released_v_old)
    return jnp.mean(out.loss), (jnp.mean(out.positive_loss), jnp.mean(out.negative_loss), out.r)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def trajectory_grads(params, policy, batch: UpdateBatch, sigma, x_t):
    """Mean over the T trajectories of each one's loss and gradient (one trajectory's activations
    alive at a time); x_t [T, K, ...], sigma [] or [T, K]."""
    n_traj = batch.x0.shape[0]
    zeros = jax.tree.map(jnp.zeros_like, params)
    sig = jnp.broadcast_to(sigma, (n_traj,) + jnp.shape(sigma)[1:]) if jnp.ndim(sigma) else jnp.full((n_traj,), sigma)

    def one(carry, xs):
      gsum, lsum, psum, nsum, params, policy = carry
      b, xt, s = xs
      # v_old: the rollout policy on the same x_t, outside the differentiated function
      v_old = velocity(policy, b, xt, s) if not released_v_old else jnp.zeros_like(xt)
      (loss, (pos, neg, r)), g = grad_fn(params, v_old, b, s, xt)
      gsum = jax.tree.map(lambda a, c: a + c.astype(jnp.float32), gsum, g)
      return (gsum, lsum + loss, psum + pos, nsum + neg, params, policy), r

    per_traj = batch._replace(rl_step=jnp.zeros((n_traj,), jnp.int32))
    init = (zeros, jnp.float32(0), jnp.float32(0), jnp.float32(0), params, policy)
    (gsum, lsum, psum, nsum, _, _), rs = jax.lax.scan(one, init, (per_traj, x_t, sig))
    mean = lambda x: x / n_traj
    return jax.tree.map(mean, gsum), mean(lsum), mean(psum), mean(nsum), rs

  def optimizer_step(state: TrainState, batch: UpdateBatch, k_sig, k_eps):
    """Gradient over the sampled sigmas (x the trajectories) of `batch`, then one optimizer
    step and both EMAs."""
    n_traj, k = batch.advantage.shape
    if sem.per_sample_sigmas:   # [n_sig, T, K]: each sample its own subset of the schedule
      keys = jax.random.split(k_sig, n_traj * k)
      sigmas = jax.vmap(lambda kk: jax.random.permutation(kk, schedule)[:n_sig])(keys)
      sigmas = sigmas.reshape(n_traj, k, n_sig).transpose(2, 0, 1)
    else:
      sigmas = jax.random.permutation(k_sig, schedule)[:n_sig]
    eps_keys = jax.random.split(k_eps, n_sig)
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    # params/policy/batch ride in the carry: modules merged inside the body must live at the
    # loop's trace level (an nnx requirement), and XLA does not copy loop-invariant carries.
    def body(carry, xs):
      gsum, lsum, psum, nsum, params, policy, batch = carry
      sigma, ek = xs
      eps = jax.random.normal(ek, batch.x0.shape, batch.x0.dtype)
      s = jnp.reshape(sigma, jnp.shape(sigma) + (1,) * (batch.x0.ndim - jnp.ndim(sigma)))
      x_t = (1.0 - s) * batch.x0 + s * eps
      g, loss, pos, neg, r = trajectory_grads(params, policy, batch, sigma, x_t)
      gsum = jax.tree.map(lambda a, b: a + b, gsum, g)
      return (gsum, lsum + loss, psum + pos, nsum + neg, params, policy, batch), r

    init = (zeros, jnp.float32(0), jnp.float32(0), jnp.float32(0), state.params, state.policy, batch)
    (gsum, lsum, psum, nsum, _, _, _), rs = jax.lax.scan(body, init, (sigmas, eps_keys))
    div = n_sig if sem.sigma_reduction == "mean" else 1
    grads = jax.tree.map(lambda g: g / div, gsum)
    loss = lsum / div
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    applied = _applied(opt_state) & finite
    step = state.step + applied.astype(jnp.int32)
    clock = step if sem.ema_clock == "optimizer" else batch.rl_step
    decay = policy_decay(clock, *policy_ema)
    policy = ema_update(state.policy, params, decay)
    ema = ema_update(state.ema, params, ckpt_ema_decay)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    policy = jax.tree.map(lambda a, b: jnp.where(applied, a, b), policy, state.policy)
    ema = jax.tree.map(lambda a, b: jnp.where(applied, a, b), ema, state.ema)
    new = TrainState(params, opt_state, policy, ema, step, state.rng)
    metrics = {"loss": loss, "loss_positive": psum / div, "loss_negative": nsum / div, "grad_norm": grad_norm,
               "r_mean": jnp.mean(rs), "r_min": jnp.min(rs), "r_max": jnp.max(rs), "sigma_mean": jnp.mean(sigmas),
               "skipped_nonfinite": (~finite).astype(jnp.int32), "optimizer_step_applied": applied.astype(jnp.int32),
               "policy_decay": decay}
    return new, metrics

  def update(state: TrainState, batch: UpdateBatch):
    key = jax.random.wrap_key_data(state.rng)
    key, k_sig, k_eps = jax.random.split(key, 3)
    n_traj, k = batch.advantage.shape
    m = sem.samples_per_optimizer_step or k
    if k % m:
      raise ValueError(f"{k} kept samples per trajectory do not split into optimizer steps of {m}")
    n_opt = k // m
    if n_opt == 1:
      new, metrics = optimizer_step(state, batch, k_sig, k_eps)
    else:   # the released schedule: kept samples in order, m per trajectory per optimizer step
      split = lambda x: jnp.moveaxis(x.reshape((n_traj, n_opt, m) + x.shape[2:]), 1, 0)
      micro = (split(batch.x0), split(batch.advantage), jax.random.split(k_sig, n_opt), jax.random.split(k_eps, n_opt))

      def one(state, xs):
        x0, adv, ks, ke = xs
        return optimizer_step(state, batch._replace(x0=x0, advantage=adv), ks, ke)

      new, ms = jax.lax.scan(one, state, micro)
      metrics = {name: (jnp.sum(v) if name in ("skipped_nonfinite", "optimizer_step_applied") else
                        jnp.max(v) if name == "r_max" else jnp.min(v) if name == "r_min" else
                        v[-1] if name == "policy_decay" else jnp.mean(v)) for name, v in ms.items()}
    metrics["optimizer_steps"] = jnp.asarray(n_opt, jnp.int32)
    return new._replace(rng=jax.random.key_data(key)), metrics

  return update
