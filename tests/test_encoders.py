"""Conditioning encoders: ByT5 glyph path, SigLIP image path, Qwen2.5-VL text path.

Parity with the reference fixtures (tests/fixtures/encoders, see PROVENANCE.md there), the
converters' key sets against the real checkpoints' names and shapes, and bad inputs.
"""
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DictSource

from wc_jax.convert.common import ConversionError, TensorSource
from wc_jax.convert.encoders import (ByT5KeyError, QwenTextKeyError, SiglipKeyError, byt5, qwen25vl_text,
                                     siglip)
from wc_jax.fixtures import encoders as runner
from wc_jax.models.encoders import byt5_text, conditioning, image_resize, qwen_text
from wc_jax.models.encoders.t5 import relative_position_buckets

SUBS = ("byt5", "siglip", "text_qwen25vl")


@pytest.fixture(scope="module")
def enc_dir(fixtures_dir):
  return fixtures_dir / "encoders"


@pytest.fixture(scope="module")
def byt5_model(enc_dir):
  return runner.load_byt5(enc_dir / "byt5")


@pytest.fixture(scope="module")
def siglip_model(enc_dir):
  return runner.load_siglip(enc_dir / "siglip")


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("sub", SUBS)
def test_fixture_parity(enc_dir, sub):
  from wc_jax.tools.check_fixture import detect
  path = enc_dir / sub
  assert detect(path) == "encoders"
  results = runner.check(path)
  bad = [(r.name, r.max_abs, r.tol_abs) for r in results if not r.ok]
  assert not bad, bad
  # measured on CPU: <= 3.1e-6 (byt5), 3.8e-6 (siglip), 1.9e-6 (qwen); exact tokens/pixels/masks
  assert max(r.max_abs for r in results) < 1e-5
  names = {r.name for r in results}
  want = {"byt5": {"input_ids", "byt5_text_states", "byt5_text_mask", "hidden_states_all"},
          "siglip": {"image0_resized_cropped", "pixel_values0", "vision_states1", "pooler_output1"},
          "text_qwen25vl": {"dit_text_states", "dit_text_mask", "image_template_prompt_embeds",
                            "rendered_video_template", "crop_start_video"}}[sub]
  assert want <= names


def test_check_fixture_rejects_other_folders(tmp_path):
  assert not runner.matches(tmp_path)
  for f in runner.FILES:
    (tmp_path / f).write_text("{}")
  assert not runner.matches(tmp_path)      # no encoder kind in config.json


# ----------------------------------------------------------------------------- converters

REAL = (("qwen25vl_7b", "text_config", "language_model", qwen25vl_text, {"prefix": ""}),
        ("byt5_small_encoder", "config", "encoder_before_vocab_resize", byt5, {}),
        ("siglip_so400m_patch14_384", "config", "model", siglip, {}))


@pytest.mark.parametrize("name,cfg_key,info_key,conv,kw", REAL, ids=[r[0] for r in REAL])
def test_expected_keys_match_real_checkpoints(enc_dir, name, cfg_key, info_key, conv, kw):
  real = json.loads((enc_dir / "real_configs.json").read_text())[name]
  info = real[info_key]
  expected = conv.expected_keys(real[cfg_key], **kw)
  assert len(expected) == info["n_tensors"]
  assert sum(int(np.prod(s)) for s in expected.values()) == info["params"]
  for k, shape in {**info["keys_sample"], **info["keys_last"]}.items():
    assert expected[k] == tuple(shape), k


def test_qwen_expected_keys_checkpoint_prefix(enc_dir):
  real = json.loads((enc_dir / "real_configs.json").read_text())["qwen25vl_7b"]
  keys = qwen25vl_text.expected_keys(real["text_config"])
  assert "model.layers.27.mlp.down_proj.weight" in keys and keys["model.embed_tokens.weight"] == (152064, 3584)


def _tensors(path):
  from safetensors.numpy import load_file
  return load_file(str(path / "weights.safetensors"))


@pytest.mark.parametrize("sub", SUBS)
def test_converter_round_trip(enc_dir, sub):
  path = enc_dir / sub
  cfg = json.loads((path / "config.json").read_text())
  tensors = _tensors(path)
  if sub == "byt5":
    mc, params = byt5.torch_to_params(TensorSource(path / "weights.safetensors"), cfg["tiny_t5_config"])
    _, back = byt5.params_to_torch(params, mc)
  elif sub == "siglip":
    mc, params = siglip.torch_to_params(TensorSource(path / "weights.safetensors"), cfg["tiny_vision_config"])
    _, back = siglip.params_to_torch(params, mc)
  else:
    mc, params = qwen25vl_text.torch_to_params(TensorSource(path / "weights.safetensors"), cfg["tiny_text_config"],
                                               max_length=64)
    _, back = qwen25vl_text.params_to_torch(params, mc)
    kept = mc["lm"]["num_hidden_layers"]
    assert kept == cfg["tiny_text_config"]["num_hidden_layers"] - 2     # hidden_states[-3]: 2 layers never run
    tensors = {k: v for k, v in tensors.items()
               if not (m := re.match(r"model\.layers\.(\d+)\.", k)) or int(m.group(1)) < kept}
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_byt5_converter_accepts_glyph_and_hf_layouts(enc_dir):
  path = enc_dir / "byt5"
  cfg = json.loads((path / "config.json").read_text())["tiny_t5_config"]
  t = _tensors(path)
  _, ref = byt5.torch_to_params(DictSource(t), cfg)
  glyph = {"module.text_tower.encoder." + k: v for k, v in t.items()}
  _, p1 = byt5.torch_to_params(DictSource(glyph), cfg)
  hf = {("shared.weight" if k == "embed_tokens.weight" else "encoder." + k): v for k, v in t.items()}
  hf["decoder.final_layer_norm.weight"] = t["final_layer_norm.weight"]
  hf["lm_head.weight"] = t["embed_tokens.weight"]
  _, p2 = byt5.torch_to_params(DictSource(hf), cfg)
  for p in (p1, p2):
    np.testing.assert_array_equal(p["blocks"]["q"]["kernel"], ref["blocks"]["q"]["kernel"])
    np.testing.assert_array_equal(p["embed_tokens"], ref["embed_tokens"])


@pytest.mark.parametrize("sub,conv,err", [("byt5", byt5, ByT5KeyError), ("siglip", siglip, SiglipKeyError),
                                          ("text_qwen25vl", qwen25vl_text, QwenTextKeyError)])
def test_converter_named_errors(enc_dir, sub, conv, err):
  path = enc_dir / sub
  cfg = json.loads((path / "config.json").read_text())
  cfg = cfg.get("tiny_t5_config") or cfg.get("tiny_vision_config") or cfg["tiny_text_config"]
  t = _tensors(path)
  victim = sorted(k for k in t if ".1." in k and k.endswith("weight"))[0]
  missing = {k: v for k, v in t.items() if k != victim}
  with pytest.raises(err, match=re.escape(victim)) as e:
    conv.torch_to_params(DictSource(missing), cfg)
  assert "missing keys" in str(e.value) and isinstance(e.value, ConversionError)
  bad = dict(t)
  bad[victim] = np.zeros(t[victim].shape[:-1] + (t[victim].shape[-1] + 1,), np.float32)
  with pytest.raises(err, match="shape mismatches"):
    conv.torch_to_params(DictSource(bad), cfg)
  extra = dict(t, **{"something.else.weight": np.zeros(3, np.float32)})
  with pytest.raises(err, match="unexpected keys.*something.else.weight"):
    conv.torch_to_params(DictSource(extra), cfg)


def test_siglip_converter_ignores_text_tower_and_handles_no_head(enc_dir):
  path = enc_dir / "siglip"
  cfg = json.loads((path / "config.json").read_text())["tiny_vision_config"]
  t = _tensors(path)
  full = dict(t, **{"text_model.embeddings.token_embedding.weight": np.zeros((4, 2), np.float32),
                    "logit_scale": np.zeros((1,), np.float32)})
  mc, _ = siglip.torch_to_params(DictSource(full), cfg)
  assert mc["vision_use_head"]
  mc, params = siglip.torch_to_params(DictSource({k: v for k, v in t.items() if ".head." not in k}), cfg)
  assert not mc["vision_use_head"] and "head" not in params


# ----------------------------------------------------------------------------- ByT5 glyph rule / tokens

def test_glyph_rule():
  assert byt5_text.extract_glyph_texts('Sign "A" and “B” then "A" again') == ["A", "B"]
  assert byt5_text.extract_glyph_texts('one "x"') == ["x"]
  assert byt5_text.extract_glyph_texts('empty "" quotes') == [""]          # kept, as the reference
  assert byt5_text.extract_glyph_texts("single 'quotes' only") == []
  assert byt5_text.extract_glyph_texts('unclosed "quote') == []
  assert byt5_text.format_glyph_texts(["HELLO", "5th"]) == 'Text "HELLO". Text "5th". '
  with pytest.raises(TypeError, match="prompt must be a str"):
    byt5_text.extract_glyph_texts(None)


def test_byt5_tokens_bytes_eos_pad_and_truncation():
  ids, mask = byt5_text.byt5_tokenize("é</s>a", max_length=8)
  # é is 2 utf-8 bytes (0xC3 0xA9) + 3; the literal </s> is one special id; then a, </s>, pad
  assert ids.tolist() == [0xC3 + 3, 0xA9 + 3, 1, ord("a") + 3, 1, 0, 0, 0]
  assert mask.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
  long = "x" * 300
  ids, mask = byt5_text.byt5_tokenize(long)            # HF truncation: 255 bytes + </s>
  assert ids.shape == (256,) and mask.all() and ids[-1] == 1 and (ids[:-1] == ord("x") + 3).all()
  ids, _ = byt5_text.byt5_tokenize("<color-3>", special_tokens={"<color-3>": 387})
  assert ids[:2].tolist() == [387, 1]


def test_glyph_encoding_empty_and_long_prompts(byt5_model):
  states, mask = conditioning.encode_glyph_prompts(byt5_model, ["", "no quotes here"], cfg=True)
  assert states.shape == (4, 256, byt5_model.cfg.d_model) and jnp.issubdtype(mask.dtype, jnp.integer)
  assert float(jnp.abs(states).max()) == 0.0 and int(mask.sum()) == 0
  prompt = 'A banner "' + "W" * 400 + '"'
  states, mask = conditioning.encode_glyph_prompts(byt5_model, [prompt], cfg=False)
  assert int(mask.sum()) == 256 and float(jnp.abs(states).max()) > 0     # truncated to the limit, like HF
  with pytest.raises(ValueError, match="no prompts"):
    conditioning.encode_glyph_prompts(byt5_model, [])
  with pytest.raises(TypeError, match="prompts must be strings"):
    conditioning.encode_glyph_prompts(byt5_model, [3])


def test_t5_buckets_follow_t5_rule():
  b = relative_position_buckets(1, 300, 32, 128)[0]
  assert b[0] == 0 and b[1] == 17 and b[7] == 23 and b[8] == 24     # exact up to 8, then log-spaced
  assert b[20] == 26 and b[50] == 29 and b[100] == 31 and b[299] == 31
  back = relative_position_buckets(300, 1, 32, 128)[:, 0]
  assert back[5] == 5 and back[299] == 15


# ----------------------------------------------------------------------------- SigLIP image path

def test_buckets_and_resize_rules():
  assert image_resize.closest_bucket(100, 150, 128, 16) == (96, 144)
  assert image_resize.closest_bucket(130, 96, 128, 16) == (144, 112)
  assert image_resize.closest_bucket(480, 832) == (480, 832)          # 480p: base 640, stride 16
  assert image_resize.closest_bucket(720, 1280) == (480, 848)
  same = np.random.default_rng(0).integers(0, 256, (96, 144, 3), dtype=np.uint8)
  assert image_resize.resize_and_center_crop(same, 96, 144) is same        # already the bucket size
  grey = np.full((40, 60, 3), 77, np.uint8)
  assert (image_resize.pil_resize(grey, 23, 91, "lanczos") == 77).all()
  assert (image_resize.pil_resize(grey, 56, 56, "bicubic") == 77).all()


@pytest.mark.parametrize("image,msg", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.zeros((10, 10, 4), np.uint8), r"\[H, W, 3\]"),
    (np.zeros((10, 10), np.uint8), r"\[H, W, 3\]"),
])
def test_bad_images_are_rejected(siglip_model, image, msg):
  with pytest.raises(ValueError, match=msg):
    conditioning.encode_reference_image(siglip_model, image, base_size=128)


def test_vision_states_cfg_and_dtype(siglip_model, enc_dir):
  inp = np.load(enc_dir / "siglip" / "inputs.npz")
  vs = conditioning.encode_reference_image(siglip_model, inp["image0"][None], base_size=128, cfg=False,
                                           dtype=jnp.bfloat16)
  assert vs.shape == (1, 16, 32) and vs.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="pixels must be"):
    siglip_model(jnp.zeros((1, 28, 28, 3)))
  assert conditioning.no_image_vision_states(2, 16, 32).shape == (4, 16, 32)


# ----------------------------------------------------------------------------- Qwen text path

def _toy_tokenize(text):
  """Words/newlines -> ids: 'user' 872, '\\n' 198, others hashed below 1000 (not Qwen's BPE)."""
  ids = []
  for w in re.findall(r"\n|[^\s]+| +", text):
    ids.append({"user": 872, "\n": 198}.get(w, 300 + sum(map(ord, w)) % 500))
  return ids


def test_template_and_crop_start(enc_dir):
  assert qwen_text.render_prompt("") == qwen_text.render_prompt(" ")             # "" -> " "
  r = qwen_text.render_prompt("a cat", "image")
  assert r.startswith("<|im_start|>system\nYou are a helpful assistant. Describe the image")
  assert r.endswith("<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="data_type"):
    qwen_text.render_prompt("x", "audio")
  ids = conditioning.template_token_ids("a cat", _toy_tokenize)
  assert ids[0] == qwen_text.IM_START_ID and ids[-5:-3] == [qwen_text.IM_END_ID, 198]
  assert ids[-3] == qwen_text.IM_START_ID
  crop = conditioning.crop_start_for(_toy_tokenize)
  assert ids[crop - 3:crop] == list(qwen_text.USER_HEADER_IDS)
  inp = np.load(enc_dir / "text_qwen25vl" / "inputs.npz")
  assert qwen_text.crop_start_of(inp["input_ids_qwen"][1]) == qwen_text.CROP_START["video"] == 108
  assert qwen_text.crop_start_of(inp["image_template_input_ids_qwen"][1]) == qwen_text.CROP_START["image"] == 74
  with pytest.raises(ValueError, match="im_start"):
    qwen_text.crop_start_of([1, 2, 3])


def test_prompt_padding_truncation_and_limit():
  ids, mask, crop = conditioning.tokenize_prompts(["a cat", ""], _toy_tokenize, max_length=16)
  assert ids.shape == mask.shape == (2, 16 + crop)
  n = int(mask[0].sum())
  assert (ids[0, n:] == qwen_text.PAD_ID).all() and mask[0, :n].all()
  assert ids[0, n - 3] == qwen_text.IM_START_ID            # the template tail is kept
  long = " ".join(["word"] * 40)
  ids, mask, _ = conditioning.tokenize_prompts([long], _toy_tokenize, max_length=16)
  assert mask.all() and qwen_text.IM_END_ID not in ids[0, crop:].tolist()     # cut at the limit, tail lost
  with pytest.raises(ValueError, match="the limit is 16"):
    conditioning.tokenize_prompts([long], _toy_tokenize, max_length=16, on_overflow="error")
  with pytest.raises(ValueError, match="no prompts"):
    conditioning.tokenize_prompts([], _toy_tokenize)


def test_text_encoder_checks_inputs(enc_dir):
  model = runner.load_text(enc_dir / "text_qwen25vl")
  assert model.cfg.lm.num_hidden_layers == 1 and model.cfg.sequence_length == 64 + 108
  with pytest.raises(ValueError, match="attention_mask"):
    model(jnp.zeros((1, 172), jnp.int32), None)
  with pytest.raises(ValueError, match="nothing after crop_start"):
    model(jnp.zeros((1, 100), jnp.int32), jnp.ones((1, 100), jnp.int32))
  with pytest.raises(ValueError, match=r"gives crop_start \d+ for the video template but the text encoder was "
                                      r"built with 108"):
    conditioning.encode_text_prompts(model, ["a"], _toy_tokenize)


def test_text_prompts_end_to_end(enc_dir, byt5_model, siglip_model):
  """prompts -> template ids -> padded/cropped CFG states, through `encode_text_prompts`, with a
  tokenizer replaying the fixture's real Qwen2.5 ids for each text segment between special tokens."""
  path = enc_dir / "text_qwen25vl"
  cfg = json.loads((path / "config.json").read_text())
  inp, out = np.load(path / "inputs.npz"), np.load(path / "outputs.npz")
  specials = {qwen_text.IM_START_ID, qwen_text.IM_END_ID, qwen_text.PAD_ID}
  table = {}
  for prompt, ids, mask in [*zip(cfg["prompts"], inp["input_ids_qwen"], inp["attention_mask"]),
                            (cfg["negative_prompt"], inp["neg_input_ids_qwen"][0], inp["neg_attention_mask"][0])]:
    text = qwen_text.render_prompt(prompt)
    parts = [p for i, p in enumerate(re.split(r"(<\|im_start\|>|<\|im_end\|>)", text)) if i % 2 == 0 and p]
    runs, cur = [], []
    for t in ids[:int(mask.sum())].tolist():
      if t in specials:
        if cur:
          runs.append(cur)
        cur = []
      else:
        cur.append(t)
    runs.append(cur)
    runs = [r for r in runs if r]
    assert len(parts) == len(runs)
    table.update(zip(parts, runs))

  def tokenize(text):
    if text in table:
      return table[text]
    assert text.startswith("user\n")     # only crop_start's "a photo of a cat" is not in the fixture
    return [872, 198, 64]

  model = runner.load_text(path)
  compact = {int(v): i for i, v in enumerate(inp["vocab_map"])}
  remap = lambda ids: jnp.asarray(np.vectorize(lambda t: compact[int(t)])(np.asarray(ids)))

  class Compact:    # the tiny model reads compact ids (row i = real id vocab_map[i])
    cfg = model.cfg

    def encode_cfg(self, ids, mask, neg_ids, neg_mask):
      return model.encode_cfg(remap(ids), mask, remap(neg_ids), neg_mask)

  states, mask = conditioning.encode_text_prompts(Compact(), cfg["prompts"], tokenize, negative_prompt="")
  np.testing.assert_array_equal(np.asarray(mask), out["dit_text_mask"])
  assert np.abs(np.asarray(states) - out["dit_text_states"]).max() < 1e-4
  cond = conditioning.encode_conditioning(cfg["prompts"][:2], None, text_encoder=Compact(), tokenize=tokenize,
                                          byt5_encoder=byt5_model, siglip=siglip_model)
  assert {k: v.shape for k, v in cond.items()} == {
      "text_states": (4, 64, 64), "encoder_attention_mask": (4, 64), "byt5_text_states": (4, 256, 32),
      "byt5_text_mask": (4, 256), "vision_states": (4, 16, 32)}
  assert float(jnp.abs(cond["vision_states"]).max()) == 0.0          # t2v: zeros, as the reference
  want = np.concatenate([out["dit_text_states"][:2], out["dit_text_states"][3:5]])
  assert np.abs(np.asarray(cond["text_states"]) - want).max() < 1e-4
  assert int(cond["byt5_text_mask"][3].sum()) == len('Text "OPEN 24H". ') + 1
  assert int(cond["byt5_text_mask"][:3].sum()) == 0


def test_load_encoder_from_reference_and_orbax_folders(enc_dir, tmp_path):
  import shutil
  from wc_jax.convert.common import save_orbax
  from wc_jax.convert.encoders import load_encoder
  path = enc_dir / "byt5"
  cfg = json.loads((path / "config.json").read_text())["tiny_t5_config"]
  ref = tmp_path / "byt5-ref"
  ref.mkdir()
  (ref / "config.json").write_text(json.dumps(cfg))
  shutil.copy(path / "weights.safetensors", ref / "byt5_model.safetensors")
  inp, out = np.load(path / "inputs.npz"), np.load(path / "outputs.npz")
  m = load_encoder("byt5", ref)
  got = m(jnp.asarray(inp["input_ids"]), jnp.asarray(inp["attention_mask"]))
  assert np.abs(np.asarray(got) - out["encoder_last_hidden_state"]).max() < 1e-4
  mc, params = byt5.torch_to_params(TensorSource(ref), cfg)
  save_orbax(params, tmp_path / "byt5-orbax", {"kind": "byt5", "model_config": mc, "reference_config": cfg})
  m2 = load_encoder("byt5", tmp_path / "byt5-orbax")
  np.testing.assert_array_equal(np.asarray(m2.blocks.wo.kernel[...]), np.asarray(m.blocks.wo.kernel[...]))
  with pytest.raises(ConversionError, match="not a 'siglip'"):
    load_encoder("siglip", ref)
  with pytest.raises(ConversionError, match="not a 'siglip' one"):
    load_encoder("siglip", tmp_path / "byt5-orbax")
