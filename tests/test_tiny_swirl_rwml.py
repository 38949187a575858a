"""SWIRL and RWML in the trainer's generic path (configs/tiny.py, wc_jax.rl.components): SWIRL's
alternation trains the idm reward's IDM during a real RL run and resumes bit for bit; RWML's group
rules in the generic reward stage (binarisation at the threshold, known easy groups dropped from the
ranking, hard and mixed ones kept); the encoders; named errors for configs that cannot run."""
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from wc_jax import sharding
from wc_jax.rewards.advantages import prepare_grpo
from wc_jax.rewards.similarity import embedding_similarity_reward
from wc_jax.rl import backbone, components, root
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl import config as run_config
from wc_jax.rl import swirl
from wc_jax.rl.config import ConfigError


def _validate(cfg):
  run_config.validate(cfg, required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)


# ----------------------------------------------------------------------------- SWIRL in a tiny RL run

def swirl_config():
  """configs/tiny.py shrunk to seconds: one DiT block, a 2x2 latent grid, G=2, the idm reward alone,
  SWIRL phases of 1 IDM step after every RL step."""
  cfg = load_config("tiny")
  cfg.model.update(dict(hidden_size=32, heads=2, depth=1, rope_dims=(4, 6, 6), refiner_depth=1, chunk_latents=2))
  cfg.sampling.update(dict(steps=1, chunks=2, latent_height=2, latent_width=2, max_context_frames=8,
                           recent_context_frames=4))
  cfg.rl.update(dict(group_size=2, best_of_n=2, rollout_steps=1, max_clip=1, total_steps=2))
  cfg.vae.block_out_channels = (8, 8, 8, 8, 8)
  cfg.checkpoint.update(dict(every=1, async_save=False))
  cfg.logging.update(dict(progress=False, video_every=0))
  cfg.rewards.weights = {"idm": 1.0}
  cfg.rewards.idm.update(dict(widths=(8, 16), hidden=16))
  cfg.swirl.update(dict(enabled=True, every=1, steps=1, batch_size=2, samples=2, lr=1e-2))
  return cfg


def _np(tree):
  return [np.array(x) for x in jax.tree.leaves(tree)]


def _idm(stage):
  return _np(nnx.state(stage.idm, nnx.Param))


def _restart(tr, cfg, workdir, init):
  """`tr` as a fresh process would build it for `workdir` (initial train state, new data iterator,
  new reward stage with a fresh IDM), keeping its compiled rollout/update/decoder programs."""
  tr.workdir = ckpt_lib.as_path(str(workdir))
  tr.workdir.mkdir(parents=True, exist_ok=True)
  tr.ckpt = ckpt_lib.Checkpointer(tr.workdir / "checkpoints", cfg)
  tr.metrics_path = tr.workdir / "metrics.jsonl"
  tr.state = jax.device_put(init, tr.state_shardings)
  tr.data = root.data(cfg, tr.mcfg)
  decode = tr.reward_stage.stage.decode
  tr.reward_stage = components.build_reward_stage(cfg, tr.mcfg.latent_channels)
  tr.reward_stage.stage.decode = decode      # the same random VAE (vae.seed): skips compiling its decoder again


@pytest.fixture(scope="module")
def swirl_runs(tmp_path_factory):
  """Two steps uninterrupted; the same run stopped after step 1 and resumed in a fresh setup."""
  cfg = swirl_config()
  _validate(cfg)
  one_device = sharding.make_mesh(dict(cfg.mesh), devices=jax.devices()[:1])   # compiles in a fraction of 8's time
  tr = backbone.build_trainer(cfg, str(tmp_path_factory.mktemp("stopped")), mesh=one_device)
  assert isinstance(tr.reward_stage, swirl.SwirlRewardStage)
  init = jax.tree.map(np.array, tr.state)
  idm0 = _idm(tr.reward_stage)
  tr.run(1)                                            # stopped after step 1 (checkpoint 1)
  after1 = (_idm(tr.reward_stage), tr.reward_stage.updates)
  _restart(tr, cfg, tr.workdir, init)                  # resumes from checkpoint 1
  fresh = _idm(tr.reward_stage)
  resumed_last = tr.run(2)
  rows = [json.loads(x)["step"] for x in tr.metrics_path.read_text().splitlines()]
  resumed = dict(idm=_idm(tr.reward_stage), policy=_np(tr.state.policy), stage=tr.reward_stage, last=resumed_last,
                 rows=rows)
  _restart(tr, cfg, tmp_path_factory.mktemp("uninterrupted"), init)
  last = tr.run(2)
  straight = dict(idm=_idm(tr.reward_stage), policy=_np(tr.state.policy), stage=tr.reward_stage, last=last)
  return dict(idm0=idm0, after1=after1, fresh=fresh, resumed=resumed, straight=straight, init=_np(init.policy))


def test_swirl_alternation_trains_the_idm_during_the_run(swirl_runs):
  r = swirl_runs
  st = r["straight"]["stage"]
  assert st.calls == 2 and st.updates == 2 and st.buffer == []       # one IDM phase after each RL step
  assert r["after1"][1] == 1
  moved = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(a, b))
  assert moved(r["idm0"], r["after1"][0]) and moved(r["after1"][0], r["straight"]["idm"])
  assert not moved(r["idm0"], r["fresh"])                          # a fresh stage starts from the same IDM
  last = r["straight"]["last"]
  assert last["step"] == 2 and last["optimizer_step_applied"] == 1
  assert -10.0 <= last["reward/idm/mean"] <= 0.0                  # log-likelihood clamped at -10
  assert moved(r["init"], r["straight"]["policy"])                 # the policy trained too


def test_swirl_run_resumes_bit_for_bit(swirl_runs):
  a, b = swirl_runs["straight"], swirl_runs["resumed"]
  assert b["rows"] == [1, 2]                          # step 2 ran from checkpoint 1; step 1 was not run again
  assert b["stage"].calls == a["stage"].calls == 2 and b["stage"].updates == a["stage"].updates == 2
  for x, y in zip(a["idm"], b["idm"]):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(a["policy"], b["policy"]):
    np.testing.assert_array_equal(x, y)
  assert a["last"]["reward/idm/mean"] == b["last"]["reward/idm/mean"]
  for x, y in zip(jax.tree.leaves(nnx.state(a["stage"].optimizer)), jax.tree.leaves(nnx.state(b["stage"].optimizer))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- RWML in the generic stage

H = W = 32
F = 13                      # clip 1 with 4 latents decodes to 13 frames
CHUNK = 4


def rwml_config(**similarity):
  cfg = load_config("tiny")
  cfg.rewards.weights = {"rwml": 1.0, "drift": 0.5}               # the reference name of embedding_similarity
  cfg.rewards.similarity.update(similarity)
  cfg.vae.block_out_channels = (8, 8, 8, 8, 8)
  return cfg


def bank():
  """Frame bank: clip 0 is the real continuation, clip 1 another clip."""
  rng = np.random.default_rng(0)
  real = rng.uniform(size=(F, H, W, 3)).astype(np.float32)
  other = np.clip(real[::-1] * 0.5 + 0.5 * rng.uniform(size=real.shape), 0, 1).astype(np.float32)
  return jnp.asarray(np.stack([real, other])), real


def group(ids):
  """A clip-1 rollout stand-in whose candidate i decodes to bank clip ids[i] (read from its latents)."""
  x0 = np.zeros((len(ids), 4, CHUNK, 2, 2), np.float32)
  x0[:, 0] = np.asarray(ids, np.float32)[:, None, None, None]
  return types.SimpleNamespace(clip=1, x0=jnp.asarray(x0), prefix=jnp.zeros((1, 4, 0, 2, 2)),
                               action=jnp.zeros((1, CHUNK), jnp.int32))


def rwml_stage(**similarity):
  cfg = rwml_config(**similarity)
  _validate(cfg)
  stage = components.build_reward_stage(cfg, 4)
  clips, _ = bank()
  stage.decode = lambda z: clips[z[:, 0, 0, 0, 0].astype(jnp.int32)]    # latents -> bank clips, no VAE
  return stage


def test_rwml_binarises_at_the_threshold_and_drops_easy_groups():
  _, real = bank()
  dense = rwml_stage()                                              # tiny defaults: the dense reward, no rules
  assert dense.rwml_rule is None
  s_dense, _ = dense(group([0, 1, 1, 0]), None, real)
  sim_other = float(s_dense["embedding_similarity"][1])
  np.testing.assert_allclose(np.asarray(s_dense["embedding_similarity"])[[0, 3]], 1.0, atol=1e-5)
  assert sim_other < 0.999 and set(s_dense) == {"embedding_similarity", "drift"}

  # RWML: the threshold just above the other clip's similarity (easy_threshold -1: the same)
  stage = rwml_stage(binarize=True, filter_easy=True, threshold=min(sim_other + 1e-3, 1.0))
  assert stage.rwml_rule.reward == "embedding_similarity" and stage.rwml_rule.easy_threshold is None
  groups = {"easy": [0, 0, 0, 0],      # generated == real for every candidate: similarity 1, easy
            "mixed": [0, 1, 0, 1],     # half reach it: kept
            "hard": [1, 1, 1, 1]}      # none reach it: kept (all binarised 0, no preference)
  scores = {k: stage(group(ids), None, real)[0] for k, ids in groups.items()}
  np.testing.assert_allclose(np.asarray(scores["easy"]["embedding_similarity_raw"]), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(scores["mixed"]["embedding_similarity"]), [1, 0, 1, 0])
  np.testing.assert_array_equal(np.asarray(scores["hard"]["embedding_similarity"]), [0, 0, 0, 0])
  np.testing.assert_allclose(np.asarray(scores["mixed"]["embedding_similarity_raw"]),
                             np.asarray(s_dense["embedding_similarity"])[[0, 1, 0, 1]], atol=1e-6)
  for k, easy in (("easy", 1.0), ("mixed", 0.0), ("hard", 0.0)):
    np.testing.assert_array_equal(np.asarray(scores[k]["embedding_similarity_easy"]), easy)
  # the easy group's every reward is flattened to its group mean (drift too); kept groups unchanged
  drift_easy = np.asarray(scores["easy"]["drift"])
  np.testing.assert_allclose(drift_easy, drift_easy.mean(), atol=1e-7)
  np.testing.assert_allclose(np.asarray(scores["mixed"]["drift"]), np.asarray(s_dense["drift"])[[0, 1, 0, 1]],
                             atol=1e-6)
  assert np.ptp(np.asarray(scores["mixed"]["drift"])) > 0
  pooled = {k: jnp.stack([scores[g][k] for g in groups]) for k in ("embedding_similarity", "drift")}
  grpo = prepare_grpo(pooled, stage.weights, std_type="global", best_of_n=None)
  comb = np.asarray(grpo.combined)
  np.testing.assert_allclose(comb[0], 0.0, atol=1e-6)                    # easy: dropped from the ranking
  assert np.abs(comb[1]).max() > 0.5                                     # mixed: ranked
  assert comb[1][0] > comb[1][1]                                         # the one that matches reality wins

  # an easy threshold exactly at the other clip's similarity: every candidate of the mixed group reaches
  # it (">="), so that group is easy now and all its rewards (drift too) stop ranking its candidates
  stage = rwml_stage(binarize=True, filter_easy=True, threshold=min(sim_other + 1e-3, 1.0),
                     easy_threshold=sim_other)
  at, _ = stage(group(groups["mixed"]), None, real)
  np.testing.assert_array_equal(np.asarray(at["embedding_similarity_easy"]), 1.0)
  np.testing.assert_allclose(np.asarray(at["embedding_similarity"]), 0.5, atol=1e-7)   # the group mean of 1,0,1,0
  np.testing.assert_allclose(np.asarray(at["drift"]), np.mean(np.asarray(s_dense["drift"])[[0, 1, 0, 1]]),
                             atol=1e-6)


def test_rwml_binarises_without_the_filter():
  _, real = bank()
  stage = rwml_stage(binarize=True, filter_easy=False, threshold=0.999)
  s, _ = stage(group([0, 0, 0, 0]), None, real)
  np.testing.assert_array_equal(np.asarray(s["embedding_similarity"]), 1.0)   # binarised, not filtered
  assert "embedding_similarity_easy" not in s
  # the per-candidate function of the reward gives the same binarised value
  from wc_jax.rewards.registry import RewardWindow
  clips, _ = bank()
  w = RewardWindow(first_frame=clips[0, 0], actions=jnp.zeros((CHUNK,), jnp.int32), real=jnp.asarray(real))
  assert float(stage.rewards["embedding_similarity"](clips[0], w)) == 1.0
  assert float(stage.rewards["embedding_similarity"](clips[1], w)) == 0.0


def test_pose_and_hpsv3_encoders_embed_frames():
  """encoder='pose' (the DA3 backbone, pooled) and 'hpsv3' (HPSv3's vision tower): identical clips
  have similarity 1, different ones less; one embedding per image."""
  clips, real = bank()
  cfg = rwml_config(encoder="pose")
  cfg.rewards.pose.process_res = 28
  _validate(cfg)
  built = {}
  models = lambda role: built.setdefault(role, components.MODEL_BUILDERS[role][2](
      cfg.rewards[components.MODEL_BUILDERS[role][0]], cfg.rewards, models))
  enc = models("encoder")
  shape = lambda enc: nnx.eval_shape(lambda m, x: m(x), enc, jnp.asarray(real[:3])).shape
  assert shape(enc) == (3, 2 * cfg.rewards.pose.random.embed_dim)
  same = float(embedding_similarity_reward(real[:2], real[:2], enc))
  diff = float(embedding_similarity_reward(real[:2], np.asarray(clips[1, :2]), enc))
  assert same == pytest.approx(1.0, abs=1e-5) and diff < same - 1e-4
  cfg = rwml_config(encoder="hpsv3")
  cfg.rewards.quality.scorer = "hpsv3"
  cfg.rewards.hpsv3 = ml_collections.ConfigDict(dict(checkpoint="", tokenizer="", pixels=56 * 56, seed=0))
  _validate(cfg)
  built = {}
  enc = models("encoder")
  assert len(shape(enc)) == 2 and shape(enc)[0] == 3
  same = float(embedding_similarity_reward(real[:2], real[:2], enc))
  diff = float(embedding_similarity_reward(real[:2], np.asarray(clips[1, :2]), enc))
  assert same == pytest.approx(1.0, abs=1e-5) and diff < same - 1e-4


# ----------------------------------------------------------------------------- named errors

def _never(role):
  raise AssertionError(f"built the {role} model for a config that cannot run")


def test_unknown_encoder_is_named():
  cfg = rwml_config(encoder="dino")
  with pytest.raises(ConfigError, match=r"rewards\.similarity\.encoder = 'dino': must be one of "
                                        r"\('quality', 'pose', 'hpsv3'\)"):
    _validate(cfg)
  with pytest.raises(ValueError, match=r"rewards\.similarity\.encoder must be one of \('quality', 'pose', 'hpsv3'\)"
                                       r".*got 'dino'"):
    components.build_encoder(cfg.rewards.similarity, cfg.rewards, _never)
  for key, value, match in (("threshold", 1.5, r"rewards\.similarity\.threshold = 1\.5: must be a finite number "
                                               r">= -1 and <= 1"),
                            ("filter_easy", "yes", r"rewards\.similarity\.filter_easy = 'yes': must be True or False"),
                            ("pool", "max", r"rewards\.similarity\.pool = 'max': is not a setting")):
    cfg = rwml_config()
    cfg.rewards.similarity = ml_collections.ConfigDict({**cfg.rewards.similarity.to_dict(), key: value})
    with pytest.raises(ConfigError, match=match):
      _validate(cfg)


def test_hpsv3_tower_without_the_hpsv3_scorer_is_named():
  cfg = rwml_config(encoder="hpsv3")                 # the tiny scorer is CLIP
  with pytest.raises(ConfigError, match=r"rewards\.similarity\.encoder = 'hpsv3': embeds with HPSv3's vision "
                                        r"tower, but rewards\.quality\.scorer='clip'"):
    _validate(cfg)
  with pytest.raises(ValueError, match=r"encoder='hpsv3' embeds with HPSv3's vision tower, but "
                                       r"rewards\.quality\.scorer='clip': set rewards\.quality\.scorer='hpsv3'"):
    components.build_encoder(cfg.rewards.similarity, cfg.rewards, _never)
  cfg = rwml_config(encoder="quality")               # the CLIP tower while the scorer is HPSv3
  cfg.rewards.quality.scorer = "hpsv3"
  with pytest.raises(ValueError, match=r"encoder='quality' embeds with the CLIP scorer's tower, but "
                                       r"rewards\.quality\.scorer='hpsv3'"):
    components.build_encoder(cfg.rewards.similarity, cfg.rewards, _never)
  cfg = rwml_config(encoder="pose")
  del cfg.rewards["pose"]
  with pytest.raises(ValueError, match=r"encoder='pose' embeds with the pose model's DA3 backbone, but "
                                       r"rewards\.pose is missing"):
    components.build_encoder(cfg.rewards.similarity, cfg.rewards, _never)


def test_swirl_without_an_idm_reward_is_named():
  cfg = load_config("tiny")
  assert cfg.swirl.enabled is False                  # off by default
  cfg.swirl.enabled = True                           # tiny's rewards: fine_action + drift, no idm
  msg = r"swirl\.enabled = True: alternates the IDM of the 'idm' reward, but rewards\.weights has no idm"
  with pytest.raises(ConfigError, match=msg):
    _validate(cfg)
  with pytest.raises(ConfigError, match=msg):       # and before anything is built
    components.build_reward_stage(cfg, 4)
  cfg.rewards.weights = {"swirl": 2.0, "drift": 1.0}   # the reference name of the idm reward
  _validate(cfg)
  for key, value, match in (("every", 0, r"swirl\.every = 0: must be an integer >= 1"),
                            ("objective", "ppo", r"swirl\.objective = 'ppo': must be one of \('grpo', 'supervised'\)"),
                            ("samples", 1, r"swirl\.samples = 1: must be an integer >= 2"),
                            ("every_k", 2, r"swirl\.every_k = 2: is not a setting of `swirl`")):
    bad = load_config("tiny")
    bad.swirl = ml_collections.ConfigDict({**bad.swirl.to_dict(), key: value})
    with pytest.raises(ConfigError, match=match):
      _validate(bad)
  assert run_config.SWIRL_OBJECTIVES == swirl.OBJECTIVES
