"""The LingBot-World (Wan2.1) causal VAE against its reference fixture: parity, chunking,
tiling, conversion (fixture and full-size key layout), named errors."""
import io
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from wc_jax.convert import kinds
from wc_jax.convert import wan_vae as convert_wan_vae
from wc_jax.convert.common import ConversionError, TensorSource
from wc_jax.fixtures import vae as hunyuan_vae_fixture
from wc_jax.fixtures import wan_vae as wan_vae_fixture
from wc_jax.models import wan_vae as W
from wc_jax.models.wan_vae.config import WAN21_LATENTS_MEAN, WanVAEConfig
from wc_jax.tools import check_fixture

TOL = 1e-4   # README: ~1e-5 abs expected for a float32 port


@pytest.fixture(scope="module")
def vae_dir(fixtures_dir) -> pathlib.Path:
  return fixtures_dir / "lingbot" / "vae"


@pytest.fixture(scope="module")
def data(vae_dir):
  return dict(np.load(vae_dir / "inputs.npz")), dict(np.load(vae_dir / "outputs.npz"))


@pytest.fixture(scope="module")
def model(vae_dir):
  return wan_vae_fixture.load(vae_dir)


def _config(vae_dir):
  return json.loads((vae_dir / "config.json").read_text())


def _max_abs(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------------ parity
def test_check_fixture_parity(vae_dir):
  report = io.StringIO()
  kind, results, ok = check_fixture.run(vae_dir, out=report)
  assert kind == "wan_vae" == kinds.WAN_VAE
  assert {r.name for r in results} == {n for names in wan_vae_fixture.CALLS.values() for n in names}
  for r in results:
    assert r.max_abs <= TOL, (r.name, r.max_abs)
  assert ok and "PASS: 9/9" in report.getvalue()


def test_fixture_kinds_do_not_claim_each_other(vae_dir, fixtures_dir, tmp_path):
  hunyuan = fixtures_dir / "worldplay" / "vae"
  copy = tmp_path / "renamed"
  shutil.copytree(vae_dir, copy)
  assert check_fixture.detect(copy) == "wan_vae"
  assert not hunyuan_vae_fixture.matches(vae_dir)
  if hunyuan.is_dir():
    assert check_fixture.detect(hunyuan) == "vae"
    assert not wan_vae_fixture.matches(hunyuan)


# ------------------------------------------------------------------------------ chunking / tiling
def test_whole_video_and_multi_latent_chunks_equal_reference_schedule(model, data):
  """The reference runs frame 0 then 4-frame chunks (decode: 1 latent per call); one call
  for the whole video must give the same numbers (first-frame paths of the resamplers)."""
  inputs, outputs = data
  whole = W.encode_all(model, inputs["video"], chunk_latents=None)
  assert _max_abs(whole.encoder_out, outputs["encoder_out"]) <= TOL
  assert _max_abs(whole.latents, outputs["mu_scaled"]) <= TOL
  video = W.decode(model, outputs["mu_scaled"], chunk_latents=None, clamp=False)
  assert _max_abs(video, outputs["decoded_from_mu_scaled_raw"]) <= TOL
  # streaming: the first latent, then the rest with the carried cache
  first, cache = W.decode_chunk(model, inputs["z_random"][:, :, :1])
  rest, _ = W.decode_chunk(model, inputs["z_random"][:, :, 1:], cache)
  assert first.shape[2] == 1 and rest.shape[2] == 4
  got = np.concatenate([np.asarray(first), np.asarray(rest)], axis=2)
  assert _max_abs(got, outputs["decoded_from_z_random_raw"]) <= TOL


def test_tiled_decode(model, data):
  inputs, _ = data
  z = inputs["z_random"][:, :, :1]                          # [1, 4, 1, 4, 4]
  single = W.tiled_decode(model, z, tile_latent=4)         # one tile: exactly decode
  np.testing.assert_array_equal(np.asarray(single), np.asarray(W.decode(model, z)))
  # 2x2-latent tiles every latent: 3x3 tiles, each seam blended over 8 pixels
  tiled = np.asarray(W.tiled_decode(model, z, tile_latent=2, overlap=0.5, clamp=False))
  assert tiled.shape == (1, 3, 1, 32, 32) and np.all(np.isfinite(tiled))
  corner = np.asarray(W.decode(model, z[..., :2, :2], clamp=False))
  np.testing.assert_allclose(tiled[..., :8, :8], corner[..., :8, :8], rtol=0, atol=1e-6)  # before any seam
  last = np.asarray(W.decode(model, z[..., 2:, 2:], clamp=False))
  np.testing.assert_allclose(tiled[..., 24:, 24:], last[..., 8:, 8:], rtol=0, atol=1e-6)  # past the last seam
  seam = tiled[..., :8, 8:16]    # tile (0,0)'s right half fading into tile (0,1)'s left half
  mid = np.asarray(W.decode(model, z[..., :2, 1:3], clamp=False))
  ramp = (np.arange(8) / 8.0)
  np.testing.assert_allclose(seam, corner[..., :8, 8:] * (1 - ramp) + mid[..., :8, :8] * ramp, atol=1e-5)


# ------------------------------------------------------------------------------ conversion
def test_tiny_key_map_is_the_fixture_state_dict(vae_dir):
  cfg = WanVAEConfig.from_reference(_config(vae_dir))
  want = convert_wan_vae.reference_shapes(cfg)
  source = TensorSource(vae_dir)
  assert set(want) == set(source.keys())
  assert {k: source.shape(k) for k in want} == want


def test_full_size_key_set_and_shapes():
  """The released Wan2.1_VAE.pth layout, from the config alone (jax.eval_shape, no weights)."""
  cfg = WanVAEConfig()
  assert (cfg.dim, cfg.z_dim, cfg.temporal_stride, cfg.spatial_stride) == (96, 16, 4, 8)
  shapes = convert_wan_vae.reference_shapes(cfg)
  expect = {
      "encoder.conv1.weight": (96, 3, 3, 3, 3),
      "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),         # downsample2d
      "encoder.downsamples.3.residual.0.gamma": (96, 1, 1, 1),
      "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
      "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),     # downsample3d
      "encoder.downsamples.8.time_conv.weight": (384, 384, 3, 1, 1),
      "encoder.downsamples.10.residual.6.weight": (384, 384, 3, 3, 3),
      "encoder.middle.1.norm.gamma": (384, 1, 1),
      "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
      "encoder.head.2.weight": (32, 384, 3, 3, 3),
      "conv1.weight": (32, 32, 1, 1, 1),
      "conv2.weight": (16, 16, 1, 1, 1),
      "decoder.conv1.weight": (384, 16, 3, 3, 3),
      "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),      # upsample3d
      "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
      "decoder.upsamples.4.residual.2.weight": (384, 192, 3, 3, 3),
      "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
      "decoder.upsamples.8.shortcut.weight": None,                       # 192 -> 192: plain skip
      "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),         # upsample2d
      "decoder.upsamples.12.residual.0.gamma": (96, 1, 1, 1),
      "decoder.head.0.gamma": (96, 1, 1, 1),
      "decoder.head.2.weight": (3, 96, 3, 3, 3),
  }
  for k, shape in expect.items():
    if shape is None:
      assert k not in shapes
    else:
      assert shapes[k] == shape, k
  assert not any(k.startswith("decoder.upsamples.15") for k in shapes)
  assert len(shapes) == 194
  n = sum(int(np.prod(s)) for s in shapes.values())
  assert 126_000_000 < n < 128_000_000, n
  # the full-size model streams 480x832 video (abstractly): frame 0, then 4 frames / 1 latent per call
  model = W.abstract_model(cfg)
  def run(m, x0, x1, z0, z1):
    h0, c = m.encoder(x0)
    h1, _ = m.encoder(x1, c)
    y0, c = m.decoder(z0)
    y1, _ = m.decoder(z1, c)
    return h0, h1, y0, y1
  f32 = jax.numpy.float32
  h0, h1, y0, y1 = nnx.eval_shape(run, model, jax.ShapeDtypeStruct((1, 1, 480, 832, 3), f32),
                                  jax.ShapeDtypeStruct((1, 4, 480, 832, 3), f32),
                                  jax.ShapeDtypeStruct((1, 1, 60, 104, 16), f32),
                                  jax.ShapeDtypeStruct((1, 1, 60, 104, 16), f32))
  assert h0.shape == h1.shape == (1, 1, 60, 104, 32)
  assert (y0.shape, y1.shape) == ((1, 1, 480, 832, 3), (1, 4, 480, 832, 3))


def test_round_trip_bit_exact(vae_dir, tmp_path):
  config = _config(vae_dir)
  model_config, params = convert_wan_vae.torch_to_params(TensorSource(vae_dir), config)
  _, tensors = convert_wan_vae.params_to_torch(params, model_config)
  ref = load_file(str(vae_dir / "weights.safetensors"))
  assert set(tensors) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(tensors[k], ref[k], err_msg=k)
  # and through a file opened like a released checkpoint
  save_file(tensors, str(tmp_path / "vae.safetensors"))
  m = convert_wan_vae.load(tmp_path / "vae.safetensors", config)
  np.testing.assert_array_equal(np.asarray(m.decoder.head_conv.kernel[...]),
                                np.transpose(ref["decoder.head.2.weight"], (2, 3, 4, 1, 0)))


def test_named_errors_for_bad_checkpoints(vae_dir, tmp_path):
  config = _config(vae_dir)
  ref = load_file(str(vae_dir / "weights.safetensors"))
  bad = dict(ref)
  del bad["decoder.middle.1.proj.bias"]
  bad["encoder.extra.weight"] = np.zeros((1,), np.float32)
  bad["encoder.conv1.weight"] = np.zeros((8, 4, 3, 3, 3), np.float32)
  save_file(bad, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ConversionError) as e:
    convert_wan_vae.torch_to_params(TensorSource(tmp_path / "bad.safetensors"), config)
  msg = str(e.value)
  assert "missing keys (1): ['decoder.middle.1.proj.bias']" in msg
  assert "unexpected keys (1): ['encoder.extra.weight']" in msg
  assert "encoder.conv1.weight: checkpoint (8, 4, 3, 3, 3) vs model (8, 3, 3, 3, 3)" in msg
  with pytest.raises(ConversionError, match="z_dim"):
    convert_wan_vae.torch_to_params(TensorSource(vae_dir), {"z_dim": 20})


def test_pth_reads_without_torch_and_legacy_pickles_need_it(tmp_path, fixtures_dir):
  """A zip-format .pth (what torch.save writes) opens without torch through the restricted
  reader, as a file or in a folder; only a legacy / foreign pickle needs torch."""
  import importlib.util
  legacy = tmp_path / "legacy" / "Wan2.1_VAE.pth"
  legacy.parent.mkdir()
  legacy.write_bytes(b"not a pickle")
  torch_files = tmp_path / "zip" / "Wan2.1_VAE.pth"
  torch_files.parent.mkdir()
  shutil.copy(fixtures_dir / "encoders" / "umt5_pth" / "views.pth", torch_files)   # torch.save'd tensors
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is importable here: .pth files go through torch.load")
  with pytest.raises(convert_wan_vae.TorchUnavailableError, match="needs torch to read"):
    convert_wan_vae.open_checkpoint(legacy)
  for src in (convert_wan_vae.open_checkpoint(torch_files), convert_wan_vae.open_checkpoint(torch_files.parent)):
    assert src.keys() == ["param", "t", "row", "s", "h", "scalar"]
    np.testing.assert_array_equal(src.get("t"), np.arange(12, dtype=np.float32).reshape(3, 4).T)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("shape, what", [
    ((1, 3, 4, 32, 32), "got 4 frames"),
    ((1, 3, 6, 32, 32), "got 6 frames"),
    ((1, 4, 5, 32, 32), "got 4 channels"),
    ((1, 3, 5, 30, 32), "got H, W = 30, 32"),
    ((3, 5, 32, 32), "got shape"),
])
def test_bad_video(model, shape, what):
  with pytest.raises(ValueError, match="1\\+4k frames") as e:
    W.encode(model, np.zeros(shape, np.float32))
  assert what in str(e.value)


def test_bad_continuation_and_latents(model, data):
  inputs, _ = data
  _, cache = W.encode_all(model, inputs["video"][:, :, :1], return_cache=True)
  with pytest.raises(ValueError, match="4k \\(k >= 1\\) frames.*got 3 frames"):
    W.encode_chunk(model, inputs["video"][:, :, 1:4], cache)
  with pytest.raises(ValueError, match="latents \\[B, 4, T', h, w\\].*got 16 channels"):
    W.decode(model, np.zeros((1, 16, 1, 4, 4), np.float32))
  with pytest.raises(ValueError, match="dtype int32"):
    W.decode(model, np.zeros((1, 4, 1, 4, 4), np.int32))


def test_config_latent_constants():
  assert WanVAEConfig(z_dim=4).latents_mean == WAN21_LATENTS_MEAN[:4]
  with pytest.raises(ValueError, match="latents_mean must be given"):
    WanVAEConfig(z_dim=32)
  with pytest.raises(ValueError, match="temperal_downsample"):
    WanVAEConfig(temperal_downsample=(True,))
  cfg = WanVAEConfig(precision="highest")
  assert WanVAEConfig.from_dict(cfg.to_dict()) == cfg
  assert WanVAEConfig.from_reference(cfg.to_reference()) == WanVAEConfig()
  assert WanVAEConfig.from_reference(None) == WanVAEConfig()    # the released .pth ships no config
