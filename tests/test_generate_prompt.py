"""python -m wc_jax.generate --prompt: the prompt and first frame go through the JAX encoders
exactly as `write_records images` encodes them, so generating from the prompt gives the same
latents as generating from the record set written for that prompt and image; the CFG negative
is the pipeline's (text path on the negative prompt, "" by default; ByT5 zeros; the same image).

The encoders are the tiny reference-layout checkpoints of tests/test_write_records_encoders.py
(built from tests/fixtures/encoders, with its offline byte-level tokenizer.json)."""
import importlib.util
import json

import numpy as np
import pytest

from test_write_records_encoders import encoder_checkpoints, tiny_encoder_config
from wc_jax import generate
from wc_jax.data import write_records as wr

pytest.importorskip("regex", reason="the Qwen2 tokenizer needs the `regex` package (pip install regex)")
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

PROMPT = 'A neon sign that says "OPEN" over a wet street'
MAX_TEXT = 64
ACTIONS = "w-3, right-2, w+left-2"       # 8 latents = 2 chunks of 4


@pytest.fixture(scope="module")
def setup(fixtures_dir, tmp_path_factory):
  from PIL import Image
  root = tmp_path_factory.mktemp("prompt")
  ckpts = encoder_checkpoints(fixtures_dir, root)
  cfg_path = tiny_encoder_config(root / "tiny_encoders.py")
  images = root / "imgs"
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(images / "im0.png")
  (images / "prompts.jsonl").write_text(json.dumps({"image": "im0.png", "prompt": PROMPT}) + "\n")
  records = wr.main(["images", "--images", str(images), "--out", str(root / "records"), "--name", "p",
                     "--num_latents", "8", "--config", str(cfg_path), "--max_text_tokens", str(MAX_TEXT),
                     "--text_encoder", str(ckpts / "qwen"), "--byt5", str(ckpts / "byt5"), "--siglip",
                     str(ckpts / "siglip")])
  return dict(root=root, ckpts=ckpts, cfg_path=cfg_path, image=images / "im0.png", records=records)


def _cfg(path):
  spec = importlib.util.spec_from_file_location("tiny_encoders_cfg", path)
  m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(m)
  cfg = m.get_config()
  cfg.sampling.steps = 2
  return cfg


def _encoders(setup):
  c = setup["ckpts"]
  return dict(text_encoder=str(c / "qwen"), byt5=str(c / "byt5"), siglip=str(c / "siglip"), max_text_tokens=MAX_TEXT)


def _run(setup, name, **kw):
  args = dict(out=str(setup["root"] / name), actions=ACTIONS, seed=3, progress=False)
  args.update(kw)
  return generate.generate_video(_cfg(setup["cfg_path"]), **args)


def test_prompt_gives_the_latents_of_its_record(setup):
  from_records = _run(setup, "rec.mp4", states=setup["records"])
  setup["records_latents"] = from_records["latents"]
  from_prompt = _run(setup, "prompt.mp4", prompt=PROMPT, image=str(setup["image"]), **_encoders(setup))
  a, b = np.load(from_records["latents"]), np.load(from_prompt["latents"])
  assert a.shape == (1, 4, 8, 4, 6) and np.isfinite(a).all() and a.std() > 0.1
  err = float(np.abs(a - b).max())
  assert err <= 1e-6, err                              # the same encoders and programs: measured 0.0
  assert from_prompt["conditioning"].startswith("--prompt 'A neon sign") and from_prompt["prompt"] == PROMPT
  assert from_records["first_frame"].startswith("first_latent of record 0")
  assert from_prompt["frames"] == 29 and from_prompt["model_passes"] == 1 + 2 * 2 + 1


def test_negative_prompt_is_the_pipelines(setup):
  """JaxEncoder.negative = the negatives rows of `encode_conditioning(cfg=True)`; guidance with
  the default ("") negative moves the video, and a given --negative_prompt is another one."""
  from wc_jax.models.encoders import conditioning
  from wc_jax.models.vae import init_model, VAEConfig
  c = setup["ckpts"]
  enc = wr.jax_encoder(str(c / "qwen"), str(c / "byt5"), str(c / "siglip"), max_text_tokens=MAX_TEXT,
                       frame_hw=(64, 96), vae_model=init_model(VAEConfig(latent_channels=4,
                                                                         block_out_channels=(8, 16, 16, 32, 32),
                                                                         layers_per_block=1)))
  image = wr.load_image(str(setup["image"]))
  pos = enc(image, PROMPT)
  neg = enc.negative(pos, "")
  both = conditioning.encode_conditioning([PROMPT], image, text_encoder=enc.text_encoder, tokenize=enc.tokenize,
                                          byt5_encoder=enc.byt5_encoder, siglip=enc.siglip, cfg=True)
  np.testing.assert_allclose(neg["text_states"], np.asarray(both["text_states"][0]), atol=1e-5, rtol=0)
  np.testing.assert_array_equal(neg["text_mask"], np.asarray(both["encoder_attention_mask"][0]).astype(bool))
  np.testing.assert_allclose(pos["text_states"], np.asarray(both["text_states"][1]), atol=1e-5, rtol=0)
  assert not neg["byt5_states"].any() and not neg["byt5_mask"].any() and pos["byt5_mask"].any()
  np.testing.assert_array_equal(neg["vision_states"], pos["vision_states"])

  # a given negative prompt, guided: the negative branch doubles the DiT passes and moves the video
  plain = np.load(setup.get("records_latents") or _run(setup, "rec.mp4", states=setup["records"])["latents"])
  g = _run(setup, "g3.mp4", prompt=PROMPT, image=str(setup["image"]), guidance=3.0,
           negative_prompt="blurry, low quality", **_encoders(setup))
  assert g["model_passes"] == 2 * (1 + 2 * 2 + 1)
  assert np.abs(np.load(g["latents"]) - plain).max() > 1e-2


def test_prompt_errors_name_the_flags(setup, tmp_path):
  img = str(setup["image"])
  c = setup["ckpts"]

  def err(**kw):
    with pytest.raises(generate.GenerateError) as e:
      generate.generate_video(_cfg(setup["cfg_path"]), out=str(tmp_path / "x.mp4"), actions="w-3", progress=False,
                              **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg

  msg = err(prompt="a cat", image=img)
  assert msg.startswith("--prompt needs the JAX encoders' checkpoints: pass --text_encoder, --byt5, --siglip"), msg
  assert "pass --siglip (" in err(prompt="a cat", image=img, text_encoder=str(c / "qwen"), byt5=str(c / "byt5"))
  assert err(prompt="a cat", image=img, text_encoder=str(c / "qwen"), byt5=str(tmp_path / "nope"),
             siglip=str(c / "siglip")).endswith("--byt5=" + str(tmp_path / "nope") + ": no such file or folder")
  assert "--prompt needs --image" in err(prompt="a cat", **_encoders(setup))
  assert "give --prompt or --states, not both" in err(prompt="a cat", image=img, states=setup["records"],
                                                       **_encoders(setup))
  assert "--negative_prompt needs --prompt" in err(negative_prompt="ugly", states=setup["records"])
  long = " ".join(["word"] * 80)
  assert err(prompt=long, image=img, **_encoders(setup)).startswith("--prompt: the prompt is ")
  assert not list(tmp_path.iterdir())


def test_cli_prompt_without_encoders_is_one_line(tmp_path):
  import os
  import subprocess
  import sys
  from conftest import REPO
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-m", "wc_jax.generate", "--config=configs/tiny.py", "--prompt=a red door",
                      f"--image={REPO / 'tests' / 'nothing.png'}", f"--out={tmp_path / 'v.mp4'}"], cwd=str(REPO),
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --prompt needs the JAX encoders' checkpoints: pass --text_encoder, --byt5, "
                         "--siglip"), last
  assert not list(tmp_path.iterdir())
