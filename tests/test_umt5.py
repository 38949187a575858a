"""umT5 text encoder of LingBot-World: parity with the reference's t5.py, converter, tokenizer.

The fixture (tests/fixtures/encoders/umt5, see PROVENANCE.md there) is a run of Robbyant/lingbot-world's
own `wan/modules/t5.py` + `tokenizers.py` at a tiny random config; `real_keys.json` is the key set of
the released umT5-XXL encoder (names and shapes, built on torch's meta device, no weights).
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import DictSource, load_config
from wc_jax.convert import kinds, registry
from wc_jax.convert.common import ConversionError, TensorSource
from wc_jax.convert.encoders import (UMT5KeyError, convert_umt5, load_umt5, load_umt5_tokenizer, umt5,
                                     umt5_from_config)
from wc_jax.fixtures import encoders as runner
from wc_jax.models.encoders import umt5 as U


@pytest.fixture(scope="module")
def fdir(fixtures_dir):
  return fixtures_dir / "encoders" / "umt5"


@pytest.fixture(scope="module")
def fcfg(fdir):
  return json.loads((fdir / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model(fdir):
  return runner.load_umt5(fdir)


@pytest.fixture(scope="module")
def tokenizer(fdir):
  pytest.importorskip("tokenizers", reason="the umT5 tokenizer.json needs the `tokenizers` package")
  pytest.importorskip("ftfy", reason="the reference's prompt cleaning needs ftfy")
  return load_umt5_tokenizer(fdir / "tokenizer")


def _tensors(fdir):
  from safetensors.numpy import load_file
  return load_file(str(fdir / "weights.safetensors"))


# ----------------------------------------------------------------------------- parity

def test_fixture_parity(fdir, tokenizer):
  from wc_jax.tools.check_fixture import detect
  assert detect(fdir) == "encoders"
  results = runner.check(fdir)
  bad = [(r.name, r.max_abs, r.tol_abs) for r in results if not r.ok]
  assert not bad, bad
  # measured on CPU: <= 1.6e-6 (states up to ~3.1); strings, ids, masks, lengths exact
  assert max(r.max_abs for r in results) < 1e-5
  assert {"cleaned_prompts", "input_ids", "attention_mask", "embeddings", "block_output0", "last_hidden_state",
          "long_last_hidden_state", "long_block_outputs", "seq_lens", "dit_context"} <= {r.name for r in results}


def test_every_layer_owns_its_position_bias(fdir, fcfg, model):
  """umT5 (shared_pos=False): one table per layer, none at the top; sharing layer 0's table changes the output."""
  t = _tensors(fdir)
  assert "pos_embedding.embedding.weight" not in t
  n = fcfg["reference_args"]["encoder_layers"]
  assert all(f"blocks.{i}.pos_embedding.embedding.weight" in t for i in range(n))
  assert model.cfg.per_layer_position_bias and not hasattr(model, "relative_attention_bias")
  inp = np.load(fdir / "inputs.npz")
  want = np.load(fdir / "outputs.npz")["long_last_hidden_state"]
  mc, params = umt5.torch_to_params(TensorSource(fdir / "weights.safetensors"), fcfg)
  shared = jax.tree.map(np.array, params)
  shared["blocks"]["relative_attention_bias"][1:] = shared["blocks"]["relative_attention_bias"][0]
  m2 = umt5.build_model(mc, shared)
  with jax.default_matmul_precision("highest"):
    got = m2(jnp.asarray(inp["long_input_ids"]), jnp.asarray(inp["long_attention_mask"]))
  assert float(np.abs(np.asarray(got) - want).max()) > 1e-3


def test_padding_does_not_change_valid_rows(model, fdir):
  """Masked keys get no weight: a prompt's states do not depend on the padded length (and the
  encoder alone matches the reference without the tokenizer packages)."""
  inp, out = np.load(fdir / "inputs.npz"), np.load(fdir / "outputs.npz")
  ids, mask = inp["input_ids"][:1], inp["attention_mask"][:1]
  n = int(mask.sum())
  with jax.default_matmul_precision("highest"):
    short = model(jnp.asarray(ids[:, :n]), jnp.asarray(mask[:, :n]))
    full = model(jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(full), out["last_hidden_state"][:1], atol=1e-5)
  np.testing.assert_allclose(np.asarray(full)[:, :n], np.asarray(short), atol=2e-6)


def test_sharded_on_a_mesh(fdir, fcfg):
  """Loaded onto a data x fsdp x tensor mesh (weights placed by their logical axes), same states."""
  from flax import nnx

  from wc_jax import sharding
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, context=1, tensor=2))
  m = load_umt5(fdir / "weights.safetensors", fcfg, mesh=mesh)
  assert m.blocks.q.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  inp, out = np.load(fdir / "inputs.npz"), np.load(fdir / "outputs.npz")
  with sharding.use_mesh(mesh), jax.default_matmul_precision("highest"):
    y = nnx.jit(lambda mm, i, k: mm(i, k))(m, jnp.asarray(inp["input_ids"][:4]),
                                           jnp.asarray(inp["attention_mask"][:4]))
  np.testing.assert_allclose(np.asarray(y), out["last_hidden_state"][:4], atol=1e-5)


# ----------------------------------------------------------------------------- tokenizer and DiT context

def test_tokenizer_backends_match_reference_ids(fdir, fcfg, tokenizer):
  inp = np.load(fdir / "inputs.npz")
  ids, mask = tokenizer(fcfg["prompts"], fcfg["text_len"])
  np.testing.assert_array_equal(ids, inp["input_ids"])
  np.testing.assert_array_equal(mask, inp["attention_mask"])
  pytest.importorskip("sentencepiece", reason="the spiece.model fallback needs sentencepiece")
  sp = load_umt5_tokenizer(fdir / "tokenizer" / "spiece.model")
  ids2, mask2 = sp(fcfg["prompts"], fcfg["text_len"])
  np.testing.assert_array_equal(ids2, inp["input_ids"])
  np.testing.assert_array_equal(mask2, inp["attention_mask"])


def test_cleaning_empty_and_long_prompts(fcfg, tokenizer):
  """As the reference: ftfy (full-width commas -> ','), HTML unescape, whitespace collapse;
  "" -> one `</s>`; a long prompt keeps text_len - 1 pieces and ends with `</s>` (no padding)."""
  assert U.clean_prompt("  a \n\t b &amp;amp; c ") == "a b & c"
  assert U.clean_prompt("色调艳丽，过曝") == "色调艳丽,过曝"
  ids, mask = tokenizer(["", fcfg["prompts"][2]], 16)
  assert ids[0].tolist() == [U.EOS_ID] + [U.PAD_ID] * 15 and mask[0].tolist() == [1] + [0] * 15
  assert mask[1].all() and ids[1, -1] == U.EOS_ID
  full, _ = tokenizer([fcfg["prompts"][2]], 64)
  assert int((full != U.PAD_ID).sum()) > 16                 # it really was cut
  np.testing.assert_array_equal(ids[1, :15], full[0, :15])   # the first 15 pieces kept
  with pytest.raises(TypeError, match="prompt 0 is int"):
    tokenizer([3], 16)
  with pytest.raises(ValueError, match="text_len"):
    tokenizer(["a"], 0)


def test_encode_prompts_is_what_the_dit_reads(model, tokenizer, fdir, fcfg):
  out = np.load(fdir / "outputs.npz")
  with jax.default_matmul_precision("highest"):
    ctx = np.asarray(U.encode_prompts(model, tokenizer, fcfg["prompts"], fcfg["text_len"]))
    trimmed = U.trimmed_states(model, *tokenizer(fcfg["prompts"], fcfg["text_len"]))
  np.testing.assert_allclose(ctx, out["dit_context"], atol=1e-5)
  for i, n in enumerate(out["seq_lens"]):
    assert not ctx[i, n:].any()                      # zeros past the prompt, as the DiT pads
    np.testing.assert_allclose(np.asarray(trimmed[i]), ctx[i, :n], atol=1e-6)
  # a 512-row context (the release's text_len) equals the 16-row one padded with zeros
  with jax.default_matmul_precision("highest"):
    long = np.asarray(U.encode_prompts(model, tokenizer, fcfg["prompts"][:1], 40))
  np.testing.assert_allclose(long[:, :16], ctx[:1], atol=2e-6)
  assert not long[:, 16:].any()


# ----------------------------------------------------------------------------- converter

def test_converter_key_set_full_size(fdir):
  """The converter's key set == the released encoder's (242 keys, 5.68 B parameters)."""
  real = json.loads((fdir / "real_keys.json").read_text())
  want = {k: tuple(v) for k, v in real["keys"].items()}
  got = umt5.expected_keys()                   # None: umT5-XXL
  assert got == want
  assert sum(int(np.prod(s)) for s in got.values()) == real["num_params"] == 5_680_910_336
  assert got == umt5.expected_keys(real["reference_args"])
  # the Flax module at full size (abstract) holds exactly those parameters
  from flax import nnx
  cfg = umt5.model_config(None)
  assert cfg.per_layer_position_bias and cfg.inner_dim == 4096 and cfg.d_kv == 64
  abstract = nnx.eval_shape(lambda: U.UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n == real["num_params"]


def test_converter_round_trip_and_registry(fdir, fcfg, model, tmp_path):
  t = _tensors(fdir)
  mc, params = umt5.torch_to_params(TensorSource(fdir / "weights.safetensors"), fcfg)
  ref_cfg, back = umt5.params_to_torch(params, mc)
  assert set(back) == set(t)
  for k, v in t.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  assert registry.converter(kinds.UMT5) is umt5 and registry.converter_for(ref_cfg) is umt5
  from wc_jax.convert.common import save_torch_safetensors
  save_torch_safetensors(back, tmp_path / "ref", ref_cfg, filename=umt5.TORCH_FILENAME)
  m2 = registry.load_model(kinds.UMT5, tmp_path / "ref")
  ids = jnp.asarray(np.load(fdir / "inputs.npz")["input_ids"])
  with jax.default_matmul_precision("highest"):
    np.testing.assert_array_equal(np.asarray(m2(ids)), np.asarray(model(ids)))
  m3 = load_umt5(fdir / "weights.safetensors", fcfg, dtype="bfloat16")   # compute dtype override
  assert m3.cfg.dtype == "bfloat16" and m3.cfg.param_dtype == "float32"
  # the release's bare file -> a wc_jax folder -> load_model / export, same tensors
  convert_umt5(fdir / "weights.safetensors", tmp_path / "orbax", fcfg)
  m4 = registry.load_model(kinds.UMT5, tmp_path / "orbax")
  np.testing.assert_array_equal(np.asarray(m4.blocks.relative_attention_bias[...]),
                                np.asarray(model.blocks.relative_attention_bias[...]))
  registry.orbax_to_torch(tmp_path / "orbax", tmp_path / "export")
  from safetensors.numpy import load_file
  exported = load_file(str(tmp_path / "export" / umt5.TORCH_FILENAME))
  assert set(exported) == set(t) and all(np.array_equal(exported[k], t[k]) for k in t)


def test_converter_named_errors(fdir, fcfg):
  t = _tensors(fdir)
  victim = "blocks.1.pos_embedding.embedding.weight"
  with pytest.raises(UMT5KeyError, match=re.escape(victim)) as e:
    umt5.torch_to_params(DictSource({k: v for k, v in t.items() if k != victim}), fcfg)
  assert "missing keys (1)" in str(e.value) and isinstance(e.value, ConversionError)
  # a shared-position-bias (T5) layout is named as unexpected, not silently used
  shared = dict(t, **{"pos_embedding.embedding.weight": t["blocks.0.pos_embedding.embedding.weight"]})
  with pytest.raises(UMT5KeyError, match=r"unexpected keys \(1\).*'pos_embedding.embedding.weight'"):
    umt5.torch_to_params(DictSource(shared), fcfg)
  bad = dict(t, **{"blocks.0.ffn.fc1.weight": np.zeros((65, 32), np.float32)})
  with pytest.raises(UMT5KeyError, match=r"shape mismatches.*blocks.0.ffn.fc1.weight: checkpoint \(65, 32\)"):
    umt5.torch_to_params(DictSource(bad), fcfg)
  with pytest.raises(UMT5KeyError, match="no token_embedding.weight"):
    umt5.torch_to_params(DictSource({k: v for k, v in t.items() if k != "token_embedding.weight"}), fcfg)
  with pytest.raises(UMT5KeyError, match="dim_attn 50 is not a multiple of num_heads 4"):
    umt5.model_config(dict(fcfg["reference_args"], dim_attn=50))
  # the full-size default against the tiny file: every layer-shape mismatch reported at once
  with pytest.raises(UMT5KeyError, match=r"missing keys \(220\)"):
    umt5.torch_to_params(DictSource(t), None)


def test_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json or spiece.model"):
    load_umt5_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- configs

def test_config_sections(fdir, tokenizer):
  tiny, big = load_config("lingbot_tiny"), load_config("lingbot_a14b")
  for c in (tiny, big):
    assert c.text_encoder.kind == kinds.UMT5 and c.text_encoder.text_len == c.model.text_len
    assert c.text_encoder.arch.dim == c.model.text_dim
  assert big.text_encoder.text_len == 512
  assert umt5.expected_keys(big.text_encoder.arch.to_dict()) == umt5.expected_keys()
  section = tiny.text_encoder
  section.checkpoint = str(fdir / "weights.safetensors")    # the config's path is relative to the repo root
  section.tokenizer = str(fdir / "tokenizer")
  enc, tok, text_len = umt5_from_config(section)
  ctx = U.encode_prompts(enc, tok, ["a camera walks forward", section.negative_prompt], text_len)
  assert ctx.shape == (2, tiny.model.text_len, tiny.model.text_dim)
  with pytest.raises(ConversionError, match=r"text_encoder.checkpoint and text_encoder.tokenizer"):
    umt5_from_config(big.text_encoder)
