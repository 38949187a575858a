"""python -m wc_jax.generate --prompt with a LingBot-World config: the prompt and the config's
negative prompt go through the umT5 encoder of the text_encoder section (the tiny fixture encoder,
tests/fixtures/encoders/umt5) into the pipeline. The pipeline receives exactly
umt5.encode_prompts' states (rows past the prompt zero, as the reference pads them); the same
prompt and seed give the same video, another prompt another one; conflicting or missing inputs
are one line, and nothing is written."""
import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from conftest import REPO, load_config
from wc_jax import generate, sharding
from wc_jax.convert.encoders import convert_umt5, umt5_from_config
from wc_jax.inference import lingbot
from wc_jax.models.encoders import umt5

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")   # imageio-ffmpeg reading back

ACTIONS = "w-1"                   # 2 latents = 5 frames
FRAMES, H, W = 5, 32, 64          # the tiny config's area
PROMPT = "a camera walks forward along a stone path"


@pytest.fixture(scope="module")
def enc_dir(fixtures_dir):
  return fixtures_dir / "encoders" / "umt5"


def tiny(enc_dir):
  cfg = load_config("lingbot_tiny")
  cfg.sampling.steps = 2          # t = 999 (high-noise expert), then 908 (low-noise expert)
  cfg.text_encoder.checkpoint = str(enc_dir / "weights.safetensors")
  cfg.text_encoder.tokenizer = str(enc_dir / "tokenizer")
  return cfg


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  from PIL import Image
  d = tmp_path_factory.mktemp("lingbot_prompt_inputs")
  yy, xx = np.mgrid[0:H, 0:W] / np.asarray([H, W])[:, None, None]
  img = np.stack([xx, yy, 0.5 * (1 - xx)], -1)
  Image.fromarray(np.round(img * 255).astype(np.uint8)).save(d / "first.png")
  return d / "first.png"


def _generate(enc_dir, image, out, cfg=None, **kw):
  cfg = cfg or tiny(enc_dir)
  args = dict(out=str(out), image=str(image), actions=ACTIONS, prompt=PROMPT, seed=3, progress=False,
              mesh=sharding.make_mesh(dict(cfg.mesh), devices=jax.devices()[:1]))
  args.update(kw)
  return generate.generate_video(cfg, **args)


def _frames(path):
  return np.stack(list(iio.imiter(path))).astype(int)


@pytest.fixture(scope="module")
def first(enc_dir, image, tmp_path_factory):
  """The first video, with the prompt states the pipeline was handed."""
  seen = []
  original = lingbot.LingBotPipeline.generate

  def spy(self, first_frame, text_states, negative_states, *a, **kw):
    seen.append((np.asarray(text_states), np.asarray(negative_states)))
    return original(self, first_frame, text_states, negative_states, *a, **kw)

  out = tmp_path_factory.mktemp("lingbot_prompt_gen") / "video.mp4"
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(lingbot.LingBotPipeline, "generate", spy)
    summary = _generate(enc_dir, image, out)
  assert len(seen) == 1
  return summary, out, seen[0]


def test_writes_an_mp4_from_a_prompt(first):
  summary, out, _ = first
  frames = _frames(out)
  assert frames.shape == (FRAMES, H, W, 3) and summary["frames"] == FRAMES
  assert (summary["height"], summary["width"], summary["prompt"]) == (H, W, PROMPT)
  assert summary["negative_prompt"] == load_config("lingbot_tiny").text_encoder.negative_prompt
  assert summary["conditioning"].startswith(f"prompt {PROMPT!r} (umT5 ")
  assert np.isfinite(np.load(out.with_suffix(".npy"))).all()
  assert sorted(p.name for p in out.parent.iterdir()) == ["video.json", "video.mp4", "video.npy"]


def test_pipeline_gets_exactly_the_umt5_states(first, enc_dir):
  """No silent substitution: the states handed to the pipeline are umt5.encode_prompts' of the prompt
  and of the config's negative prompt, [1, text_len, text_dim] with zero rows past each prompt."""
  _, _, (pos, neg) = first
  cfg = tiny(enc_dir)
  enc, tok, text_len = umt5_from_config(cfg.text_encoder)
  want_pos = np.asarray(umt5.encode_prompts(enc, tok, [PROMPT], text_len))
  want_neg = np.asarray(umt5.encode_prompts(enc, tok, [cfg.text_encoder.negative_prompt], text_len))
  assert pos.shape == neg.shape == (1, 16, 32)
  np.testing.assert_array_equal(pos, want_pos)
  np.testing.assert_array_equal(neg, want_neg)
  n_pos = int(tok([PROMPT], text_len)[1].sum())
  assert 1 < n_pos < text_len and not pos[0, n_pos:].any() and np.abs(pos[0, :n_pos]).min(axis=-1).max() > 0
  assert not np.array_equal(pos, neg)


def test_same_prompt_same_video_other_prompt_other_video(first, enc_dir, image, tmp_path):
  _, out0, _ = first
  _generate(enc_dir, image, tmp_path / "again.mp4")
  np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), np.load(out0.with_suffix(".npy")))
  np.testing.assert_array_equal(_frames(tmp_path / "again.mp4"), _frames(out0))
  _generate(enc_dir, image, tmp_path / "other.mp4", prompt="a dark cave with a river")
  assert np.abs(np.load(tmp_path / "other.npy") - np.load(out0.with_suffix(".npy"))).max() > 1e-3
  assert np.abs(_frames(tmp_path / "other.mp4") - _frames(out0)).mean() > 0.5


def _error(enc_dir, image, tmp_path, cfg=None, **kw):
  with pytest.raises(generate.GenerateError) as e:
    _generate(enc_dir, image, tmp_path / "v.mp4", cfg=cfg, **kw)
  msg = str(e.value)
  assert "\n" not in msg
  assert not list(tmp_path.glob("v.*")) + list(tmp_path.glob(".v.*")), "nothing may be written"
  return msg


def test_bad_prompt_inputs_name_the_problem(enc_dir, image, tmp_path):
  np.savez(tmp_path / "s.npz", text_states=np.zeros((4, 32), np.float32), negative_states=np.zeros((4, 32)))
  msg = _error(enc_dir, image, tmp_path, states=str(tmp_path / "s.npz"))
  assert msg.startswith("give --prompt or --states, not both")
  assert "give --prompt or --negative_states, not both" in _error(enc_dir, image, tmp_path,
                                                                  negative_states=str(tmp_path / "s.npz"))
  assert "give --prompt or --random_conditioning, not both" in _error(enc_dir, image, tmp_path,
                                                                      random_conditioning=True)
  assert _error(enc_dir, image, tmp_path, prompt="", negative_prompt="blurry", states=str(tmp_path / "s.npz")) \
      .startswith("--negative_prompt needs --prompt")
  assert "WorldPlay's prompt encoders" in _error(enc_dir, image, tmp_path, text_encoder=str(tmp_path))

  cfg = tiny(enc_dir)
  del cfg["text_encoder"]
  assert _error(enc_dir, image, tmp_path, cfg=cfg).startswith("--prompt needs the config's text_encoder section")
  cfg = tiny(enc_dir)
  cfg.text_encoder.checkpoint = ""
  msg = _error(enc_dir, image, tmp_path, cfg=cfg)
  assert msg.startswith("--prompt: text_encoder.checkpoint not set") and "models_t5_umt5-xxl-enc-bf16.pth" in msg
  cfg = tiny(enc_dir)
  cfg.text_encoder.checkpoint = str(tmp_path / "nowhere.pth")
  assert f"text_encoder.checkpoint={tmp_path / 'nowhere.pth'}: no such file or folder" in _error(
      enc_dir, image, tmp_path, cfg=cfg)
  cfg = tiny(enc_dir)
  cfg.model.text_dim = 48
  assert _error(enc_dir, image, tmp_path, cfg=cfg).startswith(
      "text_encoder.arch.dim=32 but model.text_dim=48: the umT5 states would not fit the DiT's text embedding")
  cfg = tiny(enc_dir)
  cfg.text_encoder.text_len = 17
  assert "text_encoder.text_len=17: must be 1..model.text_len=16" in _error(enc_dir, image, tmp_path, cfg=cfg)
  cfg = tiny(enc_dir)
  del cfg.text_encoder["negative_prompt"]
  assert _error(enc_dir, image, tmp_path, cfg=cfg).startswith("no negative prompt: set text_encoder.negative_prompt")
  # --negative_prompt replaces the config's (an empty one included)
  for neg in ("blurry, static", ""):
    checked = generate.check_lingbot_prompt(cfg, PROMPT, neg, states="", negative_states="", random_conditioning=False)
    assert (checked["negative_prompt"], checked["negative_source"]) == (neg, "--negative_prompt")


def test_encoder_width_checked_after_loading(enc_dir, image, tmp_path):
  """Without `arch` the width is known only from the checkpoint (here a wc_jax folder written by
  convert_umt5): a 32-wide encoder against a 48-wide DiT text embedding is refused before the
  experts are built."""
  import json
  convert_umt5(enc_dir / "weights.safetensors", tmp_path / "umt5", json.loads((enc_dir / "config.json").read_text()))
  cfg = tiny(enc_dir)
  cfg.text_encoder.checkpoint = str(tmp_path / "umt5")
  cfg.text_encoder.arch = {}
  cfg.model.text_dim = 48
  msg = _error(enc_dir, image, tmp_path, cfg=cfg)
  assert msg.startswith(f"text_encoder.checkpoint={tmp_path / 'umt5'}: umT5 states are 32 wide but "
                        "model.text_dim=48")


def test_cli_prompt_with_states_is_one_line(image, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-m", "wc_jax.generate", "--config=configs/lingbot_tiny.py",
                      f"--image={image}", "--prompt=a walk", f"--states={tmp_path / 's.npz'}",
                      f"--out={tmp_path / 'v.mp4'}"], cwd=str(REPO), env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: give --prompt or --states, not both")
  assert not list(tmp_path.iterdir())
