"""The negative-aware update (WorldCompass §1.3) as one jitted function of arrays.

For the kept candidates (best-of-N extremes) and a random subset of the rollout's sigmas:
x_t = (1 - s) x0 + s eps, v_theta = current model, v_old = rollout policy (EMA, no grad),
both on the target clip against the rollout's (frozen) caches; NFT loss; gradients averaged
over sigmas (lax.scan, one sigma's activations alive at a time); clip + Muon/AdamW; then both
EMAs. A non-finite loss or gradient leaves the state unchanged and is reported.
"""
from __future__ import annotations

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
  x0: jax.Array         # [K, C, chunk, H, W] kept candidates' clean latents
  advantage: jax.Array  # [K] combined advantage (normalised weights; clipped in the loss)
  cond: jax.Array       # [1, C+1, chunk, H, W]
  action: jax.Array     # [1, chunk]
  viewmats: jax.Array   # [1, chunk, 4, 4]
  Ks: jax.Array         # [1, chunk, 3, 3]
  text_cache: TextCache
  ctx: VisionCache | None


def state_shardings(state: TrainState, param_shardings, mesh) -> TrainState:
  """Every part of the train state sharded like the parameters it mirrors (FSDP)."""
  from wc_jax.sharding import shardings_like_params
  like = lambda t: shardings_like_params(t, state.params, param_shardings, mesh)
  from jax.sharding import NamedSharding, PartitionSpec as P
  rep = NamedSharding(mesh, P())
  return TrainState(param_shardings, like(state.opt_state), like(state.policy), like(state.ema), rep, rep)


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32, copy=True), t)
  return TrainState(params=params, opt_state=tx.init(params), policy=copy(params), ema=copy(params),
                    step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)))


def _applied(opt_state) -> jax.Array:
  """True when this update really moved the weights (MultiSteps applies every k-th call)."""
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0
  return jnp.asarray(True)


def make_update_fn(apply, tx: optax.GradientTransformation, *, sigma_schedule, sigma_fraction: float = 0.5,
                   beta: float = 1.0, adv_clip: float = 2.0, released_v_old: bool = False,
                   policy_ema=(0.2, 0.01, 0.9), ckpt_ema_decay: float = 0.9, compute_dtype=jnp.float32):
  """Returns update(state, batch) -> (state, metrics); jit it with shardings/donation."""
  schedule = jnp.asarray(sigma_schedule, jnp.float32)
  n_sig = max(1, int(schedule.shape[0] * sigma_fraction))

  def velocity(params, batch: UpdateBatch, x_t, sigma):
    k = x_t.shape[0]
    tc, ctx = batch.text_cache, batch.ctx      # batch 1: broadcast inside each layer by the model
    bc = lambda x: jnp.broadcast_to(x, (k,) + x.shape[1:])
    hs = jnp.concatenate([x_t, bc(batch.cond)], axis=1)
    t = jnp.full((k, batch.action.shape[1]), sigma * 1000.0)
    return apply(params, "denoise_chunk", hs, t, bc(batch.action), bc(batch.viewmats), bc(batch.Ks), tc, ctx)

  def loss_fn(params, v_old, batch, sigma, x_t):
    v = velocity(params, batch, x_t, sigma)
    v_old = jax.lax.stop_gradient(v_old) if not released_v_old else v
    out = nft_loss(v, v_old, x_t, batch.x0, sigma, batch.advantage, beta=beta, adv_clip_max=adv_clip,
                   overwrite_v_old=released_v_old)
    return jnp.mean(out.loss), (jnp.mean(out.positive_loss), jnp.mean(out.negative_loss), out.r)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state: TrainState, batch: UpdateBatch):
    key = jax.random.wrap_key_data(state.rng)
    key, k_sig, k_eps = jax.random.split(key, 3)
    sigmas = jax.random.permutation(k_sig, schedule)[:n_sig]
    eps_keys = jax.random.split(k_eps, n_sig)
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    # params/policy/batch ride in the carry: modules merged inside the body must live at the
    # loop's trace level (an nnx requirement), and XLA does not copy loop-invariant carries.
    def body(carry, xs):
      gsum, lsum, psum, nsum, params, policy, batch = carry
      sigma, ek = xs
      eps = jax.random.normal(ek, batch.x0.shape, batch.x0.dtype)
      x_t = (1.0 - sigma) * batch.x0 + sigma * eps
      # v_old: the rollout policy on the same x_t, outside the differentiated function
      v_old = velocity(policy, batch, x_t, sigma) if not released_v_old else jnp.zeros_like(x_t)
      (loss, (pos, neg, r)), g = grad_fn(params, v_old, batch, sigma, x_t)
      gsum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), gsum, g)
      return (gsum, lsum + loss, psum + pos, nsum + neg, params, policy, batch), r

    init = (zeros, jnp.float32(0), jnp.float32(0), jnp.float32(0), state.params, state.policy, batch)
    (gsum, lsum, psum, nsum, _, _, _), rs = jax.lax.scan(body, init, (sigmas, eps_keys))
    grads = jax.tree.map(lambda g: g / n_sig, gsum)
    loss = lsum / n_sig
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    applied = _applied(opt_state) & finite
    step = state.step + applied.astype(jnp.int32)
    policy = ema_update(state.policy, params, policy_decay(step, *policy_ema))
    ema = ema_update(state.ema, params, ckpt_ema_decay)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    policy = jax.tree.map(lambda a, b: jnp.where(applied, a, b), policy, state.policy)
    ema = jax.tree.map(lambda a, b: jnp.where(applied, a, b), ema, state.ema)
    new = TrainState(params, opt_state, policy, ema, step, jax.random.key_data(key))
    metrics = {"loss": loss, "loss_positive": psum / n_sig, "loss_negative": nsum / n_sig, "grad_norm": grad_norm,
               "r_mean": jnp.mean(rs), "r_min": jnp.min(rs), "r_max": jnp.max(rs), "sigma_mean": jnp.mean(sigmas),
               "skipped_nonfinite": (~finite).astype(jnp.int32), "optimizer_step_applied": applied.astype(jnp.int32),
               "policy_decay": policy_decay(step, *policy_ema)}
    return new, metrics

  return update
