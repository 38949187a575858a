"""SWIRL-style learned interaction reward: IDM log-likelihood of the commanded action.

reward = mean over steps s of max(log p_IDM(a_s | x_s..x_{s+1}), -10)

The clamp at -10 (SWIRL) keeps one hopeless step from dominating the group's
z-scores. The IDM is any callable clip [F,H,W,C] -> logits [S,81]; wc_jax's is
`wc_jax.models.idm.InverseDynamicsModel`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from wc_jax.rewards import _checks, _model

LOG_LIKELIHOOD_FLOOR = -10.0
REDUCTIONS = ("mean", "sum")


def _idm_impl(idm, clip, commanded_actions, *, floor, reduce):
  fn = "idm_reward"
  s = _checks.shape_of(clip)
  if len(s) != 4:
    _checks.fail(fn, "clip", "[F,H,W,C] frames or latents", clip)
  _checks.check_ndim(fn, "commanded_actions", commanded_actions, 1, "[L] integer action labels")
  _checks.check_integer(fn, "commanded_actions", commanded_actions, "[L] integer action labels")
  logits = idm(clip)
  ls = _checks.shape_of(logits)
  if len(ls) != 2:
    raise ValueError(f"{fn}: idm must map a clip to [S,A] action logits, got shape {ls}")
  n_steps, n_lat = ls[0], _checks.shape_of(commanded_actions)[0]
  if n_steps > n_lat:
    raise ValueError(f"{fn}: the idm gives {n_steps} steps but only {n_lat} commanded actions")
  y = jnp.asarray(commanded_actions, jnp.int32)[n_lat - n_steps:]
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  ll = jnp.maximum(jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0], floor)
  return jnp.mean(ll) if reduce == "mean" else jnp.sum(ll)


def idm_reward(clip, commanded_actions, idm: Callable, *, floor: float = LOG_LIKELIHOOD_FLOOR,
               reduce: str = "mean"):
  """IDM reward of one candidate (jit-compiled).

  Args:
    clip: [F,H,W,C] generated frames (or latents) of the window.
    commanded_actions: int [L] commanded labels of the window's latents; the
      last S are scored (S = the IDM's number of steps, L or L-1).
    idm: clip -> logits [S,81]; an nnx.Module (weights traced) or a hashable callable.
    floor: clamp of each step's log-likelihood (-10 in SWIRL).
    reduce: "mean" (default, length-independent) or "sum" over steps.

  Returns:
    float32 scalar in [floor, 0].
  """
  if reduce not in REDUCTIONS:
    raise ValueError(f"idm_reward: reduce must be one of {REDUCTIONS}, got {reduce!r}")
  return _model.call_with_model(_idm_impl, idm, (clip, commanded_actions),
                                {"floor": float(floor), "reduce": reduce})
