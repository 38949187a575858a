"""RWML's sim-to-real reward in the synthetic world: real continuations in the data, a fixed
embedding space, binarisation at the threshold and the easy-group filter (known easy groups are
dropped from the ranking, known hard ones kept), named errors for bad config."""
import types

import jax.numpy as jnp
import numpy as np
import pytest

from wc_jax.rewards.advantages import prepare_grpo
from wc_jax.rewards.similarity import binarize, easy_groups, filter_easy_groups
from wc_jax.rl.config import ConfigError
from wc_jax.world import data as D
from wc_jax.world import reward as R
from wc_jax.world.latent import PatchLatent

WORLD = D.WorldConfig(height=16, width=16, step=0.5, angle_deg=15.0)
LAT = PatchLatent(4)
CHUNK = 4


def test_binarisation_is_at_the_threshold():
  s = jnp.asarray([0.5, 0.8999, 0.9, 0.95, 1.0])
  np.testing.assert_array_equal(np.asarray(binarize(s, 0.9)), [0, 0, 1, 1, 1])
  r = R.rwml_scores(s, R.rwml_options({"threshold": 0.9}))
  np.testing.assert_array_equal(np.asarray(r["rwml"]), [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(r["rwml_similarity"]), np.asarray(s))
  dense = R.rwml_scores(s, R.rwml_options({"binarize": False}))
  np.testing.assert_array_equal(np.asarray(dense["rwml"]), np.asarray(s))


def test_easy_filter_drops_easy_groups_and_keeps_hard_ones():
  sims = jnp.asarray([[0.95, 0.97, 0.91, 0.99],     # every candidate already there: easy
                      [0.95, 0.40, 0.92, 0.99],     # one candidate misses: hard, kept
                      [0.10, 0.20, 0.30, 0.40],     # none there: hard, kept
                      [0.90, 0.90, 0.90, 0.90]])    # exactly at the threshold: easy
  easy = easy_groups(sims, 0.9)
  np.testing.assert_array_equal(np.asarray(easy), [True, False, False, True])
  scores = {"rwml": binarize(sims, 0.9), "idm": jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)), jnp.float32)}
  out = filter_easy_groups(scores, easy)
  for k in scores:                                   # hard groups untouched
    np.testing.assert_array_equal(np.asarray(out[k][1:3]), np.asarray(scores[k][1:3]))
  grpo = prepare_grpo(out, {"rwml": 1.0, "idm": 1.0}, std_type="global", best_of_n=None)
  np.testing.assert_allclose(np.asarray(grpo.combined)[[0, 3]], 0.0, atol=1e-6)    # easy: no preference at all
  assert np.abs(np.asarray(grpo.combined)[1]).max() > 0.5
  with pytest.raises(ValueError, match="group shape"):
    filter_easy_groups(scores, easy[:2])
  with pytest.raises(ValueError, match=r"\[\.\.\., G\]"):
    easy_groups(jnp.float32(0.3), 0.9)


def test_world_data_carries_the_real_continuation():
  data = D.WorldTrajectories(LAT, _cfg().model, _cfg().text, 8, [3, 4], 11, WORLD)
  ex = next(data)
  clips = D.make_clips(1, 8, [3], 11, WORLD)
  assert ex.real_frames.shape == (8, 16, 16, 3) and ex.real_frames.dtype == np.float32
  np.testing.assert_array_equal(ex.real_frames, clips.frames[0])
  np.testing.assert_allclose(np.asarray(LAT.encode(ex.real_frames[:1]))[:, 0], ex.first_latent, atol=1e-6)
  off = D.WorldTrajectories(LAT, _cfg().model, _cfg().text, 8, [3, 4], 11, WORLD, real_frames=False)
  assert next(off).real_frames is None


def _cfg():
  import types as t
  model = t.SimpleNamespace(text_dim=8, byt5_in_dim=4, vision_dim=4)
  text = t.SimpleNamespace(text_tokens=2, byt5_tokens=2, vision_tokens=2)
  return t.SimpleNamespace(model=model, text=text)


def _rollout(cands, clip=1, prefix=None, actions=None):
  z = np.asarray(LAT.encode(cands))                                       # [G, C, F, h, w]
  pre = np.zeros(z.shape[:1][:0] + (1, z.shape[1], 0) + z.shape[3:], np.float32) if prefix is None else prefix
  return types.SimpleNamespace(clip=clip, x0=jnp.asarray(z), prefix=jnp.asarray(pre),
                               action=jnp.asarray(np.zeros((1, CHUNK), np.int32) if actions is None else actions))


def test_world_stage_scores_against_the_real_clip_and_filters_easy_groups():
  clips = D.make_clips(2, 2 * CHUNK, [5, 6], 300, WORLD)
  real, other = clips.frames[0], clips.frames[1]
  stage = R.make_reward_stage(LAT, None, {"rwml": 1.0, "drift": 0.5}, rwml={"threshold": 0.9})
  assert isinstance(stage, R.WorldRewardStage) and stage.weights == {"rwml": 1.0, "drift": 0.5}
  # clip 1, easy group: every candidate is the real clip
  easy = np.stack([real[:CHUNK]] * 4)
  s, _ = stage(_rollout(easy), None, real)
  np.testing.assert_allclose(np.asarray(s["rwml_similarity"]), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(s["rwml_easy"]), 1.0)
  for k in ("rwml", "drift"):                       # constant over the group: no candidate preferred
    assert np.ptp(np.asarray(s[k])) == 0.0, k
  # clip 2, hard group: two real continuations, two of another scene (the real window: latents 4..7)
  prev = np.asarray(LAT.encode(real[CHUNK - 1:CHUNK]))[None]                  # [1, C, 1, h, w]
  hard = np.stack([real[CHUNK:], other[CHUNK:], real[CHUNK:], other[CHUNK:]])
  prefix = np.asarray(LAT.encode(real[:CHUNK]))[None]
  s, frames = stage(_rollout(hard, clip=2, prefix=prefix), jnp.asarray(prev), real)
  assert frames.shape[1] == CHUNK + 1
  sim = np.asarray(s["rwml_similarity"])
  np.testing.assert_allclose(sim[[0, 2]], 1.0, atol=1e-5)
  assert sim[[1, 3]].max() < 0.9, sim
  np.testing.assert_array_equal(np.asarray(s["rwml"]), [1, 0, 1, 0])
  np.testing.assert_array_equal(np.asarray(s["rwml_easy"]), 0.0)
  with pytest.raises(ValueError, match="no real frames"):
    stage(_rollout(easy), None, None)


def test_psnr_metric_scores_pixels_against_the_real_clip():
  """metric "psnr": the reward is the mean PSNR (dB) of each candidate's new frames to the real
  ones, computed as `judge.psnr` does; no encoder is used, and binarisation reads dB."""
  from wc_jax.world import judge as J
  clips = D.make_clips(2, 2 * CHUNK, [5, 6], 300, WORLD)
  real, other = clips.frames[0], clips.frames[1]
  rng = np.random.default_rng(1)
  noisy = np.clip(real[:CHUNK] + rng.normal(0, 0.05, real[:CHUNK].shape), 0, 1).astype(np.float32)
  cands = np.stack([real[:CHUNK], noisy, other[:CHUNK]])
  want = J.psnr(cands, real[:CHUNK][None]).mean(-1)
  dense = R.make_reward_stage(LAT, None, {"rwml": 1.0}, rwml={"metric": "psnr", "binarize": False,
                                                              "filter_easy": False})
  s, _ = dense(_rollout(cands), None, real)
  got = np.asarray(s["rwml"])
  np.testing.assert_allclose(got[1:], want[1:], rtol=1e-4)
  assert got[0] > 60 and got[0] > got[1] > got[2] and 20 < got[1] < 30, got       # exact > noisy > other scene
  binary = R.make_reward_stage(LAT, None, {"rwml": 1.0}, rwml={"metric": "psnr", "threshold": 20.0})
  s, _ = binary(_rollout(cands), None, real)
  np.testing.assert_array_equal(np.asarray(s["rwml"]), [1, 1, 0])
  np.testing.assert_array_equal(np.asarray(s["rwml_easy"]), 0.0)


def test_random_conv_embedding_tells_a_turn_from_noise():
  """The fixed embedding space: a slightly noisy copy stays close (>= 0.9), the view after a turn
  or in another scene does not."""
  clips = D.make_clips(8, 3, range(8), 40, WORLD)
  enc = R.make_encoder("random_conv", seed=0)
  rng = np.random.default_rng(0)
  f = clips.frames[:, 0]
  noisy = np.clip(f + rng.normal(0, 0.02, f.shape), 0, 1).astype(np.float32)
  sim = lambda a, b: float(R.clip_similarities(enc, jnp.asarray(a)[None, None], jnp.asarray(b)[None])[0])
  near = [sim(noisy[i], f[i]) for i in range(8)]
  moved = [sim(clips.frames[i, 2], f[i]) for i in range(8)]
  scene = [sim(f[(i + 1) % 8], f[i]) for i in range(8)]
  assert min(near) >= 0.9 and np.mean(moved) < np.mean(near) - 0.05 and np.mean(scene) < 0.9, (near, moved, scene)
  assert R.make_encoder("pixels")(jnp.asarray(f)).shape == (8, 27)


def test_bad_rwml_config_is_named():
  assert R.rwml_options(None)["easy_threshold"] == 0.7          # defaults to the binarisation threshold
  assert R.rwml_options({"threshold": 0.5, "easy_threshold": 0.8})["easy_threshold"] == 0.8
  assert R.rwml_options({"metric": "psnr", "threshold": 25.0})["easy_threshold"] == 25.0
  for bad, key in (({"threshold": 2.0}, "rewards.rwml.threshold = 2.0"),
                   ({"encoder": "clip"}, "rewards.rwml.encoder = 'clip'"),
                   ({"binarize": 1}, "rewards.rwml.binarize = 1"),
                   ({"filter": True}, "rewards.rwml.filter = True: unknown key"),
                   ({"seed": -1}, "rewards.rwml.seed = -1"),
                   ({"metric": "ssim"}, "rewards.rwml.metric = 'ssim'"),
                   ({"metric": "psnr", "threshold": -3.0}, r"rewards.rwml.threshold = -3.0: .*PSNR in dB"),
                   ({"threshold": 25.0}, r"rewards.rwml.threshold = 25.0: .*cosine")):
    with pytest.raises(ConfigError, match=key):
      R.rwml_options(bad)
  with pytest.raises(ValueError, match="unknown rewards"):
    R.make_reward_stage(LAT, None, {"rwml": 1.0, "hps": 1.0})
