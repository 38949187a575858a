"""The RL trainer: curriculum, EMAs, optimizer, clip-level rollout, NFT update, checkpoints."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib import MuonDimensionNumbers

from conftest import load_config
from wc_jax import sharding
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl.curriculum import target_clip
from wc_jax.rl.ema import ema_update, policy_decay
from wc_jax.rl.optim import make_optimizer, muon_dims
from wc_jax.rewards.stage import RewardStage
from wc_jax.rl.trainer import Trainer


def micro_config():
  cfg = load_config("tiny")
  cfg.rl.group_size = 4
  cfg.rl.best_of_n = 2
  cfg.rl.rollout_steps = 2
  cfg.rl.max_clip = 2
  cfg.rl.total_steps = 3
  cfg.checkpoint.every = 1
  cfg.checkpoint.async_save = False
  return cfg


def latent_reward_stage():
  """Cheap, deterministic rewards straight from latents (the real stage decodes with the VAE)."""
  def decode(z):  # [B, C, T, h, w] -> [B, T, h, w, 3] in [0, 1]
    return jax.nn.sigmoid(jnp.moveaxis(z[:, :3], 1, -1))

  def brightness(frames, window):          # one candidate's frames [F, H, W, 3]
    return jnp.mean(frames)

  def contrast(frames, window):
    return -jnp.mean(jnp.abs(frames - window.first_frame))

  return RewardStage(decode=decode, rewards={"fine_action": brightness, "drift": contrast},
                     weights={"fine_action": 2.0, "drift": 1.0}, frames_per_latent=1)


def test_curriculum():
  assert [target_clip(s, "min2max", 16) for s in (1, 2, 16, 17, 18)] == [1, 2, 16, 1, 2]
  assert target_clip(5, "fixed", 16, fixed_clip=3) == 3
  r = [target_clip(s, "random", 4, seed=1) for s in range(1, 50)]
  assert set(r) <= {1, 2, 3, 4} and len(set(r)) > 1 and r == [target_clip(s, "random", 4, seed=1) for s in range(1, 50)]
  with pytest.raises(ValueError, match="steps count from 1"):
    target_clip(0)
  with pytest.raises(ValueError, match="unknown curriculum"):
    target_clip(1, "max2min")
  with pytest.raises(ValueError, match="fixed_clip 9 outside 1..4"):
    target_clip(1, "fixed", 4, fixed_clip=9)


def test_stacked_layers_come_from_the_models_metadata():
  from flax import nnx
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.models.worldplay.model import WorldPlayDiT, functional
  _, state = functional(nnx.eval_shape(lambda: WorldPlayDiT(from_config(micro_config().model), rngs=nnx.Rngs(0))))
  stacked = sharding.stacked_layer_paths(state)
  assert ("double_blocks", "img_mod", "kernel") in stacked and ("img_in", "proj", "kernel") not in stacked
  assert {p[0] for p in stacked} == {"double_blocks"}      # the refiner is not stacked: as before
  dims = muon_dims(state, stacked)
  assert dims["double_blocks"]["img_mod"]["kernel"].value == MuonDimensionNumbers(1, 2)


def test_ema_decays():
  assert np.allclose([float(policy_decay(s)) for s in (0, 10, 70, 1000)], [0.2, 0.3, 0.9, 0.9])
  out = ema_update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, 0.9)
  np.testing.assert_allclose(out["w"], 0.9)


def test_muon_for_matrices_adamw_for_the_rest():
  params = {"double_blocks": {"fc": {"kernel": jnp.ones((3, 4, 5)), "bias": jnp.ones((3, 5))}},
            "img_in": {"kernel": jnp.ones((4, 6)), "bias": jnp.ones(6)}}
  stacked = frozenset({("double_blocks", "fc", "kernel"), ("double_blocks", "fc", "bias")})
  dims = muon_dims(params, stacked)
  assert dims["double_blocks"]["fc"]["kernel"] == MuonDimensionNumbers(1, 2)
  assert dims["img_in"]["kernel"] == MuonDimensionNumbers(0, 1)
  assert dims["double_blocks"]["fc"]["bias"] is None and dims["img_in"]["bias"] is None
  assert muon_dims(params)["double_blocks"]["fc"]["kernel"] is None   # unstacked 3-D core: AdamW
  tx = make_optimizer(lr=1e-2, grad_clip=2.0, stacked=stacked)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 100.0), params)
  upd, _ = tx.update(grads, tx.init(params), params)
  # Muon update of a 4x6 matrix: orthogonalised, scaled 0.2*sqrt(max(4,6)) -> RMS ~ 0.2*lr
  k = upd["img_in"]["kernel"]
  assert 0.0005 < float(jnp.sqrt(jnp.mean(k ** 2))) < 0.004
  with pytest.raises(ValueError, match="grad_accum must be >= 1"):
    make_optimizer(grad_accum=0)


def test_clip_rollout_is_o_n_plus_g_and_shares_one_context(tmp_path):
  cfg = micro_config()
  cfg.rl.max_clip = 3
  tr = Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage())
  traj = next(tr.data)
  text = tr._encode_text(tr.state.policy, traj)
  r = tr.engine.rollout(tr.state.policy, text, traj, 3, 4, jax.random.key(0))
  assert r.chunk_generations == 2 + 4                       # prefix clips + candidates, not 3 * 4
  assert r.dit_calls == 1 + 2 * 2 + 1 + 1 + 2                # text, prefix steps, 2 contexts, candidate steps
  assert r.x0.shape == (4, 4, 4, 4, 6) and r.prefix.shape == (1, 4, 8, 4, 6)
  assert r.context_indices == list(range(8))
  x = np.asarray(r.x0)
  assert np.abs(x[0] - x[1]).max() > 1e-3                    # fresh noise per candidate
  # each candidate equals a batch-1 run against the same context cache
  noise = jax.random.normal(jax.random.split(jax.random.key(0))[1], (4, 4, 4, 4, 6))   # the engine's draw
  one = tr.engine.denoise(tr.state.policy, noise[:1], r.cond, r.action, r.viewmats, r.Ks, r.text_cache, r.ctx)
  np.testing.assert_allclose(np.asarray(one[0]), x[0], atol=1e-5)


def _params(tr):
  return jax.tree.map(np.asarray, tr.state.params)


def test_rl_step_updates_weights_and_logs(tmp_path):
  cfg = micro_config()
  tr = Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage())
  before = _params(tr)
  m = tr.step(1)
  after = _params(tr)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  assert m["optimizer_step_applied"] == 1 and m["skipped_nonfinite"] == 0 and m["kept"] == 2
  assert 0 < moved < 1e-3                                   # lr 1e-5 steps, Muon-scaled
  assert np.isfinite(m["loss"]) and 0 <= m["r_min"] <= m["r_max"] <= 1
  for k in ("reward/fine_action/mean", "reward/drift/std", "time_rollout", "time_update", "policy_decay"):
    assert k in m
  # the policy EMA moved towards the new weights by (1 - decay)
  assert abs(m["policy_decay"] - 0.21) < 1e-6


def test_nonfinite_reward_skips_the_update(tmp_path):
  cfg = micro_config()
  stage = latent_reward_stage()
  stage.rewards["drift"] = lambda frames, window: jnp.float32(jnp.nan)
  tr = Trainer(cfg, str(tmp_path), reward_stage=stage)
  before = _params(tr)
  m = tr.step(1)
  assert m["skipped_nonfinite"] == 1 and m["optimizer_step_applied"] == 0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(_params(tr))):
    np.testing.assert_array_equal(a, b)


def test_reward_stage_rejects_a_decoder_of_another_stride(tmp_path):
  """The reward window counts frames_per_latent frames per latent: a decoder that makes another
  number is an error naming both, and nothing is updated."""
  cfg = micro_config()
  stage = latent_reward_stage()
  stage.frames_per_latent = 4                       # the decoder makes one frame per latent
  tr = Trainer(cfg, str(tmp_path), reward_stage=stage)
  before = _params(tr)
  with pytest.raises(ValueError, match=r"the decoder made \d+ frames of \d+ latents; frames_per_latent=4 expects"):
    tr.step(1)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(_params(tr))):
    np.testing.assert_array_equal(a, b)


def test_killed_run_resumes_exactly(tmp_path):
  cfg = micro_config()
  ref = Trainer(cfg, str(tmp_path / "ref"), reward_stage=latent_reward_stage())
  ref.run(3)
  # "killed" after step 2: a fresh process (trainer) finds the step-2 checkpoint and resumes
  a = Trainer(cfg, str(tmp_path / "run"), reward_stage=latent_reward_stage())
  a.run(2)
  del a
  b = Trainer(cfg, str(tmp_path / "run"), reward_stage=latent_reward_stage())
  last = b.run(3)
  assert last["step"] == 3
  for x, y in zip(jax.tree.leaves(jax.tree.map(np.asarray, ref.state)), jax.tree.leaves(jax.tree.map(np.asarray, b.state))):
    np.testing.assert_array_equal(x, y)
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  ref_lines = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert lines[2]["loss"] == ref_lines[2]["loss"]


def test_finished_run_says_nothing_to_do_and_writes_nothing(tmp_path, caplog):
  cfg = micro_config()
  Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage()).run(1)
  before = {p: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
  with caplog.at_level(logging.INFO, logger="wc_jax.train"):
    assert Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage()).run(1) == {}
  assert "nothing to do: already at step 1 (rl.total_steps=1; raise it to train further)" in caplog.messages
  assert {p: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()} == before   # no new TensorBoard file


def test_sigterm_saves_and_stops(tmp_path):
  cfg = micro_config()
  cfg.checkpoint.every = 100
  tr = Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage())
  tr._on_sigterm()
  last = tr.run(3)
  assert last["step"] == 1 and tr.ckpt.latest_step() == 1


def test_checkpoint_of_another_config_is_refused(tmp_path):
  cfg = micro_config()
  tr = Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage())
  tr.run(1)
  other = micro_config()
  other.model.depth = 3
  with pytest.raises(ckpt_lib.ConfigMismatch, match=r"'depth': \(2, 3\)"):
    Trainer(other, str(tmp_path), reward_stage=latent_reward_stage()).run(2)


def test_sharded_rl_step_equals_unsharded(tmp_path):
  cfg = micro_config()
  single = Trainer(cfg, str(tmp_path / "a"), reward_stage=latent_reward_stage(),
                   mesh=sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1]))
  single.step(1)
  sharded = Trainer(cfg, str(tmp_path / "b"), reward_stage=latent_reward_stage(),
                    mesh=sharding.make_mesh({"data": 2, "fsdp": 4}))
  sharded.step(1)
  leaf = sharded.state.params["double_blocks"]["img_mlp"]["fc1"]["kernel"]
  assert len(leaf.sharding.device_set) == 8
  # fp32, different reduction orders across 8 shards: parameters agree to 1e-6 relative to their scale
  for x, y in zip(jax.tree.leaves(_params(single)), jax.tree.leaves(_params(sharded))):
    np.testing.assert_allclose(x, y, atol=1e-6 * max(1.0, float(np.abs(x).max())))


def test_tiny_rl_demo_with_real_reward_models(tmp_path):
  """The README's demo path: VAE decode -> Depth Anything 3 poses -> action accuracy, CLIP
  aesthetic drift; rewards are finite and bounded, videos/TensorBoard/checkpoints written."""
  from wc_jax.rl.components import build_reward_stage
  cfg = micro_config()
  cfg.rl.total_steps = 2
  cfg.logging.video_every = 1
  cfg.logging.progress = False
  stage = build_reward_stage(cfg, 4)
  tr = Trainer(cfg, str(tmp_path), reward_stage=stage)
  last = tr.run(2)
  assert last["clip"] == 2 and last["optimizer_step_applied"] == 1
  assert 0.0 <= last["reward/fine_action/mean"] <= 1.0
  assert last["reward/drift/mean"] <= 0.0
  assert (tmp_path / "videos" / "step000002.gif").exists()
  assert any((tmp_path / "tensorboard").iterdir())
  assert tr.ckpt.latest_step() == 2


def test_two_trajectories_per_step_pool_the_std_and_shard_like_one_device(tmp_path):
  """T = 2 trajectories: each its own rollout, "global" std over all T*G candidates, best-of-N
  per trajectory, one update over the 2*K kept samples; data=2 x fsdp=4 equals one device."""
  cfg = micro_config()
  cfg.rl.trajectories_per_step = 2
  single = Trainer(cfg, str(tmp_path / "a"), reward_stage=latent_reward_stage(),
                   mesh=sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1]))
  out = single.step(1)
  assert out["trajectories"] == 2 and out["kept"] == 2 * cfg.rl.best_of_n
  assert out["chunk_generations"] == 2 * cfg.rl.group_size          # clip 1: no prefix, G candidates each
  assert out["optimizer_step_applied"] == 1

  # the pooled std, recomputed from the two trajectories' own candidates (same data, same keys)
  data = single.data.__class__(cfg, single.mcfg, (cfg.sampling.latent_height, cfg.sampling.latent_width),
                               4 * cfg.rl.max_clip, cfg.seed)
  fresh = Trainer(cfg, str(tmp_path / "c"), reward_stage=latent_reward_stage(), data=data,
                  mesh=sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1]))
  key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
  rewards = []
  for i in range(2):
    traj = next(fresh.data)
    text = fresh._encode_text(fresh.state.policy, traj)
    r = fresh.engine.rollout(fresh.state.policy, text, traj, 1, cfg.rl.group_size, jax.random.fold_in(key, i))
    scores, _ = fresh.reward_stage(r, None)
    rewards.append(np.asarray(scores["fine_action"]))
  pooled = np.concatenate(rewards)
  np.testing.assert_allclose(out["reward/fine_action/std_used"], pooled.std(ddof=1) + 1e-8, rtol=1e-5)
  np.testing.assert_allclose(out["reward/fine_action/mean"], pooled.mean(), rtol=1e-5)
  # per-group stds differ from the pooled one: "group" would not have given this divisor
  assert not np.isclose(rewards[0].std(ddof=1), pooled.std(ddof=1), rtol=1e-3)

  sharded = Trainer(cfg, str(tmp_path / "b"), reward_stage=latent_reward_stage(),
                    mesh=sharding.make_mesh({"data": 2, "fsdp": 4}))
  sharded.step(1)
  for x, y in zip(jax.tree.leaves(_params(single)), jax.tree.leaves(_params(sharded))):
    np.testing.assert_allclose(x, y, atol=1e-6 * max(1.0, float(np.abs(x).max())))


def test_evaluation_during_training_is_fixed_and_resumes_exactly(tmp_path):
  """Step 1 and every `evaluation.every` steps: the checkpoint EMA generates the held-out
  trajectories in full and every clip is scored; a resumed run evaluates as an unbroken one."""
  cfg = micro_config()
  cfg.evaluation.every = 2
  cfg.evaluation.trajectories = 2
  cfg.evaluation.latents = 8                      # 2 clips of 4 latents
  cfg.evaluation.steps = 2
  cfg.logging.progress = False
  full = Trainer(cfg, str(tmp_path / "full"), reward_stage=latent_reward_stage())
  full.run(2)
  lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  by_step = {m["step"]: m for m in lines}
  assert by_step[1]["eval/trajectories"] == 2 and "eval/fine_action/mean" in by_step[2]
  assert "eval/fine_action/last_clip" in by_step[1]
  assert (tmp_path / "full" / "videos" / "eval000002.gif").exists()
  # killed after step 1, resumed: step 2's evaluation equals the unbroken run's
  part = Trainer(cfg, str(tmp_path / "part"), reward_stage=latent_reward_stage())
  part.run(1)
  again = Trainer(cfg, str(tmp_path / "part"), reward_stage=latent_reward_stage())
  again.run(2)
  lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
  resumed = {m["step"]: m for m in lines}[2]
  for k in ("eval/fine_action/mean", "eval/drift/mean", "eval/fine_action/last_clip"):
    assert resumed[k] == by_step[2][k], k
