"""Export of a post-trained DiT to the PyTorch reference layout (python -m wc_jax.export):
torch -> Orbax -> RL checkpoint -> torch is bit-exact on the DiT fixture weights, with the
reference's key set; bad inputs get one line and leave nothing behind."""
import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import load_config
from wc_jax import export
from wc_jax.convert import __main__ as convert_cli
from wc_jax.convert import kinds, load_model
from wc_jax.convert.common import save_orbax
from wc_jax.models.worldplay.model import functional


class _Data:
  def get_state(self):
    return {"index": 0}


def rl_checkpoint_from_torch(torch_dir, workdir, step: int = 7, cfg=None, fsdp: int = 0, model=None):
  """An RL run's checkpoint (a TrainState: params, optimizer, policy and checkpoint EMAs) whose
  three weight copies are the DiT at `torch_dir`, saved by the trainer's own Checkpointer.
  fsdp=n: every leaf with an axis divisible by n is sharded over n devices along its largest
  such axis (as an fsdp mesh places the weights), so n processes' worth of pieces are written."""
  from wc_jax.rl import checkpoint as ckpt_lib
  from wc_jax.rl import programs
  from wc_jax.rl.update import init_state
  cfg = cfg or load_config("tiny")
  cfg.checkpoint.async_save = False
  model = model if model is not None else load_model(kinds.DIT, torch_dir)
  _, params = functional(model)
  state = init_state(params, programs.optimizer(cfg, params), cfg.seed)
  # tell the copies apart: raw = weights, policy = weights + 1, ema = weights (what is exported)
  state = state._replace(policy=jax.tree.map(lambda x: x + 1.0, state.policy))
  if fsdp:
    state = fsdp_sharded(state, fsdp)
  ck = ckpt_lib.Checkpointer(workdir / "checkpoints", cfg)
  ck.save(step, state, _Data())
  ck.wait()
  return workdir / "checkpoints" / str(step)


def fsdp_sharded(tree, n: int):
  """Every leaf with an axis divisible by n sharded over n devices along its largest such axis."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.asarray(jax.devices()[:n]), ("fsdp",))

  def place(x):
    axes = [a for a in np.argsort(x.shape)[::-1] if x.shape[a] % n == 0 and x.shape[a] >= n]
    spec = [None] * x.ndim
    if axes:
      spec[axes[0]] = "fsdp"
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))
  return jax.tree.map(place, tree)


@pytest.fixture(scope="module")
def fixture_torch(fixtures_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("torch")
  shutil.copy(fixtures_dir / "worldplay" / "dit" / "config.json", d / "config.json")
  shutil.copy(fixtures_dir / "worldplay" / "dit" / "weights.safetensors", d / "diffusion_pytorch_model.safetensors")
  return d


@pytest.fixture(scope="module")
def rl_run(fixture_torch, tmp_path_factory):
  """torch -> Orbax (convert) -> RL checkpoint."""
  root = tmp_path_factory.mktemp("rl")
  assert convert_cli.main(["--torch", str(fixture_torch), "--out", str(root / "orbax")]) == 0
  rl_checkpoint_from_torch(root / "orbax", root / "run")
  return root / "run"


def _read_export(d):
  index = d / "diffusion_pytorch_model.safetensors.index.json"
  files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
      else ["diffusion_pytorch_model.safetensors"]
  out = {}
  for f in files:
    out.update(load_file(str(d / f)))
  return out, files


def test_round_trip_torch_orbax_rl_torch_is_bit_exact(rl_run, fixture_torch, tmp_path, capsys):
  ref = load_file(str(fixture_torch / "diffusion_pytorch_model.safetensors"))
  out = tmp_path / "ema"
  assert export.main(["--checkpoint", str(rl_run), "--which=ema", "--to-torch", str(out),
                      "--max-shard-size=300KB"]) == 0
  assert "exported the ema weights of RL checkpoint" in capsys.readouterr().out
  back, files = _read_export(out)
  assert len(files) > 1                              # sharded, with an index
  assert set(back) == set(ref)                       # the reference's state-dict keys, no more, no fewer
  for k, v in ref.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert np.array_equal(back[k].view(np.uint8), v.view(np.uint8)), k
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["mm_double_blocks_depth"] == 2 and cfg["hidden_size"] == 64
  # the export is a reference checkpoint again: it converts back (sharded index input)
  assert convert_cli.main(["--torch", str(out), "--out", str(tmp_path / "again")]) == 0
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporaries left


def test_which_raw_policy_and_dtype(rl_run, fixture_torch, tmp_path):
  ref = load_file(str(fixture_torch / "diffusion_pytorch_model.safetensors"))
  key = "double_blocks.1.img_mod.linear.weight"
  assert export.main(["--checkpoint", str(rl_run / "checkpoints"), "--which=policy", "--to-torch",
                      str(tmp_path / "p"), "--dtype=bf16"]) == 0
  back, files = _read_export(tmp_path / "p")
  assert files == ["diffusion_pytorch_model.safetensors"]
  assert str(back[key].dtype) == "bfloat16"
  np.testing.assert_allclose(back[key].astype(np.float32), ref[key] + 1.0, rtol=1e-2, atol=1e-2)
  assert export.main(["--checkpoint", str(rl_run / "checkpoints" / "7"), "--which=raw", "--to-torch",
                      str(tmp_path / "r")]) == 0
  assert np.array_equal(_read_export(tmp_path / "r")[0][key], ref[key])


def test_a_convert_folder_exports_too(fixture_torch, tmp_path):
  assert convert_cli.main(["--torch", str(fixture_torch), "--out", str(tmp_path / "o")]) == 0
  assert export.main(["--checkpoint", str(tmp_path / "o"), "--to-torch", str(tmp_path / "t")]) == 0
  ref = load_file(str(fixture_torch / "diffusion_pytorch_model.safetensors"))
  back, _ = _read_export(tmp_path / "t")
  assert set(back) == set(ref) and all(np.array_equal(back[k], ref[k]) for k in ref)


def _err(capsys):
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and err.startswith("error: "), err
  return err


def test_bad_inputs_get_one_line_and_leave_nothing(rl_run, tmp_path, capsys):
  out = tmp_path / "out"
  # an existing output folder without --overwrite
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  assert export.main(["--checkpoint", str(rl_run), "--to-torch", str(out)]) == 2
  assert "already exists; pass --overwrite" in _err(capsys)
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  # --overwrite replaces it
  assert export.main(["--checkpoint", str(rl_run), "--to-torch", str(out), "--overwrite"]) == 0
  assert not (out / "keep.txt").exists() and (out / "diffusion_pytorch_model.safetensors").exists()
  capsys.readouterr()
  # a checkpoint of another kind
  save_orbax({"w": np.zeros(3, np.float32)}, tmp_path / "vae", {"kind": kinds.VAE, "model_config": {}})
  assert export.main(["--checkpoint", str(tmp_path / "vae"), "--to-torch", str(tmp_path / "x")]) == 2
  assert "holds a 'vae' checkpoint, not a WorldPlay DiT" in _err(capsys)
  # not a checkpoint at all / missing
  assert export.main(["--checkpoint", str(tmp_path / "vae" / "params"), "--to-torch", str(tmp_path / "x")]) == 2
  assert "is neither an RL checkpoint" in _err(capsys)
  assert export.main(["--checkpoint", str(tmp_path / "nope"), "--to-torch", str(tmp_path / "x")]) == 2
  assert "no such file or folder" in _err(capsys)
  # an RL checkpoint whose model is not a WorldPlay DiT config
  bad = tmp_path / "badrun" / "checkpoints"
  shutil.copytree(rl_run / "checkpoints", bad)
  meta = bad / "7" / "config" / "metadata"
  saved = json.loads(meta.read_text())
  saved["model"]["hidden_size"] = 65
  meta.write_text(json.dumps(saved))
  assert export.main(["--checkpoint", str(bad), "--to-torch", str(tmp_path / "x")]) == 2
  assert "not an RL checkpoint of a WorldPlay DiT" in _err(capsys)
  assert export.main(["--checkpoint", str(rl_run), "--to-torch", str(tmp_path / "x"), "--max-shard-size=lots"]) == 2
  assert "--max-shard-size='lots'" in _err(capsys)
  assert not (tmp_path / "x").exists()
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parse_size():
  assert export.parse_size("5GB") == 5 * 10**9 and export.parse_size("2GiB") == 2 * 2**30
  assert export.parse_size("300kb") == 300_000 and export.parse_size(None) is None


def test_streaming_export_of_an_8_device_checkpoint(rl_run, fixture_torch, tmp_path):
  """A checkpoint written from 8 devices with the weights sharded (fsdp=8) exports, in a fresh
  1-device process that never restores the state, to the very bytes of the whole-tree export of
  the 1-device checkpoint; the export holds one tensor at a time (tracemalloc peak measured)."""
  import os
  import subprocess
  import sys
  from conftest import REPO
  import orbax.checkpoint as ocp
  sharded = rl_checkpoint_from_torch(rl_run.parent / "orbax", tmp_path / "run8", fsdp=8)
  meta = ocp.PyTreeCheckpointer().metadata(sharded / "state").item_metadata.tree
  leaf = meta["ema"]["double_blocks"]["img_mlp"]["fc1"]["kernel"]["value"]
  assert "fsdp" in str(leaf.sharding) and "id=7" in str(leaf.sharding)        # written in 8 pieces

  whole = export.export(rl_run, tmp_path / "whole", max_shard_size="300KB", streaming=False)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-m", "wc_jax.export", f"--checkpoint={tmp_path / 'run8'}", "--which=ema",
                      f"--to-torch={tmp_path / 'streamed'}", "--max-shard-size=300KB"], cwd=str(REPO), env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  names = sorted(p.name for p in (tmp_path / "whole").iterdir())
  assert names == sorted(p.name for p in (tmp_path / "streamed").iterdir()) and len(names) > 3
  for n in names:
    assert (tmp_path / "whole" / n).read_bytes() == (tmp_path / "streamed" / n).read_bytes(), n

  streamed = export.export(sharded, tmp_path / "again", max_shard_size="300KB")
  largest = max(v.nbytes for v in load_file(str(fixture_torch / "diffusion_pytorch_model.safetensors")).values())
  assert streamed["largest_read_bytes"] <= largest and streamed["largest_tensor_bytes"] == largest
  assert whole["files"] == streamed["files"]


def test_streaming_export_memory_does_not_grow_with_the_model(tmp_path):
  """Host memory of the export (tracemalloc peak: Python objects and numpy buffers, measured
  warm) of a 256-wide DiT (29 MB of weights, saved from 8 devices, fsdp-sharded; the reader is
  the one RL checkpoints use): streaming holds about one tensor (one layer's slice of a stacked
  leaf) plus fixed per-leaf bookkeeping; the whole-tree path holds the model and its torch copy."""
  import tracemalloc
  from flax import nnx
  from wc_jax.models.worldplay.config import from_config
  from wc_jax.models.worldplay.model import build
  cfg = load_config("tiny")
  cfg.model.hidden_size, cfg.model.rope_dims = 256, (32, 48, 48)
  mcfg = from_config(cfg.model)
  params = fsdp_sharded(nnx.to_pure_dict(nnx.state(build(mcfg, seed=0), nnx.Param)), 8)
  save_orbax(params, tmp_path / "wide", {"kind": kinds.DIT, "model_config": mcfg.to_dict()})
  del params
  export.export(tmp_path / "wide", tmp_path / "warm", max_shard_size="8MB")
  peaks, out = {}, {}
  for streaming in (True, False):
    tracemalloc.start()
    out[streaming] = export.export(tmp_path / "wide", tmp_path / f"m{streaming}", streaming=streaming,
                                   max_shard_size="8MB")
    peaks[streaming] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  model_bytes, largest = out[True]["bytes"], out[True]["largest_tensor_bytes"]
  assert model_bytes > 15e6 and len(out[True]["files"]) >= 3
  assert out[True]["largest_read_bytes"] <= largest < model_bytes / 10
  print(f"model {model_bytes / 1e6:.1f} MB, largest tensor {largest / 1e6:.2f} MB, tracemalloc peak: streaming "
        f"{peaks[True] / 1e6:.2f} MB, whole tree {peaks[False] / 1e6:.2f} MB")
  assert peaks[False] > model_bytes and peaks[True] < 4 * largest + 2e6, (peaks, model_bytes, largest)
  for a, b in zip(sorted((tmp_path / "mTrue").iterdir()), sorted((tmp_path / "mFalse").iterdir())):
    assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name
