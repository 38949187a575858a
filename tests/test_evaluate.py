"""python -m wc_jax.evaluate: the metric code gives the known accuracy on ground-truth renders of the
commanded trajectories (pose network replaced by the exact poses) and a lower one on a frozen
video; the CLI writes its tables and sheet at the tiny config and a rerun recomputes nothing;
bad input is one line naming the problem."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, load_config
from wc_jax import evaluate as ev
from wc_jax.data import synthetic_world as sw
from wc_jax.rewards import video_metrics as vm

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")   # imageio-ffmpeg

LATENTS = 8          # two chunks of 4 at the tiny config: 29 frames
H, W = 16, 24


class ExactPoses:
  """A pose network that knows the scene: each frame is looked up among the ground-truth renders
  (nearest image) and gets that render's true w2c. Hashable by identity, so the rewards treat it
  as a static callable."""

  def __init__(self, frames: np.ndarray, w2c: np.ndarray):
    self.frames = np.asarray(frames, np.float32)
    self.w2c = np.asarray(w2c, np.float32)

  def __call__(self, frames):
    d = jnp.sum((frames[:, None] - self.frames[None]) ** 2, axis=(2, 3, 4))
    return jnp.asarray(self.w2c)[jnp.argmin(d, axis=1)]


def brightness(images):
  """A quality scorer with a known answer: mean brightness per image."""
  return jnp.mean(images, axis=(1, 2, 3))


@pytest.fixture(scope="module")
def renders():
  """Ground-truth renders of every action of both kinds, held for LATENTS latents."""
  scene = sw.make_scene(3)
  out = {}
  for kind in ev.KINDS:
    for key in ev.ACTIONS[kind]:
      traj = ev.held_action(key, LATENTS)
      r = sw.render_trajectory(scene, traj, H, W)
      out[key] = (traj, r.frames, r.w2c)
  table = np.concatenate([f for _, f, _ in out.values()])
  poses = np.concatenate([w for _, _, w in out.values()])
  return out, ExactPoses(table, poses)


def test_exact_poses_of_ground_truth_renders_score_one(renders):
  videos, pose = renders
  for key, (traj, frames, _) in videos.items():
    s = vm.score_video(jnp.asarray(frames), traj.actions, pose, brightness, chunk=4)
    assert s["exact"] == 1.0 and s["fine"] == 1.0, (key, s)
    assert s["translation"] == 1.0 and s["rotation"] == 1.0
    # quality: the windows add up to the whole video's frames 3::4
    q = np.asarray(brightness(jnp.asarray(frames)))
    np.testing.assert_allclose(s["quality"], q[3::4].mean(), rtol=1e-5)
    np.testing.assert_allclose(s["drift"], -np.abs(q[3::4] - q[0]).mean(), rtol=1e-5, atol=1e-7)
    # one window over the whole video gives the same accuracies here
    whole = vm.score_video(jnp.asarray(frames), traj.actions, pose, chunk=None)
    assert whole["exact"] == 1.0 and "quality" not in whole


def test_frozen_video_scores_lower(renders):
  videos, pose = renders
  traj, frames, _ = videos["w"]
  frozen = jnp.asarray(np.repeat(frames[:1], len(frames), axis=0))
  s = vm.score_video(frozen, traj.actions, pose, brightness, chunk=4)
  # no motion is seen: every compared frame commands "forward" (label 9), so the 81-way accuracy is
  # 0 and only the rotation part (none commanded, none seen) is right
  assert s["exact"] == 0.0 and s["translation"] == 0.0 and s["rotation"] == 1.0 and s["fine"] == 0.5
  assert abs(s["drift"]) < 1e-6       # the same frame scored in different batches
  traj, frames, _ = videos["w+right"]
  frozen = jnp.asarray(np.repeat(frames[:1], len(frames), axis=0))
  s = vm.score_video(frozen, traj.actions, pose, chunk=4)
  assert s["exact"] == 0.0 and s["fine"] == 0.0


def test_a_horizon_is_the_prefix(renders):
  videos, pose = renders
  traj, frames, _ = videos["d+up"]
  windows = vm.score_windows(jnp.asarray(frames), traj.actions, pose, brightness, chunk=4)
  # a half-frozen video: the first chunk moves, the second does not
  half = np.array(frames)
  half[13:] = frames[12]
  hw = vm.score_windows(half, traj.actions, pose, brightness, chunk=4)     # host frames work too
  assert vm.aggregate(hw, 4)["exact"] == 1.0
  assert vm.aggregate(hw)["exact"] == pytest.approx(12 / 28)     # 12 of the 28 compared frames move
  prefix = vm.score_video(jnp.asarray(frames[:13]), traj.actions[:4], pose, brightness, chunk=4)
  short = vm.aggregate(windows, 4)
  for k in vm.METRICS:
    assert short[k] == pytest.approx(prefix[k], abs=1e-6), k
  with pytest.raises(ValueError, match="no window ends at latent 6"):
    vm.aggregate(windows, 6)
  with pytest.raises(ValueError, match="8 latents decode to 29 frames, got 28"):
    vm.score_windows(jnp.asarray(frames[:28]), traj.actions, pose, chunk=4)


def test_mean_ci():
  r = vm.mean_ci([0.5, 0.7, 0.9])
  assert r["mean"] == pytest.approx(0.7) and r["n"] == 3
  assert r["ci95"] == pytest.approx(4.302653 * 0.2 / np.sqrt(3), rel=1e-5)    # t(0.975, 2 dof)
  assert vm.mean_ci([0.3]) == {"mean": 0.3, "ci95": None, "n": 1}


def tiny():
  cfg = load_config("tiny")
  cfg.sampling.steps = 2
  return cfg


def test_cli_writes_tables_and_resumes(tmp_path, monkeypatch):
  import imageio.v3 as iio
  out = tmp_path / "eval"
  s = ev.evaluate(tiny(), out=str(out), frames="13", kinds="basic", limit=2, progress=False)
  assert (s["computed"], s["cached"], s["videos"]) == (2, 0, 2)
  res = json.loads((out / "results.json").read_text())
  row = res["table"]["basic"]["13"]
  assert row["exact"]["n"] == 2 and 0.0 <= row["fine"]["mean"] <= 1.0 and row["drift"]["mean"] <= 0.0
  assert [v["action"] for v in res["per_video"]] == ["w", "s"]
  assert "| basic | 13 | 2 |" in (out / "results.md").read_text()
  sheet = np.stack(list(iio.imiter(out / "sheet.mp4")))
  assert sheet.shape == (13, 64, 2 * 96, 3)            # one row (basic), two videos of 64 x 96
  for i in range(2):
    d = out / "videos" / f"basic-{i:03d}"
    assert np.load(d / "latents.npy").shape == (1, 4, 4, 4, 6)
    assert json.loads((d / "scores.json").read_text())["latents"] == 4

  # the rerun reads every video from the cache: no model is even built
  def boom(*a, **k):
    raise AssertionError("a cached video was recomputed")
  monkeypatch.setattr(ev, "_Runner", boom)
  again = ev.evaluate(tiny(), out=str(out), frames="13", kinds="basic", limit=2, progress=False)
  assert (again["computed"], again["cached"]) == (0, 2)
  assert again["table"] == s["table"]
  with pytest.raises(ev.EvaluateError, match="holds videos of another setting \\(differs in: seed\\)"):
    ev.evaluate(tiny(), out=str(out), frames="13", kinds="basic", limit=2, seed=5, progress=False)


@pytest.mark.parametrize("kw, message", [
    (dict(kinds="basic,spiral"), "--kinds: unknown kind 'spiral'; the kinds are basic, combined"),
    (dict(frames="14"), "--frames: 14 is not a video length the model makes: .* lengths are 13, 29, "),
    (dict(frames="13,17"), "--frames: 17 is not a video length .* chunks of 4 latents"),
    (dict(frames="13,x"), "--frames: 'x' is not a whole number of frames"),
    (dict(states="prompts"), "--states='prompts': choose one of synthetic, records"),
    (dict(num=-1), "--num=-1 and --limit=0 must be >= 0"),
    (dict(checkpoint="/no/such/run"), "--checkpoint=/no/such/run: no such file or folder"),
])
def test_bad_input_names_the_problem(tmp_path, kw, message):
  out = tmp_path / "eval"
  with pytest.raises(ev.EvaluateError, match=message):
    ev.evaluate(tiny(), out=str(out), **{"frames": "13", **kw})
  assert not out.exists()          # nothing written


def test_cli_one_line_error(tmp_path):
  (tmp_path / "file").write_text("x")
  r = subprocess.run([sys.executable, "-m", "wc_jax.evaluate", "--config=configs/tiny.py",
                      f"--out={tmp_path / 'file'}", "--frames=13"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == f"error: --out={tmp_path / 'file'} is a file; name a folder"
