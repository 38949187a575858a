"""Rewards on a batch of 12 candidates on 8 simulated devices, advantages and NFT on a mesh."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax.convert.quality import random_scorer
from wc_jax.models.quality import AestheticHeadConfig, tiny_config
from wc_jax.rewards import (candidate_sharding, interaction_reward, nft_loss, prepare_grpo,
                            quality_drift_reward, score_candidates)
from wc_jax.sharding import make_mesh


class _PixelPoseNet(nnx.Module):
  """Toy pose model: each frame carries its w2c [3,4] in its first 12 values."""

  def __init__(self):
    self.scale = nnx.Param(jnp.ones(()))

  def __call__(self, frames):
    return frames.reshape(frames.shape[0], -1)[:, :12].reshape(-1, 3, 4) * self.scale[...]


@pytest.fixture(scope="module")
def cases(fixtures_dir):
  d = fixtures_dir / "rewards" / "labels"
  z = np.load(d / "estimated_cases.npz")
  meta = json.loads((d / "estimated_cases.json").read_text())["cases"]
  picked = [c for c in meta if c["num_frames"] == 17][:12]
  frames = np.stack([z[f"{c['key']}_w2c"].reshape(17, 2, 2, 3) for c in picked])
  acts = np.stack([z[f"{c['key']}_gt_action_latent"] for c in picked]).astype(np.int32)
  return frames, acts, np.array([c["fine_action_acc"] for c in picked], np.float32)


def test_eight_devices():
  assert jax.device_count() == 8


def test_interaction_reward_12_candidates_on_8_devices(cases):
  frames, acts, want = cases
  net = _PixelPoseNet()
  fn = lambda f, a: interaction_reward(f, a, net)
  mesh = make_mesh({"data": 8})
  got = score_candidates(fn, frames, acts, mesh=mesh)  # 12 -> padded to 16, 2 per device
  assert got.shape == (12,)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # data x fsdp mesh: candidates split over both axes
  mesh2 = make_mesh({"data": 2, "fsdp": 4})
  sh = candidate_sharding(mesh2, 5)
  assert sh.spec == P(("data", "fsdp"), None, None, None, None)
  np.testing.assert_allclose(score_candidates(fn, frames, acts, mesh=mesh2), want, atol=1e-6)
  with pytest.raises(ValueError, match="12 candidates do not divide over 8 data shards"):
    score_candidates(fn, frames, acts, mesh=mesh, pad=False)
  with pytest.raises(ValueError, match="same leading axis N"):
    score_candidates(fn, frames, acts[:5], mesh=mesh)


def test_drift_reward_with_clip_scorer_sharded():
  scorer = random_scorer(tiny_config(image_size=16), AestheticHeadConfig(dims=(16, 8, 1)))
  rng = np.random.default_rng(0)
  frames = rng.uniform(size=(12, 17, 16, 16, 3)).astype(np.float32)
  first = frames[0, 0]
  fn = lambda f: quality_drift_reward(f, scorer, first)
  plain = jax.vmap(fn)(frames)
  sharded = score_candidates(fn, frames, mesh=make_mesh({"data": 8}))
  np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(plain) <= 0)


def test_prepare_grpo_jit_on_mesh(fixtures_dir):
  z = np.load(fixtures_dir / "rewards" / "grpo" / "advantages.npz")
  rewards = {"fine_action": z["reward_fine_action"], "drift": z["reward_drift"]}
  weights = {"fine_action": 2.0, "drift": 1.0}
  mesh = make_mesh({"data": 4, "fsdp": 2})
  sh = NamedSharding(mesh, P("data", None))  # one group per data shard
  placed = {k: jax.device_put(v, sh) for k, v in rewards.items()}
  f = jax.jit(lambda r: prepare_grpo(r, weights))
  res = f(placed)
  np.testing.assert_allclose(res.combined, z["gpu_para1_global_combined"], atol=2e-6)
  np.testing.assert_array_equal(res.kept, z["gpu_para1_global_kept_mask"])


def test_nft_loss_and_grad_sharded_batch():
  rng = np.random.default_rng(1)
  shape = (8, 4, 4, 3, 5)
  x0, noise, v, v_old = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
  sigma = rng.uniform(0.1, 1.0, 8).astype(np.float32)
  adv = rng.uniform(-3, 3, 8).astype(np.float32)
  x_t = (1 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise

  def total(v, *rest):
    return nft_loss(v, *rest).loss.sum()

  want = jax.grad(total)(v, v_old, x_t, x0, sigma, adv)
  mesh = make_mesh({"data": 8})
  sh = NamedSharding(mesh, P("data"))
  args = [jax.device_put(a, sh) for a in (v, v_old, x_t, x0, sigma, adv)]
  got = jax.jit(jax.grad(total))(*args)
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_score_candidates_rejects_empty():
  with pytest.raises(ValueError, match="no candidate arrays given"):
    score_candidates(lambda x: x)
  with pytest.raises(ValueError, match=r"no candidates \(N = 0\)"):
    score_candidates(lambda x: x, np.zeros((0, 3)))
