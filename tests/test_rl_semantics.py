"""The released WorldCompass update semantics, checked against the reference's rules by hand:
optimizer steps per RL step, per-sample sigma subsets, int(sigma*1000) timesteps, summed sigma
loss, the policy EMA counted in RL steps, and the released reward window."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wc_jax.models.worldplay.model import TextCache
from wc_jax.rewards.nft import nft_sigma_schedule
from wc_jax.rewards.stage import window_frame_range
from wc_jax.rl.update import UpdateBatch, UpdateSemantics, init_state, make_update_fn

T, K, C, CHUNK, H, W = 2, 4, 2, 2, 2, 3


def _batch(rl_step):
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  tc = TextCache(jnp.zeros((T, 1, 1, 1, 1, 1)), jnp.zeros((T, 1, 1, 1, 1, 1)), jnp.ones((T, 1, 1), bool))
  return UpdateBatch(x0=f(T, K, C, CHUNK, H, W), advantage=f(T, K), cond=f(T, 1, C + 1, CHUNK, H, W),
                     action=jnp.zeros((T, 1, CHUNK)), viewmats=jnp.zeros((T, 1, CHUNK, 4, 4)),
                     Ks=jnp.zeros((T, 1, CHUNK, 3, 3)), text_cache=tc, ctx=None, rl_step=jnp.asarray(rl_step, jnp.int32))


def _run(semantics, steps=3, record=None):
  """A linear 'model' v = w * x_t (+ t/1000 so the timestep matters); records the fed timesteps."""
  def apply(params, method, hs, t, action, viewmats, Ks, tc, ctx):
    assert method == "denoise_chunk"
    if record is not None:
      jax.debug.callback(lambda tt: record.append(np.asarray(tt)), t)
    return params["w"] * hs[:, :C] + (t / 1000.0)[:, None, :, None, None]

  schedule = nft_sigma_schedule(8, 3.0)
  tx = optax.sgd(1e-2)
  update = jax.jit(make_update_fn(apply, tx, sigma_schedule=schedule, sigma_fraction=0.5, semantics=semantics))
  state = init_state({"w": jnp.ones((C, 1, 1, 1))}, tx, seed=0)
  out = []
  for s in range(1, steps + 1):
    state, m = update(state, _batch(s))
    out.append({k: float(v) for k, v in m.items()})
  return state, out, np.asarray(schedule)


def test_released_schedule_of_optimizer_steps_and_ema_clock():
  sem = UpdateSemantics.released()            # 2 kept samples per optimizer step
  state, metrics, _ = _run(sem)
  assert int(state.step) == 3 * (K // 2)       # 3 RL steps x K/2 optimizer steps
  for s, m in enumerate(metrics, 1):
    assert m["optimizer_steps"] == K // 2 and m["optimizer_step_applied"] == K // 2
    assert m["policy_decay"] == pytest.approx(min(0.9, 0.2 + 0.01 * s))   # counted in RL steps
  state, metrics, _ = _run(UpdateSemantics())  # wc_jax: one optimizer step, EMA in optimizer steps
  assert int(state.step) == 3 and [m["optimizer_steps"] for m in metrics] == [1, 1, 1]
  assert metrics[-1]["policy_decay"] == pytest.approx(0.2 + 0.01 * 3)


def test_released_sigmas_are_per_sample_subsets_fed_as_int_timesteps():
  seen = []
  _run(UpdateSemantics.released(), steps=1, record=seen)
  _, _, schedule = _run(UpdateSemantics.released(), steps=1)
  n_sig = max(1, int(len(schedule) * 0.5))
  ts = np.concatenate([t[:, 0] for t in seen])                  # one timestep per sample per call
  allowed = np.floor(schedule * 1000.0)
  assert np.all(ts == np.floor(ts)) and np.all(np.isin(ts, allowed))
  # per call (one sigma index, one trajectory, one optimizer step) the 2 samples may differ
  assert any(len(set(t[:, 0])) > 1 for t in seen)
  # every (RL step, trajectory, sample) uses n_sig distinct sigmas: collect per sample position
  assert len(seen) % n_sig == 0
  seen_w = []
  _run(UpdateSemantics(), steps=1, record=seen_w)                # shared subset, float timesteps
  assert all(len(set(t[:, 0])) == 1 for t in seen_w)
  assert not np.all([np.all(t == np.floor(t)) for t in seen_w])


def test_summed_sigma_loss_is_n_sig_times_the_mean():
  mean = UpdateSemantics(sigma_reduction="mean")
  total = UpdateSemantics(sigma_reduction="sum")
  _, m_mean, schedule = _run(mean, steps=1)
  _, m_sum, _ = _run(total, steps=1)
  n_sig = max(1, int(len(schedule) * 0.5))
  assert m_sum[0]["loss"] == pytest.approx(n_sig * m_mean[0]["loss"], rel=1e-5)


def test_bad_semantics_are_named():
  with pytest.raises(ValueError, match="sigma_reduction must be 'mean' or 'sum'"):
    UpdateSemantics(sigma_reduction="max")
  with pytest.raises(ValueError, match="ema_clock must be 'optimizer' or 'rl'"):
    UpdateSemantics(ema_clock="wall")
  with pytest.raises(ValueError, match="4 kept samples per trajectory do not split into optimizer steps of 3"):
    _run(UpdateSemantics(samples_per_optimizer_step=3), steps=1)


def test_released_reward_window_keeps_the_new_latents_frames():
  assert window_frame_range(1, 4, "released") == (0, 13)
  assert window_frame_range(2, 4, "released") == (13, 29)      # the 4 new latents' 16 frames
  assert window_frame_range(2, 4, "wc_jax") == (12, 29)
  with pytest.raises(ValueError, match="reward window must be one of"):
    window_frame_range(2, 4, "both")
