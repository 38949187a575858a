"""HPSv3 (Qwen2-VL-7B reward model): fixture parity, processor, converter key sets, M-RoPE,
the Qwen2.5-VL vision variant, the quality-drift reward, bad inputs, the BPE tokenizer."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from safetensors.numpy import load_file, save_file

from wc_jax.convert import hpsv3 as convert_hpsv3
from wc_jax.convert.common import ConversionError, TensorSource
from wc_jax.fixtures import hpsv3 as fixture_hpsv3
from wc_jax.models.qwen2vl import processor as P
from wc_jax.models.qwen2vl import vision as vision_lib
from wc_jax.models.qwen2vl.hpsv3 import HPSv3Config
from wc_jax.models.qwen2vl.language import Qwen2LMConfig, mrope_positions, rope_cos_sin
from wc_jax.rewards import hpsv3 as R


@pytest.fixture(scope="module")
def fx(fixtures_dir):
  return fixtures_dir / "rewards" / "hpsv3"


@pytest.fixture(scope="module")
def model(fx):
  return fixture_hpsv3.load_model(fx, remat_policy="none")


def _jit(scorer):
  """A scorer compiled once (eager calls would re-trace the layer scans at every call)."""
  graphdef, state = nnx.split(scorer)
  fn = jax.jit(lambda st, f: nnx.merge(graphdef, st)(f))
  return lambda frames: fn(state, frames)


@pytest.fixture(scope="module")
def real_id_model(fx, model):
  """The fixture model with its embedding rows placed at the real Qwen2-VL ids (so the
  processor's real ids and the built-in quality-prompt ids can be fed directly)."""
  vocab = np.load(fx / "inputs.npz")["tiny_vocab_real_ids"]
  cfg = model.cfg
  big = cfg.replace(text=cfg.text.replace(vocab_size=int(vocab.max()) + 1), image_token_id=P.IMAGE_PAD_ID,
                    reward_token_id=P.REWARD_ID, pad_token_id=P.PAD_ID)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  emb = np.asarray(params["model"]["embed_tokens"]["embedding"])
  table = np.zeros((big.text.vocab_size, emb.shape[1]), np.float32)
  table[vocab] = emb
  params["model"]["embed_tokens"]["embedding"] = table
  return convert_hpsv3.build_model(big.to_dict(), params)


# ----------------------------------------------------------------------------- parity

def test_fixture_parity_all_outputs(fx):
  results = fixture_hpsv3.check(fx, only={"processor", "model"})
  bad = [(r.name, r.max_abs, r.tol_abs) for r in results if not r.ok]
  assert not bad, bad
  by = {r.name: r for r in results}
  # the README's tolerances: activations 5e-5, logits 1e-5; ids/images exact
  assert by["outputs.rm_logits"].max_abs <= 1e-5
  assert by["model.llm_final_norm_out"].max_abs <= 5e-5
  assert by["processor.input_ids_real"].max_abs == 0 and by["processor.resized_uint8.0"].max_abs == 0
  assert len(results) >= 26


def test_mrope_positions_and_sensitivity(fx, model):
  """HF get_rope_index positions are reproduced exactly; feeding them (instead of HPSv3's
  0..L-1) moves the logits by the amount the reference measured."""
  d = np.load(fx / "inputs.npz")
  cfg = json.loads((fx / "config.json").read_text())
  q = cfg["qwen2vl_config"]
  pos = mrope_positions(d["input_ids"], d["attention_mask"], d["image_grid_thw"], image_token_id=q["image_token_id"],
                        vision_start_token_id=q["vision_start_token_id"])
  np.testing.assert_array_equal(pos, d["qwen2vl_get_rope_index_NOT_USED_by_hpsv3"])
  ids = jnp.asarray(d["input_ids"])
  emb = model.splice(ids, model.visual(jnp.asarray(d["pixel_values"]), d["image_grid_thw"]))
  mask = jnp.asarray(d["attention_mask"])
  want = np.load(fx / "outputs.npz")["rm_logits"]
  ref_delta = cfg["observed_tolerances"]["if_port_used_get_rope_index_positions_rm_logits"]["max_abs"]
  hidden = model.model(inputs_embeds=emb, attention_mask=mask, positions=jnp.asarray(pos)).last_hidden_state
  logits = model.rm_head(hidden[jnp.arange(3), jnp.asarray(d["reward_token_pos"])])
  assert abs(float(np.abs(np.asarray(logits) - want).max()) - ref_delta) < 1e-5
  # [B, L] positions 0..L-1 == positions=None == [3, B, L] with equal rows (plain RoPE)
  plain = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  c0, s0 = rope_cos_sin(None, model.cfg.text, *ids.shape)
  for p in (plain, np.stack([plain] * 3)):
    c, s = rope_cos_sin(jnp.asarray(p), model.cfg.text, *ids.shape)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(c0))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s0))


def test_hidden_states_follow_hf_tuple(fx, model):
  d = np.load(fx / "inputs.npz")
  inter = np.load(fx / "intermediates.npz")
  emb = model.splice(jnp.asarray(d["input_ids"]), model.visual(jnp.asarray(d["pixel_values"]), d["image_grid_thw"]))
  out = model.model(inputs_embeds=emb, attention_mask=jnp.asarray(d["attention_mask"]), output_hidden_states=True)
  hs = np.asarray(out.hidden_states)
  assert hs.shape[0] == model.cfg.text.num_hidden_layers + 1
  np.testing.assert_allclose(hs[0], np.asarray(emb), atol=0)                    # [0] = embeddings
  np.testing.assert_allclose(hs[1], inter["llm_layer0_out"], atol=5e-5)         # [1] = after layer 0
  np.testing.assert_allclose(hs[-1], inter["llm_final_norm_out"], atol=5e-5)    # [-1] = final norm
  np.testing.assert_allclose(np.asarray(out.last_layer_output), inter["llm_layerlast_out"], atol=5e-5)


# ----------------------------------------------------------------------------- processor

@pytest.mark.parametrize("hw,out_hw", [((37, 53), (100, 20)), ((480, 832), (336, 588)), ((5, 7), (28, 28)),
                                       ((64, 64), (64, 30))])
def test_resize_is_bit_exact_with_pillow_bicubic(hw, out_hw):
  img = np.random.default_rng(sum(hw)).integers(0, 256, hw + (3,), dtype=np.uint8)
  want = np.asarray(Image.fromarray(img).resize(out_hw[::-1], Image.BICUBIC))
  got = np.asarray(P.resize_uint8(img[None], *out_hw))[0]
  np.testing.assert_array_equal(got, want)


def test_smart_resize_matches_the_reference_sizes():
  # hpsv3 prepare_batch budget 256*28*28: 480x832 -> 336x588 (252 tokens), 704x1280 -> 308x588, square -> 448x448
  assert P.smart_resize(480, 832) == (336, 588)
  assert P.smart_resize(704, 1280) == (308, 588)
  assert P.smart_resize(1000, 1000) == (448, 448)
  assert P.image_token_count(np.array([[1, 24, 42]]))[0] == 252
  with pytest.raises(ValueError, match="aspect ratio"):
    P.smart_resize(1, 300)
  with pytest.raises(ValueError, match="non-empty"):
    P.smart_resize(0, 10)
  # a message budget below the image processor's 3136 px: its own smart_resize upsizes again
  _, grid, fetched = P.preprocess(np.zeros((1, 30, 30, 3), np.uint8), 784, 784)
  assert fetched.shape == (1, 28, 28, 3) and grid.tolist() == [[1, 4, 4]]


def test_chat_text_and_quality_ids(fx):
  cfg = json.loads((fx / "config.json").read_text())
  assert P.render_text(cfg["prompt"]) == cfg["text_input_rendered"]
  d = np.load(fx / "inputs.npz")
  ids = P.chat_ids(P.QUALITY_PROMPT, 12)
  np.testing.assert_array_equal(ids, d["input_ids_real"][0])
  assert ids.count(P.REWARD_ID) == 1 and ids.count(P.IMAGE_PAD_ID) == 12


def test_chat_ids_with_a_tokenizer_splits_on_special_tokens():
  seen = []

  def tok(text):
    seen.append(text)
    return [len(text)]

  ids = P.chat_ids("", 3, tok)                     # the reference accepts an empty prompt
  assert "Textual prompt - \n\n\n\nPlease provide the overall ratings of this image: " in "".join(seen)
  assert not any(s in t for t in seen for s in P.SPECIAL_TOKENS)
  assert ids[:3] == [P.IM_START_ID, len("system\nYou are a helpful assistant."), P.IM_END_ID]
  assert ids.count(P.IMAGE_PAD_ID) == 3 and ids.count(P.REWARD_ID) == 1


# ----------------------------------------------------------------------------- converter

def _facts(fx):
  return json.loads((fx / "full_model_facts.json").read_text())


def test_converter_key_set_matches_the_full_8b_model(fx):
  facts = _facts(fx)
  cfg = convert_hpsv3.config_from_reference(facts["config_7b"])
  cfg = cfg.replace(text=cfg.text.replace(vocab_size=facts["vocab_after_resize"]))
  want = {k: tuple(v) for k, v in facts["all_keys_shapes"].items()}
  got = convert_hpsv3.expected_torch_shapes(cfg)
  assert len(want) == facts["num_keys"] == 736
  assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
  assert {k: got[k] for k in want} == want
  assert sum(math.prod(s) for s in got.values()) == facts["param_count_total"]
  # every key but lm_head maps to a parameter of the model
  mapped = {k for k, *_ in convert_hpsv3._entries(cfg)}
  assert set(want) - mapped == set(convert_hpsv3.UNUSED_KEYS)
  # and the module built from that config has exactly those parameters (abstract: no memory)
  state = nnx.state(convert_hpsv3.abstract_model(cfg), nnx.Param)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
  assert n_params == facts["param_count_total"] - math.prod(want["lm_head.weight"])


def test_qwen25_vision_key_layout_counts():
  """Qwen2.5-VL-7B vision (RMSNorm, SwiGLU with biases): 676,550,144 parameters
  (= the 7,747,169,280 of the full model without lm_head minus its 7,070,619,136 LM)."""
  v = vision_lib.QWEN25_VL_7B
  cfg = HPSv3Config(text=Qwen2LMConfig(), vision=v)
  shapes = {k: s for k, s in convert_hpsv3.expected_torch_shapes(cfg).items() if k.startswith("visual.")}
  assert "visual.blocks.0.mlp.gate_proj.bias" in shapes and "visual.blocks.0.norm1.bias" not in shapes
  assert sum(math.prod(s) for s in shapes.values()) == 7_747_169_280 - 7_070_619_136
  lm = {k: s for k, s in convert_hpsv3.expected_torch_shapes(cfg).items() if k.startswith("model.")}
  assert sum(math.prod(s) for s in lm.values()) == 7_070_619_136


def _write(tmp_path, tensors, fx):
  save_file(tensors, str(tmp_path / "weights.safetensors"))
  (tmp_path / "config.json").write_text((fx / "config.json").read_text())
  return TensorSource(tmp_path)


def test_converter_named_errors(tmp_path, fx):
  base = load_file(str(fx / "weights.safetensors"))
  config = json.loads((fx / "config.json").read_text())
  t = dict(base)
  del t["model.layers.1.mlp.up_proj.weight"]
  t["visual.blocks.0.attn.extra.weight"] = np.zeros((2, 2), np.float32)
  t["visual.merger.mlp.2.bias"] = np.zeros((7,), np.float32)
  with pytest.raises(ConversionError) as e:
    convert_hpsv3.torch_to_params(_write(tmp_path, t, fx), config)
  msg = str(e.value)
  assert "missing keys (1): ['model.layers.1.mlp.up_proj.weight']" in msg
  assert "unexpected keys (1): ['visual.blocks.0.attn.extra.weight']" in msg
  assert "visual.merger.mlp.2.bias: checkpoint (7,) vs model (64,)" in msg


def test_converter_round_trip(tmp_path, fx, model):
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  _, tensors = convert_hpsv3.params_to_torch(params, model.cfg.to_dict())
  base = load_file(str(fx / "weights.safetensors"))
  assert set(tensors) == set(base)
  for k in base:
    if k != "lm_head.weight":
      np.testing.assert_array_equal(tensors[k], base[k], err_msg=k)
  # bf16 conversion keeps the head in float32 (as the reference does)
  _, p16 = convert_hpsv3.torch_to_params(TensorSource(fx), json.loads((fx / "config.json").read_text()),
                                         dtype="bfloat16")
  assert p16["rm_head"]["layers"]["0"]["kernel"].dtype == np.float32
  assert p16["model"]["layers"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- Qwen2.5-VL vision

def _reference_windows(grid, ws):
  """Window of each merge unit, the way the reference's get_window_index enumerates them:
  the unit grid padded at the bottom/right to whole windows of ws x ws units."""
  t, h, w = grid
  gh, gw = h // 2, w // 2
  nh, nw = (gh + ws - (gh % ws)) // ws, (gw + ws - (gw % ws)) // ws
  idx = np.full((t, nh * ws, nw * ws), -100)
  idx[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
  win = idx.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, ws * ws)
  out = np.zeros(t * gh * gw, int)
  for k, row in enumerate(win):
    out[row[row != -100]] = k
  return out


@pytest.mark.parametrize("grid", [(1, 20, 12), (1, 16, 16), (2, 6, 10)])
def test_window_groups_match_reference_windows(grid):
  cfg = vision_lib.tiny_config(variant="qwen2_5_vl", hidden_act="silu", window_size=56)   # 2x2 units
  seg = vision_lib.segment_ids(np.array([grid]), cfg, windowed=True)[0]
  unit_seg = seg[::4]                      # the 4 patches of a unit share it
  assert np.all(seg.reshape(-1, 4) == unit_seg[:, None])
  ref = _reference_windows(grid, 2)
  same_ours = unit_seg[:, None] == unit_seg[None]
  same_ref = ref[:, None] == ref[None]
  np.testing.assert_array_equal(same_ours, same_ref)


def test_qwen25_window_attention_is_local_and_full_blocks_are_not():
  grid = np.array([[1, 8, 8], [1, 8, 8]])
  pv = jax.random.normal(jax.random.key(0), (64, 1176))
  both = jnp.concatenate([pv, pv.at[63].add(5.0)])     # image 2 = image 1 with a patch of the last window changed
  outs = {}
  for full in ((), (1,)):
    cfg = vision_lib.tiny_config(variant="qwen2_5_vl", hidden_act="silu", window_size=56, fullatt_block_indexes=full,
                                 remat_policy="none")
    y = np.asarray(vision_lib.VisionTransformer(cfg, rngs=nnx.Rngs(1))(both, grid))
    outs[full] = np.abs(y[:16] - y[16:]).max(axis=1)
  # 8x8 patches = 4x4 merge units, windows of 2x2 units: token 0 (window 0) never sees patch 63 (window 3)
  assert outs[()][0] == 0 and outs[()][-1] > 0
  assert outs[(1,)][0] > 0
  # a window covering the whole image is full attention
  cfg_big = vision_lib.tiny_config(variant="qwen2_5_vl", hidden_act="silu", window_size=1000, remat_policy="none")
  t1 = vision_lib.VisionTransformer(cfg_big, rngs=nnx.Rngs(2))
  t2 = vision_lib.VisionTransformer(cfg_big.replace(fullatt_block_indexes=(0, 1)), rngs=nnx.Rngs(2))
  np.testing.assert_allclose(np.asarray(t1(pv, grid[:1])), np.asarray(t2(pv, grid[:1])), atol=1e-5)


# ----------------------------------------------------------------------------- reward + bad inputs

def test_quality_drift_is_worldcompass_formula(fx, real_id_model):
  """Frames 3::4 against the first frame, -mean|mu_k - mu_first|; mu end to end from raw
  uint8 pixels equals the fixture's (image 2: 112x56, kept at the 6272-pixel budget)."""
  d = np.load(fx / "inputs.npz")
  mu_want = np.load(fx / "outputs.npz")["mu"]
  scorer = R.HPSv3Scorer(real_id_model, min_pixels=6272, max_pixels=6272)
  img = d["image_2_uint8"].astype(np.float32) / 255.0          # floats that round back to the same uint8
  rng = np.random.default_rng(3)
  frames = jnp.asarray(np.clip(img[None] + rng.normal(0, 0.05, (9,) + img.shape), 0, 1), jnp.float32)
  first = jnp.asarray(img)
  got = float(R.hpsv3_quality_drift_reward(frames, scorer, first))
  mu = np.asarray(_jit(scorer)(jnp.concatenate([first[None], frames[3::4]])))
  assert mu[0] == pytest.approx(float(mu_want[2]), abs=1e-5)
  assert got == pytest.approx(-np.mean(np.abs(mu[1:] - mu[0])), abs=1e-6)
  assert got < 0
  np.testing.assert_array_equal(np.asarray(P.to_uint8(first)), d["image_2_uint8"])


def test_bad_inputs_raise_clear_errors(real_id_model):
  scorer = R.HPSv3Scorer(real_id_model, min_pixels=3136, max_pixels=3136)
  with pytest.raises(TypeError, match="float in \\[0,1\\] or uint8, got dtype int32"):
    scorer(jnp.zeros((1, 28, 28, 3), jnp.int32))
  with pytest.raises(ValueError, match="empty frames"):
    scorer(jnp.zeros((1, 0, 28, 3), jnp.float32))
  with pytest.raises(ValueError, match="empty frames"):
    scorer(jnp.zeros((0, 28, 28, 3), jnp.float32))
  with pytest.raises(ValueError, match="NaN or inf"):
    scorer(jnp.full((1, 28, 28, 3), jnp.nan))
  with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
    scorer(jnp.zeros((28, 28, 3)))
  # under jit a NaN frame cannot raise: its score is NaN, the others are untouched
  frames = jnp.stack([jnp.full((28, 28, 3), 0.5), jnp.full((28, 28, 3), jnp.nan)])
  s = _jit(scorer)(frames)
  assert np.isfinite(s[0]) and np.isnan(s[1])
  # prompts: another prompt needs a tokenizer; an over-long one is refused by length
  with pytest.raises(ValueError, match="needs tokenize="):
    R.HPSv3Scorer(real_id_model, prompt="")
  with pytest.raises(ValueError, match="needs a tokenizer"):
    P.chat_ids("", 4)
  long = R.HPSv3Scorer(real_id_model, prompt="x" * 40000, tokenize=lambda s: list(range(len(s))),
                       min_pixels=3136, max_pixels=3136)
  with pytest.raises(ValueError, match="more than the model's 32768 positions"):
    long(jnp.zeros((1, 28, 28, 3)))
  # an image token count that does not match the features is named
  with pytest.raises(ValueError, match="image tokens"):
    real_id_model.splice(jnp.asarray([[P.IMAGE_PAD_ID] * 3]), jnp.zeros((4, 64)))
  with pytest.raises(ValueError, match="exactly one <\\|Reward\\|>"):
    real_id_model.reward_positions(np.array([[1, 2, 3]]))


def test_build_scorer_from_config_section():
  scorer = R.build_scorer({"checkpoint": "", "pixels": 3136, "seed": 1, "remat_policy": "none"})
  s = _jit(scorer)(jnp.full((2, 30, 30, 3), 0.25))
  assert s.shape == (2,) and np.all(np.isfinite(s)) and abs(float(s[0] - s[1])) < 1e-6


# ----------------------------------------------------------------------------- tokenizer

def test_bpe_tokenizer_from_tokenizer_json(tmp_path):
  pytest.importorskip("regex")
  byte_chars = R._bytes_to_unicode()
  vocab = {c: i for i, c in enumerate(sorted(byte_chars.values()))}
  merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("Ġw", "o")]
  for a, b in merges:
    vocab[a + b] = len(vocab)
  j = {"model": {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
       "normalizer": {"type": "NFC"},
       "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
           {"type": "Split", "pattern": {"Regex": R._QWEN2_SPLIT}}, {"type": "ByteLevel"}]}}
  (tmp_path / "tokenizer.json").write_text(json.dumps(j))
  tok = R.load_tokenizer(tmp_path)
  assert tok("hello world") == [vocab["hello"], vocab["Ġwo"], vocab["r"], vocab["l"], vocab["d"]]
  assert tok("10") == [vocab["1"], vocab["0"]]             # digits split one by one
  assert tok("é") == tok("e\u0301")                         # NFC
  ids = P.chat_ids("hello", 2, tok)
  assert ids.count(P.IMAGE_PAD_ID) == 2 and P.REWARD_ID in ids
