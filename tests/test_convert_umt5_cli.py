"""python -m wc_jax.convert --from-torch models_t5_umt5-xxl-enc-bf16.pth --kind=umt5 --out=DIR: the
umT5 encoder released as one bare torch file -> a wc_jax folder that load_umt5 / umt5_from_config
read, and back (--orbax DIR --to-torch). The .pth files in tests/fixtures/encoders/umt5_pth were
written by torch.save (see PROVENANCE.md there); torch is not needed to read them (TorchZipSource)."""
import json
import zipfile

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from wc_jax.convert import kinds, registry
from wc_jax.convert.__main__ import main
from wc_jax.convert.common import ConversionError
from wc_jax.convert.encoders import TorchZipSource, load_umt5, load_umt5_tokenizer, umt5_from_config
from wc_jax.models.encoders import umt5 as U

RELEASE = "models_t5_umt5-xxl-enc-bf16.pth"


@pytest.fixture(scope="module")
def fdir(fixtures_dir):
  return fixtures_dir / "encoders" / "umt5"


@pytest.fixture(scope="module")
def pdir(fixtures_dir):
  return fixtures_dir / "encoders" / "umt5_pth"


@pytest.fixture(scope="module")
def weights(fdir):
  return load_file(str(fdir / "weights.safetensors"))


def _bf16(a):
  import ml_dtypes
  return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16)


def _run(capsys, *argv):
  rc = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def test_reads_torch_files_without_torch(pdir, weights):
  """Views, offsets, parameters, int / half / bfloat16 storages and 0-d tensors as torch.save wrote them."""
  src = TorchZipSource(pdir / "views.pth")
  assert src.keys() == ["param", "t", "row", "s", "h", "scalar"]
  base = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.testing.assert_array_equal(src.get("param"), np.arange(12, dtype=np.float32).reshape(4, 3) / 8)
  np.testing.assert_array_equal(src.get("t"), base.T)
  np.testing.assert_array_equal(src.get("row"), base[1])
  assert src.get("s").dtype == np.int64 and src.get("s").tolist() == [2, 3, 4]
  assert src.get("h").dtype == np.float16 and src.get("h").tolist() == [[0, 1, 2], [3, 4, 5]]
  assert src.dtype("scalar") == "bfloat16" and src.shape("scalar") == () and float(src.get("scalar")) == 1.5
  rel = TorchZipSource(pdir / RELEASE)          # the fixture weights as the release stores them: bfloat16
  assert sorted(rel.keys()) == sorted(weights)
  for k, v in weights.items():
    assert rel.dtype(k) == "bfloat16" and rel.shape(k) == v.shape
    np.testing.assert_array_equal(rel.get(k), _bf16(v), err_msg=k)


def test_refuses_foreign_pickles_and_non_torch_files(tmp_path):
  bad = tmp_path / "evil.pth"
  with zipfile.ZipFile(bad, "w") as z:     # data.pkl = os.system("echo")
    z.writestr("evil/data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.")
  with pytest.raises(ConversionError, match=r"refers to os\.system, which a state dict of tensors does not hold"):
    TorchZipSource(bad)
  (tmp_path / "text.pth").write_text("not a checkpoint")
  with pytest.raises(ConversionError, match="is not a torch zip checkpoint.*needs torch to read"):
    TorchZipSource(tmp_path / "text.pth")


def test_cli_converts_the_released_pth_and_exports_back(capsys, pdir, fdir, weights, tmp_path):
  cfg = fdir / "config.json"
  rc, out, err = _run(capsys, "--from-torch", pdir / RELEASE, "--kind=umt5", "--reference-config", cfg,
                      "--out", tmp_path / "umt5")
  assert rc == 0, err
  assert out.strip() == f"converted umt5 checkpoint {pdir / RELEASE} -> {tmp_path / 'umt5'}"
  params, meta = registry.load_params(tmp_path / "umt5")
  assert meta["kind"] == kinds.UMT5 and meta["reference_config"]["model_type"] == "wan_umt5"
  assert meta["model_config"]["param_dtype"] == "float32"        # default: stored as float32
  # export back: the release's keys, shapes and (bfloat16) values
  rc, out, err = _run(capsys, "--orbax", tmp_path / "umt5", "--to-torch", tmp_path / "back")
  assert rc == 0, err
  back = load_file(str(tmp_path / "back" / "models_t5_umt5-xxl-enc.safetensors"))
  assert set(back) == set(weights) and all(back[k].shape == weights[k].shape for k in weights)
  for k, v in weights.items():
    np.testing.assert_array_equal(back[k], _bf16(v).astype(np.float32), err_msg=k)
  # the folder is what load_umt5 and a config's text_encoder section read: the same encoder as the .pth
  ids = np.load(fdir / "inputs.npz")["input_ids"]
  mask = np.load(fdir / "inputs.npz")["attention_mask"]
  with jax.default_matmul_precision("highest"):
    from_pth = np.asarray(load_umt5(pdir / RELEASE, json.loads(cfg.read_text()))(ids, mask))
    from_dir = np.asarray(load_umt5(tmp_path / "umt5")(ids, mask))
  np.testing.assert_array_equal(from_dir, from_pth)
  enc, tok, text_len = umt5_from_config({"kind": "umt5", "checkpoint": str(tmp_path / "umt5"),
                                         "tokenizer": str(fdir / "tokenizer"), "text_len": 16})
  assert enc.cfg.d_model == 32 and enc.cfg.num_layers == 2 and text_len == 16
  # bfloat16 weights give the reference's float32 outputs to bfloat16 accuracy
  want = np.load(fdir / "outputs.npz")["last_hidden_state"]
  assert np.abs(from_dir - want).max() < 0.02 * np.abs(want).max()     # measured 0.022 of 3.12


def test_cli_float32_file_reproduces_the_fixture(capsys, fdir, weights, tmp_path):
  """A bare safetensors file with the release's keys (the fixture's float32 weights): the
  converted folder gives the reference's outputs within the fixture tolerance (1e-4), and
  --dtype bfloat16 stores bfloat16."""
  save_file(weights, str(tmp_path / "umt5-enc.safetensors"))
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "umt5-enc.safetensors", "--kind=umt5",
                    "--reference-config", fdir / "config.json", "--out", tmp_path / "f32")
  assert rc == 0, err
  inputs, want = np.load(fdir / "inputs.npz"), np.load(fdir / "outputs.npz")
  with jax.default_matmul_precision("highest"):
    enc = load_umt5(tmp_path / "f32")
    got = np.asarray(enc(inputs["input_ids"], inputs["attention_mask"]))
    tok = load_umt5_tokenizer(fdir / "tokenizer")
    ctx = np.asarray(U.encode_prompts(enc, tok, json.loads((fdir / "config.json").read_text())["prompts"], 16))
  err = np.abs(got - want["last_hidden_state"]).max()
  assert err <= 1e-4 * max(1.0, np.abs(want["last_hidden_state"]).max()), err
  assert np.abs(ctx - want["dit_context"]).max() <= 1e-4 * np.abs(want["dit_context"]).max()
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "umt5-enc.safetensors", "--kind=umt5", "--dtype=bfloat16",
                    "--reference-config", fdir / "config.json", "--out", tmp_path / "bf16")
  assert rc == 0, err
  params, meta = registry.load_params(tmp_path / "bf16")
  assert meta["model_config"]["param_dtype"] == "bfloat16"
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}


def test_cli_named_errors(capsys, pdir, fdir, weights, fixtures_dir, tmp_path):
  # the released architecture is the default: the tiny file misses every layer past 2 and mis-shapes the rest
  rc, _, err = _run(capsys, "--from-torch", pdir / RELEASE, "--kind=umt5", "--out", tmp_path / "a")
  assert rc == 2 and err.startswith("error: umT5 checkpoint does not match") and "missing keys (220)" in err
  # a key missing from the file
  victim = "blocks.1.pos_embedding.embedding.weight"
  save_file({k: v for k, v in weights.items() if k != victim}, str(tmp_path / "cut.safetensors"))
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "cut.safetensors", "--kind=umt5", "--reference-config",
                    fdir / "config.json", "--out", tmp_path / "b")
  assert rc == 2 and f"missing keys (1): ['{victim}']" in err
  # the wrong file: the Wan VAE's weights (a VAE config.json beside them) / its tensors alone
  vae = fixtures_dir / "lingbot" / "vae" / "weights.safetensors"
  rc, _, err = _run(capsys, "--from-torch", vae, "--kind=umt5", "--out", tmp_path / "c")
  assert rc == 2 and "is not a umT5 one" in err
  save_file(load_file(str(vae)), str(tmp_path / "vae_alone.safetensors"))
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "vae_alone.safetensors", "--kind=umt5", "--out", tmp_path / "d")
  assert rc == 2 and "umT5 checkpoint has no token_embedding.weight" in err
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "junk.pth", "--kind=umt5", "--out", tmp_path / "e")
  assert rc == 2 and "is not a torch zip checkpoint" in err
  # a bare file without --kind: the hint names the kind of the released file name
  rc, _, err = _run(capsys, "--from-torch", pdir / RELEASE, "--out", tmp_path / "f")
  assert rc == 2 and "is a single file" in err and "--kind=umt5" in err
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "nowhere.pth", "--kind=umt5", "--out", tmp_path / "g")
  assert rc == 2 and "no checkpoint at" in err
  rc, _, err = _run(capsys, "--from-torch", pdir / RELEASE, "--kind=umt5", "--reference-config",
                    tmp_path / "none.json", "--out", tmp_path / "h")
  assert rc == 2 and "--reference-config" in err and "no such file" in err
  with pytest.raises(SystemExit) as e:
    main(["--from-torch", str(pdir / RELEASE), "--kind=umt6", "--out", str(tmp_path / "i")])
  assert e.value.code == 2 and "--kind=umt6: expected one of" in capsys.readouterr().err
  assert not [p.name for p in tmp_path.iterdir() if p.name in "abcdefghi"]


def test_cli_bare_wan_vae_file_round_trip(capsys, fixtures_dir, tmp_path):
  """The other bare release file, Wan2.1_VAE.pth, goes the same way (here its tensors as a lone
  safetensors file, the architecture from --reference-config): the export holds the same tensors."""
  vdir = fixtures_dir / "lingbot" / "vae"
  tensors = load_file(str(vdir / "weights.safetensors"))
  save_file(tensors, str(tmp_path / "Wan2.1_VAE.safetensors"))
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "Wan2.1_VAE.safetensors", "--kind=wan_vae",
                    "--reference-config", vdir / "config.json", "--out", tmp_path / "vae")
  assert rc == 0, err
  assert registry.load_params(tmp_path / "vae")[1]["kind"] == kinds.WAN_VAE
  rc, _, err = _run(capsys, "--orbax", tmp_path / "vae", "--to-torch", tmp_path / "back")
  assert rc == 0, err
  back = load_file(str(tmp_path / "back" / "Wan2.1_VAE.safetensors"))
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  rc, _, err = _run(capsys, "--from-torch", tmp_path / "Wan2.1_VAE.safetensors", "--kind=dit", "--out", tmp_path / "x")
  assert rc == 2 and "a bare checkpoint file is read for umt5, wan_vae" in err
