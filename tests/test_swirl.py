"""SWIRL's alternation (wc_jax.rl.swirl): the IDM of the idm reward is trained on the policy's
generations on a schedule, its state is checkpointed with the run (resume exact), the shuffled
control's permutation stream resumes, old checkpoints still restore, bad config values are named.

No DiT: rollouts are stand-ins whose candidates are noisy encodings of rendered world clips, which
is all a reward stage reads (clip, x0, prefix, action)."""
import logging
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from wc_jax.models import idm as idm_lib
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl import swirl
from wc_jax.rl.config import ConfigError
from wc_jax.world import data as D
from wc_jax.world import reward as R
from wc_jax.world.latent import PatchLatent

WORLD = D.WorldConfig(height=16, width=16, step=0.5, angle_deg=15.0)
LAT = PatchLatent(4)
G, CHUNK, T = 4, 4, 2


def small_idm(seed=0):
  return idm_lib.init_idm(idm_lib.IDMConfig(in_channels=3, frames_per_step=1, widths=(8, 16), hidden=16), seed=seed)


def rollouts(n, seed=0, noise=0.05):
  """n clip-1 rollouts: G candidates = the true clip's latents + noise; plus the real frames."""
  clips = D.make_clips(n, CHUNK, range(3), 7_000 + seed, WORLD)
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    z = np.asarray(LAT.encode(clips.frames[i]))                           # [C, F, h, w]
    x0 = z[None] + noise * rng.standard_normal((G,) + z.shape).astype(np.float32)
    r = types.SimpleNamespace(clip=1, x0=jnp.asarray(x0), prefix=jnp.zeros((1,) + z.shape[:1] + (0,) + z.shape[2:]),
                              action=jnp.asarray(clips.actions[i][None, :CHUNK]))
    out.append((r, clips.frames[i]))
  return out


def params(idm):
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(idm, nnx.Param))]


def swirl_stage(objective="grpo", every=1, steps=2, seed=0):
  idm = small_idm(seed)
  stage = R.make_reward_stage(LAT, idm, {"idm": 1.0})
  cfg = swirl.SwirlConfig(enabled=True, every=every, steps=steps, objective=objective, lr=1e-2, batch_size=4,
                          samples=4, seed=seed)
  return swirl.SwirlRewardStage(stage, idm, cfg, trajectories_per_step=T), idm


def test_alternation_updates_the_idm_on_schedule_and_moves_the_reward():
  st, idm = swirl_stage(every=2, steps=3)
  data = rollouts(4)
  before = params(idm)
  r0 = np.asarray(st(*data[0][:1], None)[0]["idm"])
  for r, real in data[1:3]:                         # 3 group calls: step 2 is not over yet
    st(r, None, real)
  assert st.updates == 0 and st.calls == 3 and len(st.buffer) == 3
  assert all(np.array_equal(a, b) for a, b in zip(before, params(idm)))
  st(data[3][0], None)                             # call 4 = end of RL step 2 (T=2, every=2): IDM phase
  assert st.updates == 1 and st.buffer == [] and len(st.history) == 3
  after = params(idm)
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  r1 = np.asarray(st(data[0][0], None)[0]["idm"])   # the same candidates, scored by the updated IDM
  assert not np.allclose(r0, r1)
  # an evaluation video (one candidate) is neither counted nor buffered
  one = types.SimpleNamespace(**{**vars(data[0][0]), "x0": data[0][0].x0[:1]})
  st(one, None)
  assert st.calls == 5 and len(st.buffer) == 1


def test_grpo_phases_teach_the_idm_to_read_the_generations():
  """SWIRL's IDM objective raises the IDM's agreement with the commanded actions on the buffered
  generations: its argmax reads them better and its sampled actions agree more often."""
  st, idm = swirl_stage(every=1, steps=1)
  st.cfg = swirl.SwirlConfig(enabled=True, every=1, steps=30, objective="grpo", lr=3e-3, batch_size=8, samples=16)
  data = rollouts(2)
  frames = jnp.concatenate([st.stage(r, None)[1] for r, _ in data])                 # [2G, F, H, W, 3]
  actions = jnp.concatenate([jnp.broadcast_to(r.action[0, 1:], (G, CHUNK - 1)) for r, _ in data])
  acc = lambda: float(jnp.mean(R.predicted_actions(idm, frames) == actions))
  start = acc()
  agree = []
  for _ in range(2):
    for r, real in data:
      st.buffer.append({"frames": np.asarray(st.stage(r, None)[1]), "actions": np.asarray(r.action[0], np.int32)})
    agree += [h[1] for h in st.update()]
  assert start < 0.2 and acc() > start + 0.3, (start, acc())
  assert np.mean(agree[-10:]) > np.mean(agree[:10]) + 0.2, agree


def test_supervised_baseline_trains_on_the_real_frames():
  st, idm = swirl_stage(objective="supervised", every=1, steps=2)
  st.real_window = R.real_window                    # as make_swirl_stage sets it: one frame per latent
  data = rollouts(2)
  before = params(idm)
  with pytest.raises(ValueError, match="supervised.*real frames"):
    st(data[0][0], None, None)
  st.buffer, st.calls = [], 0
  for r, real in data:
    st(r, None, real)
  assert st.updates == 1 and any(not np.array_equal(a, b) for a, b in zip(before, params(idm)))
  # what it trains on is the ground truth: the real window of the rendered clip, one frame per latent
  np.testing.assert_array_equal(R.real_window(data[1][0], CHUNK, data[1][1]), data[1][1][:CHUNK])
  clip2 = types.SimpleNamespace(clip=2, x0=np.zeros((G, 48, CHUNK, 4, 4)))
  np.testing.assert_array_equal(R.real_window(clip2, CHUNK + 1, np.arange(8)[:, None, None, None] * np.ones((8, 2, 2, 3))),
                                np.arange(3, 8)[:, None, None, None] * np.ones((5, 2, 2, 3)))
  with pytest.raises(ValueError, match="clip 2 needs latents 3..7"):
    R.real_window(clip2, CHUNK + 1, np.zeros((6, 2, 2, 3)))


class Data:
  def __init__(self):
    self.index = 0

  def get_state(self):
    return {"index": self.index}

  def set_state(self, s):
    self.index = int(s["index"])


def ckpt_config():
  return ml_collections.ConfigDict(dict(model=dict(width=1), checkpoint=dict(keep=3, async_save=False)))


def _run(stage, data, steps):
  """RL steps of T group calls each; returns each step's idm scores."""
  out = []
  for s in steps:
    out.append([np.asarray(stage(r, None, real)[0]["idm"]) for r, real in data[(s - 1) * T:s * T]])
  return out


def test_interrupted_run_resumes_the_idm_and_its_rewards_exactly(tmp_path):
  data = rollouts(10, seed=1)
  train_state = {"w": jnp.arange(3.0)}
  # A: steps 1..5 uninterrupted (IDM phases after steps 2 and 4), a checkpoint after step 3
  a, idm_a = swirl_stage(every=2, steps=2)
  ck = ckpt_lib.Checkpointer(tmp_path / "ck", ckpt_config())
  _run(a, data, [1, 2, 3])
  ck.save(3, train_state, Data(), reward_stage=a)
  ck.wait()
  assert a.updates == 1 and len(a.buffer) == T      # step 3's generations wait for the next phase
  tail_a = _run(a, data, [4, 5])
  # B: a fresh process: same initial IDM, restored from step 3, then steps 4..5
  b, idm_b = swirl_stage(every=2, steps=2)
  ck_b = ckpt_lib.Checkpointer(tmp_path / "ck", ckpt_config())
  state, start = ck_b.restore_latest(train_state, Data(), reward_stage=b)
  assert start == 4 and b.calls == 6 and b.updates == 1 and len(b.buffer) == T
  tail_b = _run(b, data, [4, 5])
  assert a.updates == b.updates == 2
  for x, y in zip(params(idm_a), params(idm_b)):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(jax.tree.leaves(nnx.state(a.optimizer)), jax.tree.leaves(nnx.state(b.optimizer))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for sa, sb in zip(tail_a, tail_b):               # step 5 is scored by the IDM of phase 2
    for x, y in zip(sa, sb):
      np.testing.assert_array_equal(x, y)


def test_shuffled_stage_resumes_its_permutation_stream(tmp_path):
  class Stage:
    weights = {"idm": 1.0}

    def __call__(self, *a):
      return {"idm": jnp.arange(8.0)}, None

  a = R.ShuffledRewardStage(Stage(), seed=5)
  for _ in range(3):
    a(None, None)
  ck = ckpt_lib.Checkpointer(tmp_path / "ck", ckpt_config())
  ck.save(3, {"w": jnp.zeros(2)}, Data(), reward_stage=a)
  ck.wait()
  want = [np.asarray(a(None, None)[0]["idm"]) for _ in range(2)]
  b = R.ShuffledRewardStage(Stage(), seed=5)
  ckpt_lib.Checkpointer(tmp_path / "ck", ckpt_config()).restore_latest({"w": jnp.zeros(2)}, Data(), reward_stage=b)
  assert b.calls == 3
  got = [np.asarray(b(None, None)[0]["idm"]) for _ in range(2)]
  for x, y in zip(want, got):
    np.testing.assert_array_equal(x, y)
  fresh = R.ShuffledRewardStage(Stage(), seed=5)
  assert not np.array_equal(np.asarray(fresh(None, None)[0]["idm"]), want[0])   # call 0 permutes otherwise


def test_checkpoint_without_reward_state_still_restores(tmp_path, caplog):
  ck = ckpt_lib.Checkpointer(tmp_path / "ck", ckpt_config())
  ck.save(2, {"w": jnp.arange(2.0)}, Data())          # as before this item existed
  ck.wait()
  st, idm = swirl_stage()
  before = params(idm)
  d = Data()
  with caplog.at_level(logging.WARNING, logger="wc_jax.train"):
    state, start = ckpt_lib.Checkpointer(tmp_path / "ck", ckpt_config()).restore_latest(
        {"w": jnp.zeros(2)}, d, reward_stage=st)
  assert start == 3 and np.array_equal(np.asarray(state["w"]), [0.0, 1.0])
  assert "holds no reward-stage state" in caplog.text
  assert st.calls == 0 and all(np.array_equal(a, b) for a, b in zip(before, params(idm)))


def test_bad_swirl_config_is_named():
  assert swirl.from_config(None) == swirl.SwirlConfig()
  ok = swirl.from_config({"enabled": True, "every": 3, "steps": 2, "objective": "supervised", "lr": 1e-3})
  assert ok.every == 3 and ok.objective == "supervised" and ok.lr == 1e-3
  for bad, key in (({"every": 0}, "swirl.every = 0"), ({"steps": 1.5}, "swirl.steps = 1.5"),
                   ({"objective": "ppo"}, "swirl.objective = 'ppo'"), ({"lr": -1.0}, "swirl.lr = -1.0"),
                   ({"enabled": "yes"}, "swirl.enabled = 'yes'"), ({"samples": 1}, "swirl.samples = 1"),
                   ({"every_k": 2}, "swirl.every_k = 2: unknown key")):
    with pytest.raises(ConfigError, match=key):
      swirl.from_config(bad)
  cfg = ml_collections.ConfigDict(dict(swirl=dict(enabled=True), rl=dict(trajectories_per_step=2)))
  stage = R.make_reward_stage(LAT, small_idm(), {"drift": 1.0})
  with pytest.raises(ConfigError, match="swirl.enabled = True: .*no idm"):
    R.make_swirl_stage(stage, small_idm(), cfg)
  cfg.swirl.enabled = False
  assert R.make_swirl_stage(stage, small_idm(), cfg) is stage
  with pytest.raises(ValueError, match="trajectories_per_step"):
    swirl.SwirlRewardStage(stage, small_idm(), swirl.SwirlConfig(), trajectories_per_step=0)


def test_trainer_checkpoints_the_swirl_stage(tmp_path):
  """Through the RL trainer's save/restore call sites (its step replaced by a stub: the rollouts
  are covered above and in test_world): a stage with an IDM phase behind it is saved with the
  step, and a fresh stage given to the trainer is restored from that checkpoint (IDM, optimizer,
  counters) when the run resumes."""
  from test_world import micro_config
  from wc_jax.rl.trainer import Trainer
  from wc_jax.world import base_train as B
  cfg = micro_config()
  cfg.model.init = "random"
  cfg.swirl.update(dict(enabled=True, every=1, steps=2, batch_size=4, samples=4, lr=1e-2))
  data = rollouts(1)

  def stage():
    idm = small_idm()
    return R.make_swirl_stage(R.make_reward_stage(LAT, idm, {"idm": 2.0, "drift": 1.0}), idm, cfg), idm

  st, idm = stage()
  world = D.WorldTrajectories(LAT, cfg.model, cfg.text, 4, [0, 1], 0, B.world_config(cfg))
  tr = Trainer(cfg, str(tmp_path), reward_stage=st, data=world)
  tr.step = lambda step: (tr.reward_stage(data[0][0], None, data[0][1]), {"step": step, "clip": 1})[1]
  before = params(idm)
  assert tr.run()["step"] == 1 and st.calls == 1 and st.updates == 1    # trajectories_per_step 1, every 1
  assert any(not np.array_equal(a, b) for a, b in zip(before, params(idm)))
  st2, idm2 = stage()                               # as a restarted process would build it
  tr.reward_stage = st2
  assert tr.run() == {}                             # already at step 1: restores, trains nothing
  assert st2.calls == 1 and st2.updates == 1
  for a, b in zip(params(idm), params(idm2)):
    np.testing.assert_array_equal(a, b)


def test_idm_phase_runs_on_the_reward_mesh_like_unsharded(caplog):
  """With the reward stage on a mesh the IDM phase is data-parallel (batch over the data axes, IDM and
  optimizer replicated) and gives the unsharded phase's weights; a batch that does not divide runs
  replicated and says so."""
  from wc_jax import sharding
  data = rollouts(2)
  results = {}
  for name, mesh, batch in (("plain", None, 8), ("mesh", sharding.make_mesh(dict(data=-1)), 8),
                            ("odd", sharding.make_mesh(dict(data=-1)), 6)):
    idm = small_idm(0)
    stage = R.make_reward_stage(LAT, idm, {"idm": 1.0})
    stage.mesh = mesh
    cfg = swirl.SwirlConfig(enabled=True, every=1, steps=2, objective="grpo", lr=1e-2, batch_size=batch, samples=4,
                            seed=0)
    st = swirl.SwirlRewardStage(stage, idm, cfg, trajectories_per_step=2)
    with caplog.at_level(logging.INFO):
      for r, real in data:
        st(r, None, real)
    assert st.updates == 1
    results[name] = (params(idm), st.last_batch_sharding, jax.tree.leaves(nnx.state(idm, nnx.Param))[0].sharding)
  plain, sharded, odd = results["plain"], results["mesh"], results["odd"]
  assert plain[1] is None
  assert sharded[1].spec[0] is not None and len(sharded[1].mesh.devices.flat) == 8    # the batch was split
  assert sharded[2].is_fully_replicated and len(sharded[2].device_set) == 8           # the IDM replicated on the mesh
  for a, b in zip(plain[0], sharded[0]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert odd[1].spec == jax.sharding.PartitionSpec()
  assert "an IDM batch of 6 clips does not divide over 8 data shards; it runs replicated" in caplog.text
