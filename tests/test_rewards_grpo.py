"""Group advantages, best-of-N selection and the NFT loss."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wc_jax.rewards import (best_of_n_mask, combine_advantages, group_advantages, nft_advantage,
                            nft_loss, nft_sigma_schedule, noisy_latents, prepare_grpo,
                            sample_train_sigmas)
from wc_jax.rewards.registry import default_weights, get_reward, weights_from_reference_config
from wc_jax.tools import check_fixture


@pytest.fixture(scope="module")
def grpo_dir(fixtures_dir):
  return fixtures_dir / "rewards" / "grpo"


@pytest.fixture(scope="module")
def adv(grpo_dir):
  return np.load(grpo_dir / "advantages.npz")


def test_check_fixture_grpo_all_within_tolerance(grpo_dir):
  kind, results, ok = check_fixture.run(grpo_dir, out=None)
  assert kind == "grpo"
  assert ok, [(r.name, r.max_rel) for r in results if not r.ok]
  names = {r.name for r in results}
  for s in ("gpu_para1_global", "gpu_para2_global", "gpu_para1_sample", "gpu_para2_sample"):
    assert f"{s}/kept_mask" in names and f"{s}/combined" in names
  for v in ("released", "paper"):
    assert f"nft/{v}/grad_v_theta" in names and f"nft/{v}/final_loss" in names


REWARDS = ("fine_action", "drift")
WEIGHTS = {"fine_action": 2.0, "drift": 1.0}


def _rewards(adv):
  return {"fine_action": adv["reward_fine_action"], "drift": adv["reward_drift"]}


def test_clean_default_is_the_released_layout(adv):
  """Default (no layout artefacts) == the gpu_para1 scenarios; g=2 differs from it."""
  for std_type in ("global", "sample"):
    res = prepare_grpo(_rewards(adv), WEIGHTS, std_type=std_type)
    np.testing.assert_allclose(res.combined, adv[f"gpu_para1_{std_type}_combined"], atol=2e-6)
    np.testing.assert_array_equal(res.kept, adv[f"gpu_para1_{std_type}_kept_mask"])
  # the duplicated gather (g=2) gives std_clean / std_dup = sqrt((2PG-1) / (2(PG-1)))
  dup = group_advantages(adv["reward_drift"], reference_ranks_per_group=2)
  clean = group_advantages(adv["reward_drift"])
  p, g = adv["reward_drift"].shape
  ratio = np.sqrt((2 * p * g - 1) / (2 * (p * g - 1)))
  np.testing.assert_allclose(np.asarray(clean.std) / np.asarray(dup.std), ratio, rtol=1e-5)
  # per-rank selection with the floor: 2 best + 1 worst on each half of the group
  kept = np.asarray(best_of_n_mask(adv["gpu_para2_global_combined"], 6, reference_ranks_per_group=2))
  for row, c in zip(kept, adv["gpu_para2_global_combined"]):
    for half in (slice(0, 6), slice(6, 12)):
      order = np.argsort(c[half])
      assert set(np.flatnonzero(row[half])) == set(order[-2:]) | set(order[:1])


def test_best_of_n_keeps_extremes_and_std_types(adv):
  c = adv["gpu_para1_global_combined"]
  kept = np.asarray(best_of_n_mask(c, 4))
  for row, ci in zip(kept, c):
    order = np.argsort(ci)
    assert set(np.flatnonzero(row)) == set(order[:2]) | set(order[-2:])
  r = adv["reward_drift"]
  gm = group_advantages(r, std_type="group_max")
  np.testing.assert_allclose(gm.std, np.full(4, np.std(r, axis=1, ddof=1).max() + 1e-8), rtol=1e-6)
  np.testing.assert_allclose(group_advantages(r, std_type="sample").std,
                             group_advantages(r, std_type="group").std)
  # the group with identical fine_action rewards gets zero advantage, finite everywhere
  fa = group_advantages(adv["reward_fine_action"], std_type="group")
  assert np.all(np.isfinite(fa.advantage)) and np.all(np.asarray(fa.advantage)[1] == 0)


def test_normalized_weights_rank_identically(adv):
  a = {k: group_advantages(adv[f"reward_{k}"]).advantage for k in REWARDS}
  raw = combine_advantages(a, WEIGHTS)
  norm = combine_advantages(a, WEIGHTS, normalize_weights=True)
  np.testing.assert_allclose(np.asarray(raw) / 3, norm, rtol=1e-6)
  np.testing.assert_array_equal(best_of_n_mask(raw), best_of_n_mask(norm))
  res = prepare_grpo(_rewards(adv), WEIGHTS, normalize_weights=True)
  np.testing.assert_allclose(res.combined, norm, rtol=1e-6)
  assert prepare_grpo(_rewards(adv), WEIGHTS, best_of_n=None).kept.all()


def test_registry_weights():
  assert default_weights() == {"fine_action": 2.0, "drift": 1.0}
  cfg = {"action_reward_type": "fine_action", "action_reward_weight": 2.0,
         "hpsv3_quality_drift_reward_weight": 1.0}
  assert weights_from_reference_config(cfg) == {"fine_action": 2.0, "prompt_quality": 0.0,
                                                "quality": 0.0, "drift": 1.0}
  assert get_reward("hpsv3_quality_drift").name == "drift"
  with pytest.raises(KeyError, match="unknown reward 'speed'"):
    get_reward("speed")


def test_advantage_functions_reject_bad_inputs(adv):
  r = adv["reward_drift"]
  with pytest.raises(ValueError, match=r"rewards must be \[P,G\] rewards .* got shape \(12,\)"):
    group_advantages(r[0])
  with pytest.raises(ValueError, match="std_type must be one of"):
    group_advantages(r, std_type="batch")
  with pytest.raises(ValueError, match="must be >= 1 and divide the group size 12, got 5"):
    group_advantages(r, reference_ranks_per_group=5)
  with pytest.raises(ValueError, match="cannot keep 7 best \\+ 7 worst of 12"):
    best_of_n_mask(r, 14)
  with pytest.raises(ValueError, match=r"weights name \['hpsv3'\] but advantages has only"):
    combine_advantages({"drift": r}, {"drift": 1.0, "hpsv3": 1.0})
  with pytest.raises(ValueError, match="all rewards must share one"):
    prepare_grpo({"drift": r, "fine_action": r[:2]}, WEIGHTS)


@pytest.fixture(scope="module")
def nft(grpo_dir):
  return np.load(grpo_dir / "nft_loss.npz"), json.loads((grpo_dir / "nft_loss.json").read_text())


def _it(nft, key):
  z, _ = nft
  return {k: z[f"{key}_{k}"] for k in ("x0", "noise", "v_theta", "v_old", "noisy_latents")}


def test_nft_sigma_schedule_holds_fixture_sigmas(nft):
  _, meta = nft
  sched = np.asarray(nft_sigma_schedule(meta["config"]["sampling_steps"]))
  assert sched.shape == (8,) and sched[0] == 1.0
  for it in meta["variants"]["paper"]["iterations"]:
    assert np.min(np.abs(sched - it["sigma"])) < 1e-6
  picked = np.asarray(sample_train_sigmas(jax.random.key(0), sched, 0.5))
  assert picked.shape == (4,) and len(set(picked.tolist())) == 4 and set(picked) <= set(sched)


def test_nft_released_gradient_identity(nft):
  """Released form: grad = (2r-1) grad L+ / accum; paper form uses the true v_old."""
  d = _it(nft, "paper_it05")
  adv = jnp.asarray([0.6])
  sigma = 0.75

  def loss(v, **kw):
    return nft_loss(v, d["v_old"], d["noisy_latents"], d["x0"], sigma, adv, **kw).loss.sum()

  g_rel = jax.grad(lambda v: loss(v, overwrite_v_old=True, grad_accum_steps=2))(d["v_theta"])
  g_pos = jax.grad(lambda v: nft_loss(v, d["v_old"], d["noisy_latents"], d["x0"], sigma, adv)
                   .positive_loss.sum())(d["v_theta"])
  r = 0.6 / 2 / 2 + 0.5
  np.testing.assert_allclose(g_rel, (2 * r - 1) * g_pos / 2, rtol=1e-5, atol=1e-9)
  res = nft_loss(d["v_theta"], d["v_old"], d["noisy_latents"], d["x0"], sigma, adv)
  assert not np.allclose(res.positive_loss, res.negative_loss)
  rel = nft_loss(d["v_theta"], d["v_old"], d["noisy_latents"], d["x0"], sigma, adv,
                 overwrite_v_old=True)
  np.testing.assert_allclose(rel.positive_loss, rel.negative_loss, rtol=1e-6)


def test_nft_general_beta_and_batch(nft):
  d = _it(nft, "paper_it01")
  x = {k: np.concatenate([v, v[..., ::-1]], 0) for k, v in d.items()}  # B = 2
  sig = np.array([0.4, 0.9], np.float32)
  x_t = noisy_latents(x["x0"], x["noise"], sig)
  adv = jnp.asarray([3.0, -0.5])
  beta = 0.5
  res = nft_loss(x["v_theta"], x["v_old"], x_t, x["x0"], sig, adv, beta=beta)

  def ref(v_plus, i):
    e = (np.asarray(x_t[i]) - sig[i] * v_plus) - x["x0"][i]
    return np.mean(e ** 2 / max(np.mean(np.abs(e)), 1e-5))

  for i in range(2):
    vp = beta * x["v_theta"][i] + (1 - beta) * x["v_old"][i]
    vn = (1 + beta) * x["v_old"][i] - beta * x["v_theta"][i]
    r = np.clip(np.clip(float(adv[i]), -2, 2) / 4 + 0.5, 0, 1)
    want = (r * ref(vp, i) + (1 - r) * ref(vn, i)) / beta
    np.testing.assert_allclose(res.loss[i], want, rtol=1e-5)
  assert float(res.r[0]) == 1.0  # advantage 3 is clipped to 2 -> r = 1


def test_nft_advantage_normalizes_and_clips():
  a = {"action": jnp.asarray([-3.0, 0.4]), "drift": jnp.asarray([0.5, -0.2])}
  got = nft_advantage(a, {"action": 2.0, "drift": 1.0})
  np.testing.assert_allclose(got, [-5.5 / 3, 0.6 / 3], rtol=1e-6)
  np.testing.assert_allclose(nft_advantage(a, {"action": 2.0, "drift": 1.0}, normalize_weights=False),
                             [-2.0, 0.6], rtol=1e-6)


def test_nft_rejects_bad_inputs(nft):
  d = _it(nft, "paper_it00")
  adv = jnp.zeros(1)
  with pytest.raises(ValueError, match=r"v_old must have v_theta's shape \(1, 4, 4, 3, 5\), got \(1, 4, 4, 3\)"):
    nft_loss(d["v_theta"], d["v_old"][..., 0], d["noisy_latents"], d["x0"], 0.5, adv)
  with pytest.raises(ValueError, match=r"advantage must be \[B\] with B=1, got shape \(\)"):
    nft_loss(d["v_theta"], d["v_old"], d["noisy_latents"], d["x0"], 0.5, adv[0])
  with pytest.raises(ValueError, match=r"sigma must be a scalar or \[B\] with B=1, got shape \(2,\)"):
    nft_loss(d["v_theta"], d["v_old"], d["noisy_latents"], d["x0"], jnp.zeros(2), adv)
  with pytest.raises(ValueError, match="v_theta must be \\[B,...\\] with at least one non-batch dim"):
    nft_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), 0.5, jnp.zeros(3))
  with pytest.raises(ValueError, match="x0 and noise must share one shape"):
    noisy_latents(d["x0"], d["noise"][0], 0.5)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda r: combine_advantages({"a": r, "b": r[:, :6]}, {"a": 1.0, "b": 1.0}), ValueError,
     "advantages must share one shape"),
    (lambda r: combine_advantages({"a": r}, {"b": 0.0}), ValueError, "no weighted advantage"),
    (lambda r: combine_advantages({"a": r}, {"a": 0.0}, normalize_weights=True), ValueError,
     "weights sum to 0, cannot normalize"),
    (lambda r: prepare_grpo({}, WEIGHTS), ValueError, "prepare_grpo: no rewards given"),
    (lambda r: prepare_grpo({"drift": r}, {"drift": "one"}), TypeError,
     "weights must be Python numbers"),
    (lambda r: group_advantages(r[:, :1]), ValueError, r"G >= 2 candidates\), got shape \(4, 1\)"),
    (lambda r: nft_sigma_schedule(0), ValueError, "num_steps must be >= 1, got 0"),
    (lambda r: sample_train_sigmas(jax.random.key(0), jnp.ones(4), 0.1), ValueError,
     "fraction 0.1 of 4 sigmas is none"),
    (lambda r: nft_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2)),
                        0.5, jnp.zeros(1), grad_accum_steps=0), ValueError,
     "grad_accum_steps must be >= 1, got 0"),
    (lambda r: weights_from_reference_config({"action_reward_type": "coarse"}), ValueError,
     "action_reward_type must be 'fine_action' or 'action'"),
])
def test_more_bad_inputs(adv, call, exc, msg):
  with pytest.raises(exc, match=msg):
    call(adv["reward_drift"])
