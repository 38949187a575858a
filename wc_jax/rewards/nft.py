"""Negative-aware fine-tuning loss (DiffusionNFT, arXiv 2509.16117) as a pure function.

For a clean rollout latent x0, noise eps and a sampled sigma,
x_t = (1 - sigma) x0 + sigma eps. With the current velocity v_theta and the
rollout policy's v_old (stop-gradient):

    v+ = beta v_theta + (1 - beta) v_old        x0+ = x_t - sigma v+
    v- = (1 + beta) v_old - beta v_theta        x0- = x_t - sigma v-
    m+- = sg(max(mean|x0+- - x0|, 1e-5))        (per sample, over non-batch dims)
    L+- = mean((x0+- - x0)^2 / m+-)
    r   = clip(clip(A, -c, c) / c / 2 + 0.5, 0, 1)
    loss = (r L+ + (1 - r) L-) / beta / grad_accum_steps

beta = 1 (the WorldCompass setting) gives v+ = v_theta, v- = 2 v_old - v_theta.

The released WorldCompass code overwrites v_old with v_theta before the loss
(`model_pred_old = model_pred = transformer(...)` in the second forward), so
its L- equals L+ in value and the gradient is (2r - 1) grad L+ / 2: plain
advantage-weighted x0 regression. `overwrite_v_old=True` reproduces that;
the default is the paper's form with the true old-policy prediction.
"""
from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks
from wc_jax.rewards.advantages import GrpoInputs, combine_advantages, prepare_grpo

ADV_CLIP_MAX = 2.0
MIN_WEIGHT = 1e-5


class NftLoss(NamedTuple):
  loss: jax.Array           # [B] final per-sample loss (differentiate its sum)
  positive_loss: jax.Array  # [B] L+
  negative_loss: jax.Array  # [B] L-
  r: jax.Array              # [B] advantage mapped to [0,1]


def nft_sigma_schedule(num_steps: int = 40, shift: float = 5.0):
  """The rollout sampler's sigmas the NFT loss draws from: linspace(1,0,N+1)
  shifted by s' = shift*s/(1+(shift-1)*s), last (zero) one dropped. float32 [N]."""
  if num_steps < 1:
    raise ValueError(f"nft_sigma_schedule: num_steps must be >= 1, got {num_steps}")
  s = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)
  s = shift * s / (1.0 + (shift - 1.0) * s)
  return s[:-1]


def sample_train_sigmas(key, schedule, fraction: float = 0.5):
  """Draws int(len * fraction) sigmas of `schedule` without replacement, in random order."""
  n = int(schedule.shape[0] * fraction)
  if n < 1:
    raise ValueError(f"sample_train_sigmas: fraction {fraction} of {schedule.shape[0]} sigmas is none")
  return jax.random.permutation(key, schedule)[:n]


@jax.jit
def noisy_latents(x0, noise, sigma):
  """x_t = (1 - sigma) x0 + sigma noise; sigma scalar or [B] (broadcast over non-batch dims)."""
  if _checks.shape_of(x0) != _checks.shape_of(noise):
    raise ValueError(f"noisy_latents: x0 and noise must share one shape, got "
                     f"{_checks.shape_of(x0)} and {_checks.shape_of(noise)}")
  s = _per_sample("noisy_latents", sigma, x0)
  return (1.0 - s) * x0 + s * noise


def _per_sample(fn, v, x):
  """Scalar or [B] -> broadcastable [B,1,...] float32."""
  v = jnp.asarray(v, jnp.float32)
  b, nd = _checks.shape_of(x)[0], len(_checks.shape_of(x))
  if v.shape == ():
    return v
  if v.shape != (b,):
    raise ValueError(f"{fn}: sigma must be a scalar or [B] with B={b}, got shape {v.shape}")
  return v.reshape((b,) + (1,) * (nd - 1))


def nft_advantage(advantages: Mapping[str, jax.Array], weights: Mapping[str, float], *,
                  normalize_weights: bool = True, adv_clip_max: float = ADV_CLIP_MAX):
  """The advantage the NFT loss uses: clip(sum_k (w_k / sum w) A_k, +-c).

  `normalize_weights=True` (default) is the reference loss (2/3 action,
  1/3 drift); False uses the raw weights.
  """
  a = combine_advantages(advantages, weights, normalize_weights=normalize_weights)
  return jnp.clip(a, -adv_clip_max, adv_clip_max)


@functools.partial(jax.jit, static_argnames=("overwrite_v_old", "grad_accum_steps"))
def nft_loss(v_theta, v_old, x_t, x0, sigma, advantage, *, beta: float = 1.0,
             adv_clip_max: float = ADV_CLIP_MAX, min_weight: float = MIN_WEIGHT,
             overwrite_v_old: bool = False, grad_accum_steps: int = 1) -> NftLoss:
  """NFT loss per sample.

  Args:
    v_theta: [B,...] current model's velocity on the target-clip latents.
    v_old: [B,...] rollout (EMA) policy's velocity, same shape; gradients are
      stopped. Ignored when `overwrite_v_old`.
    x_t: [B,...] noisy latents fed to both models.
    x0: [B,...] clean rollout latents.
    sigma: scalar or [B] noise level of x_t.
    advantage: [B] combined advantage (clipped here to +-adv_clip_max).
    beta: NFT guidance strength (1.0 in WorldCompass).
    adv_clip_max: c.
    min_weight: floor of the adaptive weight m+-.
    overwrite_v_old: reproduce the released code (v_old := v_theta).
    grad_accum_steps: the loss is divided by it, as the reference does.

  Returns:
    NftLoss of [B] float32 arrays; take jax.grad of `loss.sum()` (or mean).
  """
  fn = "nft_loss"
  shape = _checks.shape_of(v_theta)
  if len(shape) < 2:
    _checks.fail(fn, "v_theta", "[B,...] with at least one non-batch dim", v_theta)
  for name, x in (("v_old", v_old), ("x_t", x_t), ("x0", x0)):
    if _checks.shape_of(x) != shape:
      raise ValueError(f"{fn}: {name} must have v_theta's shape {shape}, got {_checks.shape_of(x)}")
  if _checks.shape_of(advantage) != shape[:1]:
    raise ValueError(f"{fn}: advantage must be [B] with B={shape[0]}, got shape "
                     f"{_checks.shape_of(advantage)}")
  if grad_accum_steps < 1:
    raise ValueError(f"{fn}: grad_accum_steps must be >= 1, got {grad_accum_steps}")
  v_theta = jnp.asarray(v_theta, jnp.float32)
  old = jax.lax.stop_gradient(v_theta if overwrite_v_old else jnp.asarray(v_old, jnp.float32))
  x_t = jnp.asarray(x_t, jnp.float32)
  x0 = jnp.asarray(x0, jnp.float32)
  s = _per_sample(fn, sigma, v_theta)
  beta = jnp.asarray(beta, jnp.float32)
  a = jnp.clip(jnp.asarray(advantage, jnp.float32), -adv_clip_max, adv_clip_max)
  r = jnp.clip(a / adv_clip_max / 2.0 + 0.5, 0.0, 1.0)
  axes = tuple(range(1, len(shape)))

  def branch(v):
    err = (x_t - s * v) - x0
    m = jax.lax.stop_gradient(jnp.maximum(jnp.mean(jnp.abs(err), axis=axes, keepdims=True),
                                          min_weight))
    return jnp.mean(err * err / m, axis=axes)

  pos = branch(beta * v_theta + (1.0 - beta) * old)
  neg = branch((1.0 + beta) * old - beta * v_theta)
  loss = (r * pos + (1.0 - r) * neg) / beta / grad_accum_steps
  return NftLoss(loss, pos, neg, r)


def step_advantages(pooled: Mapping[str, jax.Array], weights: Mapping[str, float], *, std_type: str,
                    best_of_n: int, adv_clip: float) -> tuple[GrpoInputs, jax.Array]:
  """An RL step's scores [T, G] per reward -> (prepare_grpo's output, the NFT advantage [T, G]):
  the one path every backbone's step takes from rewards to the loss's advantage."""
  grpo = prepare_grpo(pooled, weights, std_type=std_type, best_of_n=best_of_n)
  return grpo, nft_advantage(grpo.advantages, weights, adv_clip_max=adv_clip)


def reward_metrics(pooled: Mapping[str, jax.Array], grpo: GrpoInputs, adv: jax.Array) -> dict[str, float]:
  """What a step logs about its rewards: mean / std of every reward over all candidates and over
  the kept ones, the advantage divisor (pooled when std_type is global), the kept advantage."""
  kept = jnp.asarray(grpo.kept)
  out = {}
  for k, v in pooled.items():
    out[f"reward/{k}/mean"] = float(jnp.mean(v))
    out[f"reward/{k}/std"] = float(jnp.std(v))
    out[f"reward/{k}/kept_mean"] = float(jnp.mean(v[kept]))
    out[f"reward/{k}/std_used"] = float(jnp.mean(grpo.stds[k]))
  out["advantage/kept_mean"] = float(jnp.mean(adv[kept]))
  return out
