"""Flow-matching sampling maths: the shifted sigma schedule and Euler steps (the AR chunk
loop that uses them is `wc_jax.inference.engine.ChunkEngine`).

sigma = linspace(1, 0, N+1), shifted sigma' = s*sigma / (1 + (s-1)*sigma); the model sees
t = 1000*sigma'; Euler: x <- x + (sigma'_{i+1} - sigma'_i) * v.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def sigmas(steps: int, shift: float = 5.0) -> np.ndarray:
  """[steps+1] float32 shifted schedule, from 1 to 0."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  s = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)
  return (shift * s / (1.0 + (shift - 1.0) * s)).astype(np.float32)


def euler(velocity_fn: Callable, x, sig, aux=None):
  """Integrates dx/dsigma = v from sig[0] to sig[-1]; velocity_fn(x, t, aux), t = 1000*sigma.

  `aux` (e.g. model state and caches) rides in the loop carry, so modules merged inside
  velocity_fn live at the loop's trace level (what nnx transforms require)."""
  sig = jnp.asarray(sig, jnp.float32)

  def step(i, carry):
    x, aux = carry
    v = velocity_fn(x, sig[i] * 1000.0, aux)
    return (x + (sig[i + 1] - sig[i]) * v.astype(jnp.float32)).astype(x.dtype), aux

  return jax.lax.fori_loop(0, sig.shape[0] - 1, step, (x, aux))[0]
