"""WorldCompass RL on LingBot-World (wc_jax.rl.lingbot) at configs/lingbot_tiny.py's toy width: real
modules (the two experts, the Wan VAE, DA3 and CLIP reward models; random weights), whole-clip
rollouts of G=4 candidates, the NFT update of the trained expert, the generic loop's checkpoints,
metrics and videos, resume, and the camera-following rewards on rendered synthetic-world clips.
The first Trainer compiles every program (about a minute on 2 CPU cores); the others reuse them."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from wc_jax.rewards.advantages import prepare_grpo
from wc_jax.rl import backbone as backbone_lib
from wc_jax.rl import lingbot
from wc_jax.rl.config import ConfigError


def _cfg(**rl):
  cfg = load_config("lingbot_tiny")
  cfg.checkpoint.every = 1
  cfg.checkpoint.async_save = False
  cfg.logging.video_every = 1
  cfg.rl.update(rl)
  return cfg


def _np(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
  """Three steps of the low-noise expert's RL with a checkpoint every step."""
  work = tmp_path_factory.mktemp("lingbot_rl")
  tr = backbone_lib.build_trainer(_cfg(), str(work))
  before = {"low": _np(tr.backbone.pipeline.low_state), "high": _np(tr.backbone.pipeline.high_state)}
  last = tr.run(3)
  return tr, work, before, last


def test_steps_write_checkpoints_metrics_and_videos(run3):
  tr, work, _, last = run3
  rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for r in rows:
    for name in ("fine_action", "camera_rotation", "camera_translation", "drift"):
      assert np.isfinite(r[f"reward/{name}/mean"]) and f"reward/{name}/std_used" in r
    assert np.isfinite(r["loss"]) and r["optimizer_step_applied"] == 1 and r["kept"] == 2
  assert rows[0]["trajectory"] != rows[1]["trajectory"]            # the data moves on
  assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [1, 2, 3]
  assert (work / "videos" / "step000003.gif").stat().st_size > 0
  assert tr.data.get_state() == {"next": 3}
  assert last["step"] == 3


def test_update_trains_the_low_expert_and_leaves_the_high_one(run3):
  tr, _, before, _ = run3
  st = tr.state
  assert set(st) == {"low"}
  assert not _same(st["low"]["params"], before["low"])               # trained
  assert not _same(st["low"]["policy"], st["low"]["params"])         # the rollout policy lags (EMA)
  assert _same(tr.backbone.pipeline.high_state, before["high"])      # frozen
  low, high = tr.backbone.rollout_experts(st)
  assert _same(high, before["high"]) and _same(low, st["low"]["policy"])


def test_high_expert_option_trains_only_the_high_expert(tmp_path):
  tr = backbone_lib.build_trainer(_cfg(expert="high", total_steps=1), str(tmp_path))
  low0, high0 = _np(tr.backbone.pipeline.low_state), _np(tr.backbone.pipeline.high_state)
  tr.run(1)
  assert set(tr.state) == {"high"}
  assert not _same(tr.state["high"]["params"], high0)
  assert _same(tr.backbone.pipeline.low_state, low0)
  # its sigmas come from the high-noise part of the rollout schedule (t >= 947), the low one's below
  assert np.all(lingbot.expert_sigmas(tr.cfg, "high") * 1000 >= 947)
  assert np.all(lingbot.expert_sigmas(tr.cfg, "low") * 1000 < 947)


def test_resume_gives_the_uninterrupted_run(run3, tmp_path):
  ref, _, _, _ = run3
  first = backbone_lib.build_trainer(_cfg(), str(tmp_path))
  first.run(1)
  again = backbone_lib.build_trainer(_cfg(), str(tmp_path))
  last = again.run(2)                          # resumes from step 1's checkpoint
  assert last["step"] == 2 and again.data.get_state() == {"next": 2}
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  # the uninterrupted run's step-2 checkpoint: the same train state, bit for bit
  ckpt = ref.ckpt.manager
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), again.state)
  want = ckpt.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
  assert _same(again.state, want)


def _follow_example():
  """A synthetic example whose camera moves forward and turns at once."""
  cfg = load_config("lingbot_tiny")
  data = lingbot.SyntheticClips.from_config(cfg)
  for i in range(64):
    m = data.trajectory(i).motions[1]
    if m[0] > 0 and m[4] != 0:
      return data.example(i)
  raise AssertionError("no forward + turn example")


class LookupPoses:
  """A pose model for the synthetic world: each frame gets the pose of the nearest rendered frame of
  the path (the toy DA3 has random weights, so it cannot rank clips)."""

  def __init__(self, frames, c2w):
    self.frames = jnp.asarray(frames, jnp.float32)
    self.w2c = jnp.asarray(np.linalg.inv(c2w), jnp.float32)[:, :3]

  def __call__(self, frames):
    d = jnp.mean((frames[:, None] - self.frames[None]) ** 2, axis=(2, 3, 4))
    return self.w2c[jnp.argmin(d, axis=1)]


def test_rewards_rank_the_path_following_clip_above_a_static_one():
  from wc_jax.rl.components import build_quality_scorer
  cfg = load_config("lingbot_tiny")
  ex = _follow_example()
  rewards = lingbot.LingBotRewards(dict(cfg.rewards.weights), LookupPoses(ex.frames, ex.poses),
                                   build_quality_scorer(cfg.rewards.quality, cfg.rewards))
  static = np.repeat(ex.frames[:1], len(ex.frames), axis=0)
  s = rewards(np.stack([ex.frames, static]), ex.frames[0], ex.poses)
  s = {k: np.asarray(v) for k, v in s.items()}
  print({k: v.tolist() for k, v in s.items()})
  assert s["fine_action"][0] == 1.0 and s["fine_action"][1] < 0.5
  np.testing.assert_allclose(s["camera_rotation"][0], 0.0, atol=0.05)           # degrees
  np.testing.assert_allclose(s["camera_translation"][0], 0.0, atol=1e-3)
  assert s["camera_rotation"][1] < -1.0 and s["camera_translation"][1] == pytest.approx(-1.0)
  combined = prepare_grpo({k: v[None] for k, v in s.items()}, rewards.weights, best_of_n=2).combined[0]
  assert combined[0] > combined[1]        # although the static clip drifts less (weight 1 of 4)


def test_camera_errors_measure_rotation_and_scale_free_translation():
  ex = _follow_example()
  w2c = np.linalg.inv(ex.poses)
  rot, trans = lingbot.camera_errors(w2c, ex.poses)
  assert float(rot) < 0.05 and float(trans) < 1e-3
  scaled = w2c.copy()
  scaled[:, :3, 3] *= 3.0                         # another scale: same motion for a monocular estimate
  assert float(lingbot.camera_errors(scaled, ex.poses)[1]) < 1e-3


@pytest.mark.parametrize("key, value, match", [
    ("rl.expert", "middle", "rl.expert = 'middle': must be one of"),
    ("rl.best_of_n", 8, "rl.best_of_n = 8: must be <= rl.group_size"),
    ("rl.curriculum", "fixed", "rl.curriculum = 'fixed': is not a setting of `rl`"),
    ("rewards.weights.idm", 1.0, "rewards.weights.idm = 1.0: is not a LingBot-World RL reward"),
    ("data.source", "records", "data.source = 'records': must be one of"),
    ("rl.rollout_steps", 1, "rl.expert = 'low': the rollout schedule .* no step on the low-noise"),
])
def test_bad_config_is_a_named_error(key, value, match):
  cfg = load_config("lingbot_tiny")
  section, name = key.rsplit(".", 1)
  node = cfg
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(ConfigError, match=match):
    backbone_lib.validate(cfg)


def test_unknown_family_is_a_named_error():
  cfg = load_config("lingbot_tiny")
  cfg.family = "sora"
  with pytest.raises(ConfigError, match="family = 'sora': must be one of"):
    backbone_lib.validate(cfg)
