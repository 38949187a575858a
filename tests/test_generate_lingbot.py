"""python -m wc_jax.generate with a LingBot-World config (configs/lingbot_tiny.py: random experts
and VAE at toy width, 2 UniPC steps so both experts serve): a playable mp4 of the requested frames
and size from an image, prompt states and a camera path; the same seed gives the same video
whether the path comes as actions or as the poses.npy / intrinsics.npy they turn into; bad input
is one line and nothing is written."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from conftest import REPO, load_config
from wc_jax import generate, sharding
from wc_jax.data import trajectories
from wc_jax.inference import lingbot

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")   # imageio-ffmpeg reading back

ACTIONS = "w-1, right-1"          # 3 latents = 9 frames
FRAMES, H, W = 9, 32, 64          # the tiny config's area; latents [1, 4, 3, 4, 8]


def tiny():
  cfg = load_config("lingbot_tiny")
  cfg.sampling.steps = 2          # t = 999 (high-noise expert), then 908 (low-noise expert)
  return cfg


def one_device(cfg):
  return sharding.make_mesh(dict(cfg.mesh), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  from PIL import Image
  d = tmp_path_factory.mktemp("lingbot_inputs")
  yy, xx = np.mgrid[0:H, 0:W] / np.asarray([H, W])[:, None, None]
  img = np.stack([xx, yy, 0.5 * (1 - xx)], -1)
  img[(yy - 0.5) ** 2 + (xx - 0.3) ** 2 < 0.05] = (0.9, 0.2, 0.1)
  Image.fromarray(np.round(img * 255).astype(np.uint8)).save(d / "first.png")
  rng = np.random.default_rng(5)
  np.savez(d / "states.npz", text_states=rng.standard_normal((10, 32)).astype(np.float32),
           negative_states=rng.standard_normal((7, 32)).astype(np.float32))
  poses, ks = generate.poses_from_actions(ACTIONS, FRAMES)
  np.save(d / "poses.npy", poses)
  np.save(d / "intrinsics.npy", ks)
  return dict(image=d / "first.png", states=d / "states.npz", poses=d / "poses.npy", intrinsics=d / "intrinsics.npy",
              dir=d)


def _generate(inputs, out, cfg=None, **kw):
  cfg = cfg or tiny()
  args = dict(out=str(out), image=str(inputs["image"]), actions=ACTIONS, states=str(inputs["states"]), seed=3,
              progress=False, mesh=one_device(cfg))
  args.update(kw)
  return generate.generate_video(cfg, **args)


@pytest.fixture(scope="module")
def first(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp("lingbot_gen") / "video.mp4"
  return _generate(inputs, out), out


def _frames(path):
  return np.stack(list(iio.imiter(path))).astype(int)


def test_writes_a_playable_mp4_of_the_requested_frames(first):
  summary, out = first
  frames = _frames(out)
  assert frames.shape == (FRAMES, H, W, 3) and summary["frames"] == FRAMES
  assert (summary["height"], summary["width"], summary["family"], summary["camera"]) == (H, W, "lingbot", "actions")
  lat = np.load(out.with_suffix(".npy"))
  assert lat.shape == (1, 4, 3, 4, 8) and np.isfinite(lat).all()
  saved = json.loads(out.with_suffix(".json").read_text())
  assert saved["steps"] == 2 and saved["guide_scale"] == [5.0, 5.0] and saved["seed"] == 3
  assert set(saved["weights"].values()) == {"random"} and "states.npz" in saved["conditioning"]
  assert frames.std() > 1.0, "a video, not a constant"
  # the commanded action is burned into the top-left corner: a dark box with bright text
  box = frames[:, : H // 5, : W // 3]
  assert box.min() < 40 and box.max() > 200
  assert sorted(p.name for p in out.parent.iterdir()) == ["video.json", "video.mp4", "video.npy"]


def test_same_seed_same_video_from_actions_or_poses(inputs, first, tmp_path):
  """The poses.npy / intrinsics.npy that poses_from_actions writes drive the same camera: with the
  same seed, the same latents and frames; another seed gives another video."""
  summary, out = _generate(inputs, tmp_path / "poses.mp4", actions="", poses=str(inputs["poses"]),
                           intrinsics=str(inputs["intrinsics"]), frames=FRAMES), tmp_path / "poses.mp4"
  assert summary["camera"] == "poses" and summary["frames"] == FRAMES
  lat, lat0 = np.load(out.with_suffix(".npy")), np.load(first[1].with_suffix(".npy"))
  np.testing.assert_array_equal(lat, lat0)
  v, v0 = _frames(out), _frames(first[1])
  # the same frames up to the burned-in label (actions only), which the lossy codec spreads a little
  assert v.shape == v0.shape and np.abs(v - v0)[:, H // 2:].mean() < 2.0
  _generate(inputs, tmp_path / "again.mp4")      # the first run's inputs again: the same mp4 frames
  np.testing.assert_array_equal(_frames(tmp_path / "again.mp4"), v0)
  _generate(inputs, tmp_path / "seed4.mp4", seed=4)
  assert np.abs(np.load(tmp_path / "seed4.npy") - lat0).max() > 1e-2


def test_poses_from_actions():
  poses, ks = generate.poses_from_actions(ACTIONS)
  ref_p, ref_k = lingbot.poses_from_trajectory(trajectories.trajectory_from_string(ACTIONS), FRAMES)
  assert poses.shape == (FRAMES, 4, 4) and ks.shape == (FRAMES, 4)
  np.testing.assert_array_equal(poses, ref_p)
  np.testing.assert_array_equal(ks, ref_k)
  np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-6)
  assert poses[4, 2, 3] > 0.0 and np.allclose(poses[4, :3, :3], np.eye(3), atol=1e-6)   # w: forward along +z
  assert not np.allclose(poses[8, :3, :3], np.eye(3), atol=1e-3)                        # right: turned
  np.testing.assert_allclose(ks[:, 2:], np.tile([416.0, 240.0], (FRAMES, 1)), atol=1e-3)  # centre of 832x480
  longer, _ = generate.poses_from_actions(ACTIONS, 13)
  np.testing.assert_array_equal(longer[:FRAMES], poses)
  np.testing.assert_array_equal(longer[FRAMES:], np.repeat(poses[-1:], 4, axis=0))   # the camera rests
  with pytest.raises(ValueError, match="more than num_frames=5"):
    generate.poses_from_actions(ACTIONS, 5)


def _error(inputs, tmp_path, cfg=None, **kw):
  with pytest.raises(generate.GenerateError) as e:
    _generate(inputs, tmp_path / "v.mp4", cfg=cfg, **kw)
  msg = str(e.value)
  assert "\n" not in msg
  assert not list(tmp_path.glob("v.*")) + list(tmp_path.glob(".v.*")), "nothing may be written"
  return msg


def test_bad_inputs_name_the_problem(inputs, tmp_path):
  d = inputs["dir"]
  np.save(tmp_path / "five.npy", np.repeat(np.eye(4, dtype=np.float32)[None], 5, axis=0))
  msg = _error(inputs, tmp_path, actions="", poses=str(tmp_path / "five.npy"), intrinsics=str(inputs["intrinsics"]),
               frames=FRAMES)
  assert "5 poses for num_frames=9: give at least one pose per frame" in msg
  msg = _error(inputs, tmp_path, actions="", poses=str(inputs["poses"]), intrinsics=str(inputs["intrinsics"]), frames=13)
  assert "9 poses for num_frames=13" in msg
  assert "needs --intrinsics" in _error(inputs, tmp_path, actions="", poses=str(inputs["poses"]))
  assert "makes 1+4k frames" in _error(inputs, tmp_path, frames=10)
  assert "command 9 frames, more than --frames=5" in _error(inputs, tmp_path, frames=5)
  assert "unknown action 'jump'" in _error(inputs, tmp_path, actions="w-1, jump-1")
  assert "give --actions or --poses/--intrinsics, not both" in _error(inputs, tmp_path, poses=str(inputs["poses"]))
  msg = _error(inputs, tmp_path, states="")
  assert msg.startswith("no prompt states: pass --states=STATES.npz with text_states and negative_states")
  assert "--random_conditioning" in msg
  np.savez(tmp_path / "pos_only.npz", text_states=np.zeros((4, 32), np.float32))
  assert "lacks negative_states" in _error(inputs, tmp_path, states=str(tmp_path / "pos_only.npz"))
  np.savez(tmp_path / "wide.npz", text_states=np.zeros((4, 64), np.float32), negative_states=np.zeros((4, 64)))
  assert "text_states must be umT5 states [L <= 16, 32]" in _error(inputs, tmp_path, states=str(tmp_path / "wide.npz"))
  assert "no first frame: pass --image" in _error(inputs, tmp_path, image="")
  assert "not WorldPlay's pose JSON" in _error(inputs, tmp_path, actions="", pose=str(d / "poses.json"))
  cfg = tiny()
  cfg.model.checkpoint_low = str(tmp_path / "nowhere")
  assert f"model.checkpoint_low={tmp_path / 'nowhere'}: no such file or folder" in _error(inputs, tmp_path, cfg=cfg)
  (tmp_path / "v.mp4").write_bytes(b"old")
  with pytest.raises(generate.GenerateError, match="already exist.*pass --overwrite"):
    _generate(inputs, tmp_path / "v.mp4")
  assert (tmp_path / "v.mp4").read_bytes() == b"old"
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_full_size_refuses_random_weights(inputs, tmp_path):
  """configs/lingbot_a14b.py without checkpoints: refused before anything is built, naming the
  missing paths."""
  cfg = load_config("lingbot_a14b")
  np.savez(tmp_path / "s.npz", text_states=np.zeros((4, 4096), np.float32), negative_states=np.zeros((4, 4096)))
  msg = _error(inputs, tmp_path, cfg=cfg, states=str(tmp_path / "s.npz"), mesh=None)
  assert msg.startswith("model.checkpoint_low, model.checkpoint_high, vae.checkpoint not set: this config's experts "
                        "have ~14.1B parameters each")
  assert "--allow_random_weights" in msg


def test_worldplay_config_rejects_lingbot_camera(inputs, tmp_path):
  with pytest.raises(generate.GenerateError, match="--poses / --intrinsics are LingBot-World's camera input"):
    generate.generate_video(load_config("tiny"), out=str(tmp_path / "v.mp4"), poses=str(inputs["poses"]),
                            random_conditioning=True, progress=False)
  assert not list(tmp_path.iterdir())


def test_cli_reports_one_line(inputs, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-m", "wc_jax.generate", "--config=configs/lingbot_tiny.py",
                      f"--image={inputs['image']}", "--actions=w-4, right-4", "--frames=33",
                      f"--out={tmp_path / 'v.mp4'}"], cwd=str(REPO), env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: no prompt states: pass --states=STATES.npz with "
                                                       "text_states and negative_states (umT5 outputs [L, 32]")
  assert not list(tmp_path.iterdir())
