"""UniPC multistep sampling (bh2, order 2, x0-prediction) on the shifted flow schedule, with
classifier-free guidance and LingBot-World's two-expert switch.

The reference (wan/utils/fm_solvers_unipc.py, diffusers' UniPC adapted to flow matching;
wan/image2video.py's loop) in closed form:

* schedule: sigma = linspace(0.999, 0, N+1)[:-1] shifted s*sigma/(1+(s-1)*sigma), the model's
  timestep t = int(1000*sigma) (truncated), then a final sigma 0;
* x0-prediction: x0_i = x_i - sigma_i * v_i (v: the guided velocity);
* with alpha = 1 - sigma, lambda = log(alpha/sigma), step i first corrects the previous
  predictor's sample (UniC, order of step i-1, from i > 0), then predicts x_{i+1} (UniP, order
  min(2, N-i, i+1): one at the first and the last step). Both are fixed linear combinations of
  the kept sample and the last x0 predictions, so the coefficients are computed once on the
  host (`coefficients`) and the loop is a `lax.scan`;
* expert: the high-noise expert for t >= boundary*1000 (a prefix of the steps), else the low
  one; guidance g = guide_scale[1] (high) / guide_scale[0] (low); the camera conditioning goes
  to both CFG branches.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
BOUNDARY = 0.947           # t >= 947 -> high-noise expert (wan_i2v_A14B.py)


def schedule(steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
  """(timesteps int64 [N], sigmas float32 [N+1] ending with 0) of FlowUniPCMultistepScheduler
  (shift=1 at construction, `shift` at set_timesteps)."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
  s = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
  s = shift * s / (1 + (shift - 1) * s)
  timesteps = (s * num_train_timesteps).astype(np.int64)
  return timesteps, np.concatenate([s, [0.0]]).astype(np.float32)


class Coefficients(NamedTuple):
  """Per step i [N]: corrected = cx*x + cl*last + c0*m0 + c1*m1 + ct*x0 (m0, m1: the previous
  two x0 predictions, x: this step's sample, last: the previous corrected sample), then
  x_next = px*corrected + p0*x0 + p1*m0."""
  cx: np.ndarray
  cl: np.ndarray
  c0: np.ndarray
  c1: np.ndarray
  ct: np.ndarray
  px: np.ndarray
  p0: np.ndarray
  p1: np.ndarray
  sigma: np.ndarray       # sigma_i (x0 = x - sigma_i * v)

  def at(self, i: int) -> "Coefficients":
    return Coefficients(*(a[i] for a in self))

  def slice(self, a: int, b: int) -> "Coefficients":
    return Coefficients(*(x[a:b] for x in self))


def coefficients(sigmas: np.ndarray, order: int = 2, lower_order_final: bool = True) -> Coefficients:
  """UniPC-bh2 (predict x0) coefficients for the schedule `sigmas` [N+1] (float64 maths)."""
  if order not in (1, 2):
    raise ValueError(f"UniPC order {order} not supported (1 or 2)")
  sig = np.asarray(sigmas, np.float64)
  n = len(sig) - 1
  with np.errstate(divide="ignore"):
    lam = np.log(1 - sig) - np.log(sig)          # +inf at the final sigma 0
  orders = [min(order, n - i if lower_order_final else order, i + 1) for i in range(n)]
  rows = []
  for i in range(n):
    cx, cl, c0, c1, ct = 1.0, 0.0, 0.0, 0.0, 0.0
    if i > 0:                                     # UniC with the order of the previous step
      o = orders[i - 1]
      h = lam[i] - lam[i - 1]
      a_t, ratio = 1 - sig[i], sig[i] / sig[i - 1]
      hh = -h
      phi1 = np.expm1(hh)
      bh = np.expm1(hh)
      if o == 1:
        rhos = np.asarray([0.5])
      else:
        phik = phi1 / hh - 1
        b1 = phik / bh
        phik = phik / hh - 1 / 2
        b2 = phik * 2 / bh
        rk = (lam[i - 2] - lam[i - 1]) / h
        rhos = np.linalg.solve(np.asarray([[1.0, 1.0], [rk, 1.0]]), np.asarray([b1, b2]))
      cx, cl = 0.0, ratio
      c0 = -a_t * phi1 + a_t * bh * rhos[-1]
      ct = -a_t * bh * rhos[-1]
      if o == 2:
        c0 += a_t * bh * rhos[0] / rk
        c1 = -a_t * bh * rhos[0] / rk
    p = orders[i]                                 # UniP
    a_t = 1 - sig[i + 1]
    if sig[i + 1] == 0:                           # lambda = inf: x_next = x0 exactly
      px, p0, p1 = 0.0, 1.0, 0.0
    else:
      h = lam[i + 1] - lam[i]
      phi1 = np.expm1(-h)
      px, p0, p1 = sig[i + 1] / sig[i], -a_t * phi1, 0.0
      if p == 2:
        rk = (lam[i - 1] - lam[i]) / h
        w = a_t * np.expm1(-h) * 0.5 / rk
        p0 += w
        p1 = -w
    rows.append((cx, cl, c0, c1, ct, px, p0, p1, sig[i]))
  cols = np.asarray(rows, np.float64).T.astype(np.float32)
  return Coefficients(*cols)


class State(NamedTuple):
  """The sampler carry: sample x, last corrected sample, the last two x0 predictions."""
  x: jax.Array
  last: jax.Array
  m0: jax.Array
  m1: jax.Array

  @classmethod
  def init(cls, noise) -> "State":
    z = jnp.zeros_like(noise, jnp.float32)
    return cls(noise.astype(jnp.float32), z, z, z)


def update(state: State, velocity, c: Coefficients) -> State:
  """One scheduler step from the guided velocity at state.x (coefficients of this step)."""
  x = state.x
  x0 = x - c.sigma * velocity.astype(jnp.float32)
  corrected = c.cx * x + c.cl * state.last + c.c0 * state.m0 + c.c1 * state.m1 + c.ct * x0
  x_next = c.px * corrected + c.p0 * x0 + c.p1 * state.m0
  return State(x_next, corrected, x0, state.m0)


def expert_runs(timesteps: np.ndarray, boundary: float = BOUNDARY,
                num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[tuple[int, int, bool]]:
  """[(start, stop, is_high)] maximal runs of steps served by one expert (t >= boundary*T: high)."""
  high = np.asarray(timesteps) >= boundary * num_train_timesteps
  runs, start = [], 0
  for i in range(1, len(high) + 1):
    if i == len(high) or high[i] != high[start]:
      runs.append((start, i, bool(high[start])))
      start = i
  return runs


def guided_velocity(apply: Callable, state, x, t, context, context_null, y, cam, guide: float):
  """uncond + g * (cond - uncond), both branches in one batch of 2B (camera in both)."""
  b = x.shape[0]
  lc, ln = context.shape[1], context_null.shape[1]
  length = max(lc, ln)
  ctx = jnp.concatenate([jnp.pad(context, ((0, 0), (0, length - lc), (0, 0))),
                         jnp.pad(context_null, ((0, 0), (0, length - ln), (0, 0)))], axis=0)
  y2 = None if y is None else jnp.concatenate([y, y], axis=0)
  cam2 = cam if cam is None or cam.shape[0] == 1 else jnp.concatenate([cam, cam], axis=0)
  x2 = jnp.concatenate([x, x], axis=0).astype(x.dtype)
  v = apply(state, x2, jnp.full((2 * b,), t, jnp.float32), ctx, y=y2, cam=cam2).astype(jnp.float32)
  cond, uncond = v[:b], v[b:]
  return uncond + guide * (cond - uncond), cond, uncond


@functools.partial(jax.jit, static_argnames=("apply", "guide", "trace"))
def _run(apply, expert_state, state: State, coefs: Coefficients, timesteps, context, context_null, y, cam, *,
         guide: float, trace: bool):
  def step(carry, xs):
    st, params = carry
    c, t = xs
    v, cond, uncond = guided_velocity(apply, params, st.x, t, context, context_null, y, cam, guide)
    new = update(st, v, c)
    rec = (st.x, cond, uncond, v, new.x) if trace else None
    return (new, params), rec

  (state, _), recs = jax.lax.scan(step, (state, expert_state), (coefs, timesteps.astype(jnp.float32)))
  return state, recs


class Trace(NamedTuple):
  """Per step [N, B, ...]: model input, cond / uncond velocities, guided velocity, scheduler output."""
  latent_in: jax.Array
  cond: jax.Array
  uncond: jax.Array
  noise_pred: jax.Array
  latent_out: jax.Array


def sample(apply: Callable, low_state, high_state, noise, *, context, context_null, y=None, cam=None,
           steps: int = 70, shift: float = 10.0, guide_scale=(5.0, 5.0), boundary: float = BOUNDARY,
           num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, trace: bool = False):
  """Denoises `noise` [B, C, F, H, W] -> final latent (and a `Trace` if asked).

  apply(state, x, t, context, y=, cam=) is the expert's velocity (e.g. `dit.functional`'s
  Apply); low_state / high_state: the two experts' states (one graph). context /
  context_null: [B, L, text_dim] prompt and negative-prompt states; y: [B, Cy, F, H, W] i2v
  condition; cam: [B or 1, 384, F, H, W] or None. guide_scale: (low, high) or one float.
  """
  if isinstance(guide_scale, (int, float)):
    guide_scale = (float(guide_scale), float(guide_scale))
  if noise.ndim != 5:
    raise ValueError(f"noise must be [B, C, F, H, W], got {tuple(noise.shape)}")
  for name, c in (("context", context), ("context_null", context_null)):
    if c.ndim != 3 or c.shape[0] != noise.shape[0]:
      raise ValueError(f"{name} must be [B={noise.shape[0]}, L, D], got {tuple(c.shape)}")
  timesteps, sigmas = schedule(steps, shift, num_train_timesteps)
  coefs = coefficients(sigmas)
  state = State.init(noise)
  recs = []
  for a, b, high in expert_runs(timesteps, boundary, num_train_timesteps):
    params = high_state if high else low_state
    if params is None:
      raise ValueError(f"steps {a}..{b - 1} (t={timesteps[a]}..{timesteps[b - 1]}) need the "
                       f"{'high' if high else 'low'}-noise expert, which was not given")
    state, rec = _run(apply, params, state, coefs.slice(a, b), jnp.asarray(timesteps[a:b]), context, context_null,
                      y, cam, guide=float(guide_scale[1] if high else guide_scale[0]), trace=trace)
    recs.append(rec)
  if not trace:
    return state.x
  return state.x, Trace(*(jnp.concatenate(parts, axis=0) for parts in zip(*recs)))
