"""`python -m wc_jax.data.write_records images` with the JAX encoders (no torch).

Tiny reference-layout checkpoints are made from the encoder fixture weights
(tests/fixtures/encoders, see PROVENANCE.md there) in a temp folder, plus a tiny
byte-level BPE tokenizer.json in the Qwen2 format: its 256 byte symbols keep GPT-2's ids
(so "\\n" is 198, as in Qwen2.5) and three merges make "user" the single id 872, so the
template's `<|im_start|>user\\n` crop rule works as with the real tokenizer. The text
model's embedding is widened to the Qwen2.5 special ids (151643-151645) by repeating the
fixture's 108 rows. Records written by the CLI are read back through tfds_builder and
compared with the encoder functions called directly, then fed to the RL data source with
configs/tiny.py's DiT dims set to the fixture encoders' widths (text 64, ByT5 32, SigLIP 32).
"""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from wc_jax.data import tfds_builder as tb
from wc_jax.data import trajectories as T
from wc_jax.data import write_records as wr

# the Qwen2 BPE (wc_jax.rewards.hpsv3.BPETokenizer) needs `regex` for its \p{L} split pattern
pytest.importorskip("regex", reason="the Qwen2 tokenizer needs the `regex` package (pip install regex)")

VOCAB = 151646                     # through <|im_end|> = 151645
MAX_TEXT = 64                      # kept text tokens (the reference: 1000)
USER_ID = 872
PROMPTS = ['A neon sign that says "OPEN" over a street', "a quiet lake"]
ACTIONS = "w-10, right-5"          # entry 1's own pose string: 16 latents


def _byte_symbols() -> list[str]:
  """GPT-2's byte alphabet in its vocabulary order (printable bytes first)."""
  from wc_jax.rewards.hpsv3 import _bytes_to_unicode
  return list(_bytes_to_unicode().values())


def _tokenizer_json(path):
  syms = _byte_symbols()
  vocab = {s: i for i, s in enumerate(syms)}
  vocab.update({"us": 300, "use": 301, "user": USER_ID})
  assert vocab["Ċ"] == 198                                  # "\n", as in Qwen2.5
  doc = {"version": "1.0", "normalizer": {"type": "NFC"},
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}]},
         "model": {"type": "BPE", "vocab": vocab, "merges": ["u s", "us e", "use r"]}}
  path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def ckpts(fixtures_dir, tmp_path_factory):
  return encoder_checkpoints(fixtures_dir, tmp_path_factory.mktemp("ckpts"))


def encoder_checkpoints(fixtures_dir, root):
  """Reference-layout folders of the three tiny encoders + a tokenizer.json under `root`
  (qwen/, byt5/, siglip/; also used by tests/test_generate_prompt.py)."""
  from safetensors.numpy import load_file, save_file
  enc = fixtures_dir / "encoders"
  for sub, cfg_key, fname in (("byt5", "tiny_t5_config", "byt5_model.safetensors"),
                              ("siglip", "tiny_vision_config", "model.safetensors")):
    (root / sub).mkdir()
    cfg = json.loads((enc / sub / "config.json").read_text())[cfg_key]
    (root / sub / "config.json").write_text(json.dumps(cfg))
    shutil.copy(enc / sub / "weights.safetensors", root / sub / fname)
  qwen = root / "qwen"
  qwen.mkdir()
  cfg = json.loads((enc / "text_qwen25vl" / "config.json").read_text())["tiny_text_config"]
  (qwen / "config.json").write_text(json.dumps(dict(cfg, vocab_size=VOCAB)))
  t = load_file(str(enc / "text_qwen25vl" / "weights.safetensors"))
  emb = t["model.embed_tokens.weight"]
  t["model.embed_tokens.weight"] = np.ascontiguousarray(emb[np.arange(VOCAB) % emb.shape[0]])
  save_file(t, str(qwen / "model.safetensors"))
  _tokenizer_json(qwen / "tokenizer.json")
  return root


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  return tiny_encoder_config(tmp_path_factory.mktemp("cfg") / "tiny_encoders.py")


def tiny_encoder_config(path):
  """configs/tiny.py with the DiT's conditioning widths set to the fixture encoders', written to `path`."""
  path.write_text(
      "import importlib.util\n"
      f"_s = importlib.util.spec_from_file_location('tiny_base', {str(REPO / 'configs' / 'tiny.py')!r})\n"
      "_m = importlib.util.module_from_spec(_s)\n_s.loader.exec_module(_m)\n\n"
      "def get_config():\n"
      "  c = _m.get_config()\n"
      "  c.model.text_dim, c.model.byt5_in_dim, c.model.vision_dim = 64, 32, 32\n"
      "  return c\n")
  return path


def _images(tmp_path, prompts=PROMPTS, actions=(None, ACTIONS)):
  from PIL import Image
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.default_rng(0)
  lines = []
  for n, (prompt, act) in enumerate(zip(prompts, actions)):
    # 64 x 96 = the tiny config's latent grid (4 x 6) x 16: the VAE sees the image as it is
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(folder / f"im{n}.png")
    lines.append(json.dumps({"image": f"im{n}.png", "prompt": prompt, **({"actions": act} if act else {})}))
  (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")
  return folder


def _args(ckpts, folder, out, config, *extra, **paths):
  """CLI args; paths= replaces (a path) or drops (None) --text_encoder / --byt5 / --siglip."""
  args = ["images", "--images", str(folder), "--out", str(out), "--name", "enc", "--num_latents", "16",
          "--config", str(config), "--max_text_tokens", str(MAX_TEXT)]
  for flag, default in (("text_encoder", ckpts / "qwen"), ("byt5", ckpts / "byt5"), ("siglip", ckpts / "siglip")):
    value = paths.get(flag, default)
    if value is not None:
      args += [f"--{flag}", str(value)]
  return args + list(extra)


def test_records_equal_the_encoders_and_feed_the_rl_data(ckpts, tiny_config, tmp_path):
  from wc_jax.convert.encoders import load_encoder
  from wc_jax.models.encoders import conditioning, image_resize, qwen_text
  from wc_jax.rewards.hpsv3 import load_tokenizer
  from wc_jax.rl import data_source
  from conftest import load_config

  folder = _images(tmp_path)
  path = wr.main(_args(ckpts, folder, tmp_path / "out", tiny_config))
  spec = tb.spec_of(path)
  assert (spec.text_dim, spec.byt5_dim, spec.vision_dim, spec.latent_channels) == (64, 32, 32, 4)
  src = tb.open_split(path)
  recs = {src[i]["id"].decode(): src[i] for i in range(len(src))}
  assert sorted(recs) == ["000000_im0_t0", "000001_im1_t0"]

  # the same encoders and tokenizer, called directly
  tok = load_tokenizer(ckpts / "qwen")
  crop = conditioning.crop_start_for(tok)
  assert tok("user\n") == [USER_ID, 198] and crop > qwen_text.CROP_START["video"]   # bytes: a long template
  text = load_encoder("qwen25vl_text", ckpts / "qwen", crop_start=crop, max_length=MAX_TEXT)
  byt5 = load_encoder("byt5", ckpts / "byt5")
  siglip = load_encoder("siglip", ckpts / "siglip")
  cfg = load_config("tiny")
  cfg.model.text_dim, cfg.model.byt5_in_dim, cfg.model.vision_dim = 64, 32, 32
  vae_latent, factor = data_source._vae_latent_fn(cfg, 4)       # the trainer's data.first_latent='vae' path
  assert factor == 16
  err = {}
  for n, prompt in enumerate(PROMPTS):
    r = recs[f"{n:06d}_im{n}_t0"]
    assert r["prompt"].decode() == prompt
    image = wr.load_image(str(folder / f"im{n}.png"))
    ts, tm = conditioning.encode_text_prompts(text, [prompt], tok, cfg=False)
    bs, bm = conditioning.encode_glyph_prompts(byt5, [prompt], cfg=False)
    vs = conditioning.encode_reference_image(siglip, image, resolution="480p", cfg=False)
    lat = vae_latent(image_resize.resize_and_center_crop(image, 64, 96))
    assert r["text_states"].shape == (MAX_TEXT, 64) and r["byt5_states"].shape == (256, 32)
    assert r["vision_states"].shape == (16, 32) and r["first_latent"].shape == (4, 4, 6)
    np.testing.assert_array_equal(r["text_mask"], np.asarray(tm[0]).astype(bool))
    np.testing.assert_array_equal(r["byt5_mask"], np.asarray(bm[0]).astype(bool))
    for key, want in (("text_states", ts[0]), ("byt5_states", bs[0]), ("vision_states", vs[0]),
                      ("first_latent", lat)):
      err[key] = max(err.get(key, 0.0), float(np.abs(r[key] - np.asarray(want, np.float32)).max()))
  assert max(err.values()) <= 1e-6, err          # the same jitted functions: measured 0.0
  # prompt 0 has quoted text, prompt 1 none (ByT5 zeros, mask 0); the text mask ends at the prompt
  assert recs["000000_im0_t0"]["byt5_mask"].sum() == len('Text "OPEN". ') + 1
  assert recs["000001_im1_t0"]["byt5_mask"].sum() == 0 and not recs["000001_im1_t0"]["byt5_states"].any()
  assert 5 < recs["000001_im1_t0"]["text_mask"].sum() < MAX_TEXT
  np.testing.assert_array_equal(recs["000001_im1_t0"]["actions"], T.trajectory_from_string(ACTIONS).actions)
  assert recs["000000_im0_t0"]["actions"].shape == (16,)

  # the records feed the trainer's data source (data.source='records', the tiny DiT's dims)
  cfg.data.source, cfg.data.path, cfg.data.shuffle = "records", path, False
  it = data_source.make_data(cfg, cfg.model)
  got = next(it)
  r = recs[got.id]
  k = int(cfg.text.text_tokens)
  np.testing.assert_array_equal(np.asarray(got.text_states).reshape(-1, 64)[:k], r["text_states"][:k])
  np.testing.assert_array_equal(np.asarray(got.first_latent).reshape(4, 4, 6), r["first_latent"])
  assert np.asarray(got.actions).size == 16


def test_cli_errors_name_the_input(ckpts, tiny_config, tmp_path):
  folder = _images(tmp_path, prompts=["a cat", " ".join(["word"] * 30)], actions=(None, None))
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"^record 000001_im1 \(.*im1.png\): the prompt is \d+ tokens with the "
                                       r"template tail, over the text encoder's limit of 64"):
    wr.main(_args(ckpts, folder, out, tiny_config))
  # --on_overflow truncate cuts it, as the reference does
  path = wr.main(_args(ckpts, folder, out, tiny_config, "--on_overflow", "truncate"))
  src = tb.open_split(path)
  assert {src[i]["id"].decode(): bool(src[i]["text_mask"].all()) for i in range(2)} == {
      "000000_im0_t0": False, "000001_im1_t0": True}
  with pytest.raises(FileNotFoundError, match=r"^--byt5 .*nope: no such file or folder$"):
    wr.main(_args(ckpts, folder, out, tiny_config, byt5=tmp_path / "nope"))
  with pytest.raises(ValueError, match=r"needs --siglip"):
    wr.main(_args(ckpts, folder, out, tiny_config, siglip=None))
  bare = tmp_path / "qwen_no_tok"
  bare.mkdir()
  for f in ("config.json", "model.safetensors"):
    (bare / f).symlink_to(ckpts / "qwen" / f)
  with pytest.raises(FileNotFoundError, match=r"no tokenizer: .* has no tokenizer.json; pass --tokenizer"):
    wr.main(_args(ckpts, folder, out, tiny_config, text_encoder=bare))
  path = wr.main(_args(ckpts, folder, out / "tok", tiny_config, "--on_overflow", "truncate", "--tokenizer",
                       str(ckpts / "qwen" / "tokenizer.json"), text_encoder=bare))
  assert len(tb.open_split(path)) == 2
  with pytest.raises(ValueError, match="exclude each other"):
    wr.main(_args(ckpts, folder, out, tiny_config, "--encoder", "wc_jax.data.write_records:random_encoder"))
  (folder / "im0.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"^record 000000_im0 \(.*im0.png\): cannot read the image: "):
    wr.main(_args(ckpts, folder, out / "x", tiny_config))
  (folder / "im0.png").unlink()
  with pytest.raises(FileNotFoundError, match=r"prompts.jsonl line 1: image .*im0.png not found"):
    wr.main(_args(ckpts, folder, out / "y", tiny_config))


def test_tokenize_hook_and_empty_prompt(ckpts, tiny_config, tmp_path):
  """main(tokenize=...) replaces --tokenizer; an empty prompt is encoded as " " (the reference)."""
  from wc_jax.rewards.hpsv3 import load_tokenizer
  tok = load_tokenizer(ckpts / "qwen" / "tokenizer.json")
  calls = []

  def tokenize(text):
    calls.append(text)
    return tok(text)

  folder = _images(tmp_path, prompts=["", "b"], actions=(None, None))
  path = wr.main(_args(ckpts, folder, tmp_path / "out", tiny_config), tokenize=tokenize)
  assert calls and any(c.startswith("user\n ") for c in calls)
  src = tb.open_split(path)
  r = next(src[i] for i in range(len(src)) if src[i]["id"].decode() == "000000_im0_t0")
  assert r["prompt"].decode() == "" and r["text_mask"].sum() > 0 and np.isfinite(r["text_states"]).all()
  assert jnp.asarray(r["vision_states"]).shape == (16, 32)
