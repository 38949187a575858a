"""The trainer's rewards come from the registry: a config names them (with weights) and the
reward stage builds each reward model once; SWIRL's IDM reward and RWML's similarity to the
real continuation run in a real RL step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from wc_jax.convert import idm as convert_idm
from wc_jax.convert import kinds, load_model
from wc_jax.convert.common import ConversionError
from wc_jax.models.idm import IDMConfig
from wc_jax.rl import config as run_config
from wc_jax.rl.components import build_reward_stage
from wc_jax.rl.trainer import Trainer
from wc_jax.rewards.registry import RewardWindow
from wc_jax.rewards.stage import window_frame_range


def micro_config(weights, source="synthetic_latents"):
  cfg = load_config("tiny")
  cfg.rl.group_size = 4
  cfg.rl.best_of_n = 2
  cfg.rl.rollout_steps = 2
  cfg.rl.max_clip = 2
  cfg.checkpoint.async_save = False
  cfg.logging.progress = False
  cfg.logging.video_every = 0
  cfg.rewards.weights = dict(weights)
  cfg.data.source = source
  if source == "synthetic_world":
    cfg.data.shuffle = False
    cfg.data.synthetic.num_examples = 2
  return cfg


def test_reward_windows_follow_the_decoded_latents():
  # clip 1: its 4 latents decode to 13 frames; clip 3: previous latent + 4 new = 17 frames
  assert window_frame_range(1, 4) == (0, 13)
  assert window_frame_range(2, 4) == (12, 29)
  assert window_frame_range(3, 4) == (28, 45)


def test_one_rl_step_with_the_idm_reward(tmp_path):
  cfg = micro_config({"idm": 2.0, "drift": 1.0})
  run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)
  stage = build_reward_stage(cfg, 4)
  assert sorted(stage.rewards) == ["drift", "idm"] and stage.weights == {"idm": 2.0, "drift": 1.0}
  tr = Trainer(cfg, str(tmp_path), reward_stage=stage)
  out = tr.step(1)
  assert -10.0 <= out["reward/idm/mean"] <= 0.0          # mean log-likelihood, clamped at -10
  assert out["reward/idm/std"] > 0.0                      # the candidates differ, so do their scores
  assert out["optimizer_step_applied"] == 1 and np.isfinite(out["loss"])


def test_one_rl_step_with_the_similarity_reward_on_real_continuations(tmp_path):
  cfg = micro_config({"embedding_similarity": 1.0}, source="synthetic_world")
  run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)
  tr = Trainer(cfg, str(tmp_path), reward_stage=build_reward_stage(cfg, 4))
  out = tr.step(1)
  assert -1.0 <= out["reward/embedding_similarity/mean"] <= 1.0
  assert out["reward/embedding_similarity/std"] > 0.0
  assert out["optimizer_step_applied"] == 1


def _frames(seed, n=13):
  return jax.random.uniform(jax.random.key(seed), (n, 64, 96, 3))


def test_similarity_options_and_missing_real_video():
  cfg = micro_config({"embedding_similarity": 1.0})
  stage = build_reward_stage(cfg, 4)
  score = stage.rewards["embedding_similarity"]
  frames, real = _frames(0), _frames(1)
  same = RewardWindow(first_frame=frames[0], actions=jnp.zeros((4,), jnp.int32), real=frames)
  other = RewardWindow(first_frame=frames[0], actions=jnp.zeros((4,), jnp.int32), real=real)
  np.testing.assert_allclose(float(score(frames, same)), 1.0, atol=1e-5)     # identical clips: cosine 1
  dense = float(score(frames, other))
  assert -1.0 <= dense < 1.0
  cfg.rewards.similarity.binarize = True                   # RWML's thresholded reward
  cfg.rewards.similarity.threshold = dense + 1e-3
  binary = build_reward_stage(cfg, 4).rewards["embedding_similarity"]
  assert float(binary(frames, other)) == 0.0 and float(binary(frames, same)) == 1.0
  no_video = RewardWindow(first_frame=frames[0], actions=jnp.zeros((4,), jnp.int32), real=None)
  with pytest.raises(ValueError, match="compares with the real continuation.*data.source='synthetic_world'"):
    score(frames, no_video)


def test_a_reward_without_its_model_section_is_named():
  cfg = micro_config({"idm": 1.0})
  del cfg.rewards["idm"]
  with pytest.raises(run_config.ConfigError, match=r"rewards\.idm.*reward 'idm' needs its model's section"):
    run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)
  cfg = micro_config({"speed": 1.0})
  with pytest.raises(run_config.ConfigError, match=r"rewards\.weights\.speed.*choose from"):
    run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)


def test_idm_checkpoints_load_as_the_idm_kind_only(tmp_path):
  idm = convert_idm.random_idm(IDMConfig(widths=(8, 16), hidden=16), seed=3)
  convert_idm.save_idm(idm, tmp_path / "idm")
  back = load_model(kinds.IDM, tmp_path / "idm")
  clip = jax.random.uniform(jax.random.key(0), (9, 16, 16, 3))
  np.testing.assert_array_equal(np.asarray(idm(clip)), np.asarray(back(clip)))
  with pytest.raises(ConversionError, match="holds a 'idm' checkpoint, not a 'dit' one"):
    load_model(kinds.DIT, tmp_path / "idm")
  with pytest.raises(ConversionError, match="no reference checkpoint to convert"):
    convert_idm.torch_to_params(None, {})
  assert jnp.all(jnp.isfinite(back(clip)))


def test_a_full_size_run_without_checkpoints_names_every_missing_one():
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.rl import root
  cfg = load_config("hunyuan8b")
  mcfg = from_config(cfg.model)
  with pytest.raises(run_config.ConfigError) as e:
    root.check_random_init(cfg, mcfg)
  msg = str(e.value)
  for key in ("model.checkpoint", "vae.checkpoint", "rewards.pose.checkpoint", "rewards.hpsv3.checkpoint",
              "data.source", "allow_random_init=True"):
    assert key in msg, key
  cfg.allow_random_init = True                        # on purpose: no refusal
  root.check_random_init(cfg, mcfg)
  root.check_random_init(load_config("tiny"), from_config(load_config("tiny").model))   # tiny models never refused


def test_hpsv3_scores_the_drift_reward_when_configured():
  """rewards.quality.scorer='hpsv3' (the hunyuan8b default) puts HPSv3's mu under the drift reward."""
  import ml_collections
  cfg = micro_config({"drift": 1.0})
  cfg.rewards.quality.scorer = "hpsv3"
  cfg.rewards.hpsv3 = ml_collections.ConfigDict(dict(checkpoint="", tokenizer="", pixels=56 * 56, seed=0))
  scorer_fn = build_reward_stage(cfg, 4).rewards["drift"]
  frames = _frames(0)
  window = RewardWindow(first_frame=frames[0], actions=jnp.zeros((4,), jnp.int32))
  drift = float(scorer_fn(frames, window))
  assert np.isfinite(drift) and drift <= 0.0
  same = jnp.broadcast_to(frames[:1], frames.shape)          # every frame equal to the first: no drift
  assert float(scorer_fn(same, window)) == pytest.approx(0.0, abs=1e-6)
  cfg.rewards.quality.scorer = "hps"
  with pytest.raises(ValueError, match=r"rewards.quality.scorer must be one of \('clip', 'hpsv3'\)"):
    build_reward_stage(cfg, 4)
