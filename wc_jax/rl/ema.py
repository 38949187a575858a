"""The two EMAs of WorldCompass, both updated after every optimizer step.

* rollout policy ("policy shadow"): decay min(0.9, 0.2 + 0.01 * step) - it generates the
  rollouts and gives v_old in the NFT loss;
* checkpoint EMA: fixed decay 0.9 - the weights one exports.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def policy_decay(step, start: float = 0.2, slope: float = 0.01, cap: float = 0.9):
  return jnp.minimum(cap, start + slope * jnp.asarray(step, jnp.float32))


def ema_update(ema, params, decay):
  """ema <- decay * ema + (1 - decay) * params, in the EMA's dtype (fp32)."""
  decay = jnp.asarray(decay, jnp.float32)
  return jax.tree.map(lambda e, p: (decay * e.astype(jnp.float32) + (1 - decay) * p.astype(jnp.float32)).astype(e.dtype),
                      ema, params)
