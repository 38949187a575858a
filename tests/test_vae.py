"""The causal 3-D VAE against the reference fixtures: parity, chunking, sharding, conversion, errors."""
import io
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from wc_jax.convert import __main__ as convert_cli
from wc_jax.convert import kinds, load_model
from wc_jax.convert import registry
from wc_jax.convert import vae as convert_vae
from wc_jax.convert.common import ConversionError
from wc_jax.fixtures import vae as vae_fixture
from wc_jax.models import vae as V
from wc_jax.models.vae import model as vae_model
from wc_jax.models.vae.config import VAEConfig
from wc_jax.sharding import make_mesh, use_mesh
from wc_jax.tools import check_fixture

TOL = 1e-4


@pytest.fixture(scope="module")
def vae_dir(fixtures_dir) -> pathlib.Path:
  return fixtures_dir / "worldplay" / "vae"


@pytest.fixture(scope="module")
def data(vae_dir):
  return dict(np.load(vae_dir / "inputs.npz")), dict(np.load(vae_dir / "outputs.npz"))


@pytest.fixture(scope="module")
def model(vae_dir):
  return vae_fixture.load(vae_dir)


def _max_abs(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _max_rel(got, want):
  return _max_abs(got, want) / float(np.max(np.abs(want)))


# ------------------------------------------------------------------------------ parity
def test_check_fixture_parity(vae_dir):
  report = io.StringIO()
  kind, results, ok = check_fixture.run(vae_dir, out=report)
  assert kind == "vae"
  names = {r.name for r in results}
  assert names == {"posterior_parameters", "mean", "logvar", "std", "mode", "decoded_from_mean",
                   "decoded_from_z_random"}
  for r in results:
    assert r.max_rel <= 1e-4, (r.name, r.max_abs, r.max_rel)
  assert ok
  assert "PASS: 7/7" in report.getvalue()
  assert check_fixture.main([str(vae_dir), "--only", "decode_random"]) == 0


def test_fixture_detected_by_content(vae_dir, fixtures_dir, tmp_path):
  copy = tmp_path / "some_other_name"
  shutil.copytree(vae_dir, copy)
  assert check_fixture.detect(copy) == "vae"
  assert not vae_fixture.matches(fixtures_dir / "worldplay" / "dit")


# ------------------------------------------------------------------------------ chunking
def test_encode_whole_equals_chunked(model, data):
  inputs, outputs = data
  whole = V.encode(model, inputs["video"])
  chunked = V.encode(model, inputs["video"], chunk_latents=1)
  assert _max_abs(whole.parameters, chunked.parameters) < 1e-5
  assert _max_rel(whole.parameters, outputs["posterior_parameters"]) < TOL
  np.testing.assert_allclose(whole.std, outputs["std"], rtol=1e-4, atol=1e-4)
  key = jax.random.key(0)
  np.testing.assert_allclose(whole.sample(key) - whole.mean,
                             whole.std * jax.random.normal(key, whole.mean.shape), atol=1e-6)


def test_decode_whole_equals_chunked_and_cache_is_length_independent(model, data):
  inputs, outputs = data
  z = inputs["z_random"]
  whole = V.decode(model, z)
  chunked = V.decode(model, z, chunk_latents=1)
  assert _max_abs(whole, chunked) < 1e-5
  assert _max_rel(whole, outputs["decoded_from_z_random"]) < TOL
  # Context first, then the target latents one by one against the carried cache.
  ctx, cache1 = V.decode_chunk(model, z[:, :, :1], None)
  tgt2, cache2 = V.decode_chunk(model, z[:, :, 1:2], cache1)
  tgt3, cache3 = V.decode_chunk(model, z[:, :, 2:3], cache2)
  assert ctx.shape[2] == 1 and tgt2.shape[2] == 4 and tgt3.shape[2] == 4
  assert _max_abs(jnp.concatenate([ctx, tgt2, tgt3], axis=2), whole) < 1e-5
  # The carried state has the same structure and size after 1 or 3 latents.
  shapes = lambda c: jax.tree.map(lambda a: a.shape, c)
  assert shapes(cache1) == shapes(cache3)
  # Encoding in chunks with an explicit cache continues a video the same way.
  _, enc_cache = V.encode(model, inputs["video"][:, :, :1], return_cache=True)
  rest, _ = V.encode_chunk(model, inputs["video"][:, :, 1:5], enc_cache)
  assert _max_rel(rest, outputs["posterior_parameters"][:, :, 1:2]) < TOL


def test_tiled_decode_single_tile_is_decode(model, data):
  inputs, _ = data
  z = inputs["z_random"]
  assert _max_abs(V.tiled_decode(model, z, tile_latent=8), V.decode(model, z)) == 0.0


def _tiny_config():
  return VAEConfig(latent_channels=4, block_out_channels=(8, 8), layers_per_block=1, ffactor_spatial=2,
                   ffactor_temporal=2, sample_size=8)


def test_tiled_decode_blends_neighbouring_tiles():
  m = V.init_model(_tiny_config(), seed=1)
  z = np.random.default_rng(2).normal(size=(1, 4, 2, 3, 6)).astype(np.float32)
  # Tiles of 4 latents every 3: one row, two columns (4 and 3 latents wide);
  # 8-pixel tiles cropped to 6, the second fading in over 2 pixels.
  out = V.tiled_decode(m, z, tile_latent=4, overlap=0.25)
  assert out.shape == (1, 3, 3, 6, 12)
  left, right = V.decode(m, z[..., 0:4]), V.decode(m, z[..., 3:6])
  np.testing.assert_allclose(out[..., :6], left[..., :6], atol=1e-6)
  ramp = np.arange(2) / 2.0
  seam = np.asarray(left[..., 6:8]) * (1 - ramp) + np.asarray(right[..., 0:2]) * ramp
  np.testing.assert_allclose(out[..., 6:8], seam, atol=1e-6)
  np.testing.assert_allclose(out[..., 8:12], right[..., 2:6], atol=1e-6)


# ------------------------------------------------------------------------------ sharding
def test_sharded_batch_equals_unsharded(vae_dir, model, data):
  inputs, outputs = data
  mesh = make_mesh({"data": 2, "fsdp": 2, "context": 2})
  sharded = load_model(kinds.VAE, vae_dir, mesh=mesh, precision="highest")  # placed by logical names while converting
  kernel = sharded.decoder.conv_in.conv.kernel.get_value()
  assert kernel.sharding.spec == P(None, None, None, None, "fsdp")
  z = np.concatenate([outputs["mean"], inputs["z_random"]])
  with use_mesh(mesh):
    out = V.decode(sharded, jax.device_put(z, NamedSharding(mesh, P("data"))))
  assert out.sharding.spec[0] == "data"
  unsharded = np.concatenate([V.decode(model, outputs["mean"]), V.decode(model, inputs["z_random"])])
  assert _max_abs(out, unsharded) < 1e-5
  assert _max_rel(out[:1], outputs["decoded_from_mean"]) < TOL


# ------------------------------------------------------------------------------ conversion
def _bits(a):
  return np.ascontiguousarray(a).view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_conversion_round_trip_bit_exact(vae_dir, tmp_path, dtype):
  orbax_dir, torch_dir = tmp_path / "orbax", tmp_path / "torch"
  args = ["--torch", str(vae_dir), "--out", str(orbax_dir)] + (["--dtype", dtype] if dtype else [])
  assert convert_cli.main(args) == 0
  assert convert_cli.main(["--orbax", str(orbax_dir), "--to-torch", str(torch_dir)]) == 0
  ref = load_file(str(vae_dir / "weights.safetensors"))
  back = load_file(str(torch_dir / convert_vae.TORCH_FILENAME))
  assert set(back) == set(ref)
  for k, a in ref.items():
    want = a.astype(ml_dtypes.bfloat16) if dtype else a
    assert back[k].dtype == want.dtype and back[k].shape == want.shape, k
    assert np.array_equal(_bits(back[k]), _bits(want)), k
  assert json.loads((torch_dir / "config.json").read_text()) == json.loads((vae_dir / "config.json").read_text())
  loaded = load_model(kinds.VAE, orbax_dir)
  kernel = np.asarray(loaded.encoder.conv_in.conv.kernel.get_value())
  assert kernel.dtype == (ml_dtypes.bfloat16 if dtype else np.float32)
  assert np.array_equal(_bits(kernel), _bits(np.transpose(back["encoder.conv_in.conv.weight"], (2, 3, 4, 1, 0))))


def _broken_checkpoint(vae_dir, tmp_path, edit):
  folder = tmp_path / "broken"
  folder.mkdir()
  shutil.copy(vae_dir / "config.json", folder / "config.json")
  tensors = load_file(str(vae_dir / "weights.safetensors"))
  edit(tensors)
  save_file(tensors, str(folder / "weights.safetensors"))
  return folder


def test_conversion_missing_key(vae_dir, tmp_path, capsys):
  folder = _broken_checkpoint(vae_dir, tmp_path, lambda t: t.pop("decoder.mid.attn_1.q.weight"))
  assert convert_cli.main(["--torch", str(folder), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "missing keys (1)" in err and "decoder.mid.attn_1.q.weight" in err


def test_conversion_shape_mismatch(vae_dir, tmp_path):
  def edit(t):
    t["encoder.norm_out.gamma"] = np.ones((7, 1, 1, 1), np.float32)
    t["encoder.extra.weight"] = np.zeros((1,), np.float32)
  folder = _broken_checkpoint(vae_dir, tmp_path, edit)
  with pytest.raises(ConversionError) as e:
    registry.torch_to_orbax(folder, tmp_path / "out")
  msg = str(e.value)
  assert "encoder.norm_out.gamma: checkpoint (7, 1, 1, 1) vs model (32, 1, 1, 1)" in msg
  assert "unexpected keys (1): ['encoder.extra.weight']" in msg


def test_params_round_trip_through_module(model):
  params = V.params_of(model)
  cfg, tensors = convert_vae.params_to_torch(params, model.config.to_dict())
  assert cfg["_class_name"] == "AutoencoderKLConv3D" and cfg["latent_channels"] == 4
  assert len(tensors) == 218
  rebuilt = V.model_from_params(model.config, params)
  assert nnx.graphdef(rebuilt) == nnx.graphdef(model)
  bad = dict(params)
  bad["encoder"] = {k: v for k, v in params["encoder"].items() if k != "conv_in"}
  with pytest.raises(ValueError, match="missing.*encoder/conv_in/conv/bias"):
    V.model_from_params(model.config, bad)


# ------------------------------------------------------------------------------ bad input
VIDEO_SHAPE = "video [B, 3, 1+4k, H, W] (H, W multiples of 16)"


@pytest.mark.parametrize("shape,dtype,what", [
    ((1, 4, 9, 64, 64), np.float32, "got 4 channels"),
    ((1, 3, 8, 64, 64), np.float32, "got 8 frames"),
    ((1, 3, 9, 60, 64), np.float32, "got H, W = 60, 64"),
    ((3, 9, 64, 64), np.float32, "got shape (3, 9, 64, 64)"),
    ((1, 3, 9, 64, 64), np.int32, "got dtype int32"),
])
def test_bad_video(model, shape, dtype, what):
  with pytest.raises(ValueError) as e:
    V.encode(model, np.zeros(shape, dtype))
  assert VIDEO_SHAPE in str(e.value) and what in str(e.value)


def test_bad_video_continuation(model):
  with pytest.raises(ValueError, match=r"video \[B, 3, 4k, H, W\].*got 5 frames"):
    V.encode_chunk(model, np.zeros((1, 3, 5, 64, 64), np.float32), cache={})


@pytest.mark.parametrize("shape,dtype,what", [
    ((1, 5, 3, 4, 4), np.float32, "got 5 channels"),
    ((1, 4, 3, 4), np.float32, "got shape (1, 4, 3, 4)"),
    ((1, 4, 3, 4, 4), np.int64, "got dtype int64"),
    ((1, 4, 0, 4, 4), np.float32, "got an empty shape"),
])
def test_bad_latents(model, shape, dtype, what):
  for fn in (V.decode, V.decode_chunk, V.tiled_decode):
    with pytest.raises(ValueError) as e:
      fn(model, np.zeros(shape, dtype))
    assert "latents [B, 4, T', h, w]" in str(e.value) and what in str(e.value)


# ------------------------------------------------------------------------------ config
def test_real_config_compression(vae_dir):
  real = json.loads((vae_dir / "config.json").read_text())["real_config"]
  cfg = VAEConfig.from_reference(real)
  assert cfg.latent_channels == 32 and cfg.scaling_factor == 1.03682
  assert VAEConfig.from_reference(cfg.to_reference()) == cfg
  assert convert_vae.matches(cfg.to_reference()) and not convert_vae.matches({"hidden_size": 2048})
  def run(video):
    m = vae_model.AutoencoderKL(cfg, rngs=nnx.Rngs(0))
    moments, _ = m.encoder(video)
    frames, _ = m.decoder(moments[..., :32])
    return moments, frames
  moments, frames = jax.eval_shape(run, jax.ShapeDtypeStruct((1, 17, 480, 832, 3), jnp.float32))
  assert moments.shape == (1, 5, 30, 52, 64)   # 1+4k frames -> 1+k latents, 16x smaller
  assert frames.shape == (1, 17, 480, 832, 3)
  z = jnp.ones((2, 32, 1, 1, 1))
  np.testing.assert_allclose(V.unscale_latents(cfg, V.scale_latents(cfg, z)), z, rtol=1e-6)
  with pytest.raises(ValueError, match="must divide by 2\\*latent_channels"):
    cfg.replace(latent_channels=48)
