"""Depth Anything 3: parity on the reference fixtures, conversion, preprocessing, errors."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from wc_jax.convert import da3 as conv
from wc_jax.convert import registry
from wc_jax.convert.common import ConversionError, TensorSource
from wc_jax.fixtures import da3_reference, da3_tiny
from wc_jax.models.da3 import camera, config as da3_config, preprocess
from wc_jax.models.da3.model import (FAST_CPU_COMPILE, PoseModel, abstract_model, estimate_poses,
                                     forward, from_params, load_params, make_pose_model)
from wc_jax.models.da3.vit import select_reference_view
from wc_jax.sharding import LOGICAL_RULES, make_mesh
from wc_jax.tools import check_fixture

FAST = FAST_CPU_COMPILE if jax.default_backend() == "cpu" else None


@pytest.fixture(scope="module")
def tiny_dir(fixtures_dir) -> pathlib.Path:
  return fixtures_dir / "rewards" / "da3_tiny"


@pytest.fixture(scope="module")
def ref_dir(fixtures_dir) -> pathlib.Path:
  return fixtures_dir / "rewards" / "da3_reference"


@pytest.fixture(scope="module")
def tiny_config(tiny_dir) -> dict:
  with open(tiny_dir / "config.json", encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def tiny_io(tiny_dir) -> dict:
  return dict(np.load(tiny_dir / "io.npz"))


@pytest.fixture(scope="module")
def tiny_params(tiny_dir, tiny_config):
  return conv.torch_to_params(TensorSource(tiny_dir, strip_prefix=conv.STRIP_PREFIX), tiny_config)


@pytest.fixture(scope="module")
def tiny_model(tiny_config, tiny_params):
  return from_params(da3_config.from_reference_config(tiny_config), tiny_params[1])


def _frames_nhwc(io):
  return np.ascontiguousarray(io["frames01"].transpose(0, 2, 3, 1))


def _copy_checkpoint(tmp_path, tiny_dir, tiny_config, edit=None, prefix="", config=None):
  """A checkpoint folder with the tiny weights, optionally edited / prefixed."""
  tensors = load_file(str(tiny_dir / "weights.safetensors"))
  if edit:
    edit(tensors)
  out = tmp_path / "ckpt"
  out.mkdir()
  save_file({prefix + k: v for k, v in tensors.items()}, str(out / "model.safetensors"))
  with open(out / "config.json", "w", encoding="utf-8") as f:
    json.dump(config if config is not None else tiny_config, f)
  return out


# ----------------------------------------------------------------------------- fixtures


def test_check_fixture_da3_tiny_within_tolerance(tiny_dir):
  kind, results, ok = check_fixture.run(tiny_dir, out=None)
  assert kind == "da3_tiny"
  by_name = {r.name: r for r in results}
  for name in ("extrinsics", "intrinsics", "depth", "pose_enc", "ray", "reference_view"):
    assert name in by_name
  assert ok, [(r.name, r.max_abs, r.max_rel) for r in results if not r.ok]
  for name in ("extrinsics", "intrinsics", "depth", "depth_conf"):
    assert by_name[name].max_rel <= 1e-4


def test_check_fixture_da3_reference_counts_and_keys(ref_dir):
  kind, results, ok = check_fixture.run(ref_dir, out=None)
  assert kind == "da3_reference"
  assert ok, [(r.name, r.note) for r in results if not r.ok]
  names = {r.name for r in results}
  assert "small_state_dict" in names
  for size in ("small", "base", "large", "giant"):
    assert f"da3-{size}/total" in names


def test_check_fixture_cli_exit_code(ref_dir, tmp_path):
  assert check_fixture.main([str(ref_dir), "--only", "small_state_dict"]) == 0
  assert check_fixture.main([str(tmp_path)]) == 2      # not a fixture folder


def test_fixture_kinds_are_recognised_by_files(tiny_dir, ref_dir, tmp_path):
  assert check_fixture.detect(tiny_dir) == "da3_tiny"
  assert check_fixture.detect(ref_dir) == "da3_reference"
  assert not da3_tiny.matches(ref_dir) and not da3_reference.matches(tiny_dir)
  # same file names, but not a DA3 architecture
  other = tmp_path / "other"
  other.mkdir()
  for f in da3_tiny.FILES:
    (other / f).write_text("{}")
  assert not da3_tiny.matches(other)


def test_small_state_dict_keys_and_shapes_match_reference(ref_dir):
  with open(ref_dir / "small_state_dict_shapes.json", encoding="utf-8") as f:
    ref = {k: tuple(v) for k, v in json.load(f)["keys"].items()}
  ours = conv.expected_shapes(da3_config.preset("da3-small"))
  assert ours == ref


def test_param_counts_match_reference_presets(ref_dir):
  with open(ref_dir / "param_counts.json", encoding="utf-8") as f:
    counts = json.load(f)
  for name, ref in counts.items():
    ours = da3_reference.param_counts(da3_config.preset(name))
    for comp in ("backbone", "head", "cam_dec", "cam_enc"):
      assert ours[comp] == ref[comp], (name, comp)
    assert ours["total"] == ref["total"] - ref.get("gs_head", 0), name


def test_reference_view_index_matches_fixture(tiny_model, tiny_io, tiny_config):
  x = jnp.asarray(tiny_io["input_normalized"]).transpose(0, 1, 3, 4, 2)
  with jax.default_matmul_precision("highest"):    # the same compiled program as the fixture check
    out = forward(tiny_model, x, compiler_options=FAST)
  assert int(out["ref_view"][0]) == tiny_config["reference_view_index"]


# ----------------------------------------------------------------------------- pose estimation


def test_estimate_poses_matches_fixture(tiny_model, tiny_io):
  frames = _frames_nhwc(tiny_io)
  h, w = frames.shape[1:3]
  with jax.default_matmul_precision("highest"):
    out = estimate_poses(tiny_model, frames, process_res=max(h, w), quantize=False,
                         compiler_options=FAST)
  assert out["w2c"].shape == (frames.shape[0], 3, 4) and out["w2c"].dtype == jnp.float32
  np.testing.assert_allclose(out["w2c"], tiny_io["extrinsics_w2c"], atol=1e-4)
  np.testing.assert_allclose(out["depth"], tiny_io["depth"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["intrinsics"][:, :, 2], tiny_io["intrinsics"][:, :, 2])
  # rotations are proper
  r = np.asarray(out["w2c"][:, :, :3])
  np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)


def test_estimate_poses_accepts_uint8(tiny_model, tiny_io):
  frames = _frames_nhwc(tiny_io)
  u8 = np.round(frames * 255).astype(np.uint8)
  kw = dict(process_res=max(frames.shape[1:3]), compiler_options=FAST)
  with jax.default_matmul_precision("highest"):
    w2c = estimate_poses(tiny_model, u8, **kw)["w2c"]
    # float frames on the same grey levels give the same poses
    same = estimate_poses(tiny_model, u8.astype(np.float32) / 255, **kw)["w2c"]
  assert w2c.shape == (frames.shape[0], 3, 4) and w2c.dtype == jnp.float32
  np.testing.assert_allclose(w2c, same, atol=1e-6)


def test_pose_model_in_interaction_reward(tiny_model, tiny_io):
  from wc_jax.rewards.interaction import interaction_reward
  frames = jnp.asarray(_frames_nhwc(tiny_io))              # 5 frames = 4 * 1 latent + 1
  pose_model = make_pose_model(tiny_model, process_res=max(frames.shape[1:3]), quantize=False,
                               compiler_options=FAST)
  assert isinstance(pose_model, PoseModel)
  actions = jnp.asarray([10], jnp.int32)
  fixed = tiny_io["extrinsics_w2c"]
  with jax.default_matmul_precision("highest"):
    got = interaction_reward(frames, actions, pose_model)       # weights traced inside jit
    w2c = pose_model(frames)                                     # eager path: jitted estimate
  want = interaction_reward(frames, actions, _FixedPoses(fixed))
  assert 0.0 <= float(got) <= 1.0
  np.testing.assert_allclose(float(got), float(want))
  np.testing.assert_allclose(w2c, fixed, atol=1e-4)
  with pytest.raises(ValueError, match="unknown reference view strategy"):
    PoseModel(tiny_model, ref_view_strategy="last")


class _FixedPoses:
  """A hashable stand-in pose model returning stored poses."""

  def __init__(self, w2c):
    self.w2c = np.asarray(w2c)

  def __call__(self, frames):
    return jnp.asarray(self.w2c)


def test_estimate_poses_batched_clips_are_independent(tiny_model, tiny_io):
  frames = _frames_nhwc(tiny_io)
  kw = dict(process_res=max(frames.shape[1:3]), quantize=False, compiler_options=FAST)
  with jax.default_matmul_precision("highest"):
    one = estimate_poses(tiny_model, frames, **kw)
    both = estimate_poses(tiny_model, np.stack([frames, frames[::-1]]), **kw)
  assert both["w2c"].shape == (2,) + one["w2c"].shape
  np.testing.assert_allclose(both["w2c"][0], one["w2c"], atol=1e-5)
  # reversing the clip reverses the views; the reference view follows its frame
  assert int(both["ref_view"][1]) == frames.shape[0] - 1 - int(one["ref_view"])
  np.testing.assert_allclose(both["w2c"][1][::-1], one["w2c"], atol=1e-4)


@pytest.mark.parametrize("frames, msg", [
    (np.zeros((42, 56, 3), np.float32), r"\[F, H, W, 3\]"),
    (np.zeros((2, 42, 56, 4), np.float32), "3 \\(RGB\\) channels"),
    (np.zeros((2, 42, 56, 3), np.int32), "uint8 .* or floating point"),
    (np.zeros((2, 42, 56, 3), bool), "uint8 .* or floating point"),
    ([[0.0]], "must be an array"),
])
def test_estimate_poses_rejects_bad_frames(tiny_model, frames, msg):
  with pytest.raises(ValueError, match=msg):
    estimate_poses(tiny_model, frames)


def test_model_rejects_bad_images(tiny_model):
  with pytest.raises(ValueError, match="multiples of the patch size 14"):
    forward(tiny_model, jnp.zeros((1, 2, 40, 56, 3)))
  with pytest.raises(ValueError, match="3 channels last"):
    forward(tiny_model, jnp.zeros((1, 2, 42, 56, 1)))
  with pytest.raises(ValueError, match=r"\[B, S, H, W, 3\]"):
    forward(tiny_model, jnp.zeros((2, 42, 56, 3)))
  with pytest.raises(ValueError, match="floating point"):
    forward(tiny_model, jnp.zeros((1, 2, 42, 56, 3), jnp.int32))
  with pytest.raises(ValueError, match="unknown reference view strategy"):
    forward(tiny_model, jnp.zeros((1, 2, 42, 56, 3)), ref_view_strategy="best")
  with pytest.raises(ValueError, match="need intrinsics"):
    tiny_model(jnp.zeros((1, 2, 42, 56, 3)), extrinsics=jnp.zeros((1, 2, 3, 4)))


def test_model_without_camera_decoder_cannot_estimate_poses(tiny_config):
  cfg = da3_config.from_reference_config(tiny_config).replace(has_camera=False)
  with pytest.raises(ValueError, match="no camera decoder"):
    estimate_poses(abstract_model(cfg), np.zeros((2, 42, 56, 3), np.float32))


# ----------------------------------------------------------------------------- preprocessing


def test_processed_size_follows_reference_rules():
  assert preprocess.processed_size(480, 832) == (294, 504)      # 291 -> nearest multiple 294
  assert preprocess.processed_size(504, 504) == (504, 504)
  assert preprocess.processed_size(42, 56, 56) == (42, 56)
  assert preprocess.processed_size(100, 200, 50, "lower_bound_resize") == (56, 98)
  with pytest.raises(ValueError, match="unknown process_res_method"):
    preprocess.processed_size(10, 10, 504, "crop")


def test_resize_keeps_constant_images_and_range():
  for size, res in (((2, 60, 90, 3), 56), ((1, 20, 30, 3), 84)):   # shrink (area) and grow (cubic)
    frames = np.full(size, 0.4, np.float32)
    out = preprocess.resize_frames(frames, res, quantize=False)
    assert out.shape[1] % 14 == 0 and out.shape[2] % 14 == 0 and max(out.shape[1:3]) == res
    np.testing.assert_allclose(out, 0.4, atol=1e-6)
  u8 = np.random.default_rng(0).integers(0, 256, (1, 30, 45, 3), dtype=np.uint8)
  out = np.asarray(preprocess.resize_frames(u8, 112))
  assert out.min() >= 0 and out.max() <= 1
  np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-3)   # stays on uint8 levels


def test_normalisation_matches_fixture(tiny_io):
  x = preprocess.preprocess(_frames_nhwc(tiny_io), process_res=None, quantize=False)
  np.testing.assert_allclose(np.asarray(x[0]).transpose(0, 3, 1, 2), tiny_io["input_normalized"][0],
                             atol=1e-6)
  with pytest.raises(ValueError, match="multiple of 14"):
    preprocess.preprocess(np.zeros((1, 40, 56, 3), np.float32), process_res=None)


# ----------------------------------------------------------------------------- camera maths


def test_pose_encoding_round_trip():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(4, 4)).astype(np.float32)
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  q[:, 3] = np.abs(q[:, 3])
  enc = np.concatenate([rng.normal(size=(4, 3)), q, rng.uniform(0.5, 1.5, (4, 2))], -1)
  enc = enc.astype(np.float32)

  @jax.jit
  def round_trip(e):
    c2w, k = camera.pose_encoding_to_extri_intri(e, (42, 56))
    return c2w, camera.affine_inverse(c2w), camera.extri_intri_to_pose_encoding(c2w, k, (42, 56))

  c2w, w2c, back = round_trip(jnp.asarray(enc))
  np.testing.assert_allclose(back, enc, atol=1e-5)
  p = np.concatenate([np.asarray(c2w), np.tile([[[0, 0, 0, 1]]], (4, 1, 1))], 1)
  pi = np.concatenate([np.asarray(w2c), np.tile([[[0, 0, 0, 1]]], (4, 1, 1))], 1)
  np.testing.assert_allclose(p @ pi, np.broadcast_to(np.eye(4), p.shape), atol=1e-5)


def test_reference_view_strategies():
  tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
  np.testing.assert_array_equal(select_reference_view(tokens, "first"), [0, 0])
  np.testing.assert_array_equal(select_reference_view(tokens, "middle"), [2, 2])
  # numpy transcription of the two feature-based rules
  f = np.asarray(tokens, np.float64)
  norm = np.linalg.norm(f, axis=-1)
  unit = f / norm[..., None]
  sim = unit @ unit.transpose(0, 2, 1) - np.eye(5)
  def rng01(m):
    lo, hi = m.min(1, keepdims=True), m.max(1, keepdims=True)
    return (m - lo) / (hi - lo + 1e-8)

  balance = sum(np.abs(rng01(m) - 0.5) for m in (sim.sum(-1) / 4, norm, unit.var(-1, ddof=1)))
  pick = jax.jit(select_reference_view, static_argnums=1)
  np.testing.assert_array_equal(pick(tokens, "saddle_balanced"), balance.argmin(1))
  np.testing.assert_array_equal(pick(tokens, "saddle_sim_range"), (sim.max(-1) - sim.min(-1)).argmax(1))
  with pytest.raises(ValueError, match="unknown reference view strategy"):
    select_reference_view(tokens, "random")


def test_camera_encoder_tokens():
  cfg = da3_config.DA3Config(embed_dim=16, num_heads=2, cam_enc_heads=2)
  model = nnx.eval_shape(lambda: camera.CameraEnc(cfg, rngs=jax.random.key(0)))
  enc = camera.CameraEnc(cfg, rngs=0)
  w2c = jnp.tile(jnp.eye(4)[None, None], (1, 3, 1, 1))
  k = jnp.tile(jnp.asarray([[30.0, 0, 28], [0, 30, 21], [0, 0, 1]])[None, None], (1, 3, 1, 1))
  tokens = nnx.jit(lambda m, e, i: m(e, i, (42, 56)))(enc, w2c, k)
  assert tokens.shape == (1, 3, 16) and bool(jnp.all(jnp.isfinite(tokens)))
  assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(nnx.state(enc))


# ----------------------------------------------------------------------------- conversion


def test_converter_is_found_for_both_config_styles(tiny_config):
  assert registry.converter_for(tiny_config).KIND == "da3"
  assert registry.converter_for({"model_name": "da3-giant"}).KIND == "da3"
  assert not conv.matches({"model_name": "something-else"}) and not conv.matches({"_class_name": "x"})
  assert da3_config.from_reference_config({"model_name": "da3-large"}) == da3_config.preset("da3-large")
  with pytest.raises(ValueError, match="nested"):
    da3_config.from_reference_config({"model_name": "da3nested-giant-large"})
  with pytest.raises(ValueError, match="unknown DA3 preset"):
    da3_config.preset("da3-huge")
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    da3_config.DA3Config(embed_dim=30, num_heads=4)
  with pytest.raises(ValueError, match="exactly 4 out_layers"):
    da3_config.DA3Config(out_layers=(1, 2))
  bad = json.loads(json.dumps(tiny_config))
  bad["architecture"]["head"]["type"] = "DPT"
  with pytest.raises(ValueError, match="only DualDPT"):
    da3_config.from_reference_config(bad)
  cfg = da3_config.from_reference_config(tiny_config)
  assert da3_config.DA3Config.from_dict(cfg.to_dict()) == cfg
  assert da3_config.from_reference_config(da3_config.to_reference_config(cfg)) == cfg


def test_export_round_trip_is_exact(tiny_dir, tiny_params):
  model_config, params = tiny_params
  ref = load_file(str(tiny_dir / "weights.safetensors"))
  ref_config, tensors = conv.params_to_torch(params, model_config, reference_config={"x": 1})
  assert ref_config == {"x": 1}
  assert set(tensors) == set(ref)
  for k, v in ref.items():
    np.testing.assert_array_equal(tensors[k], v, err_msg=k)


def test_model_prefix_is_accepted_and_restored(tmp_path, tiny_dir, tiny_config, tiny_params):
  ckpt = _copy_checkpoint(tmp_path, tiny_dir, tiny_config, prefix="model.")
  model_config, params = conv.torch_to_params(TensorSource(ckpt, conv.STRIP_PREFIX), tiny_config)
  assert model_config["torch_prefix"] == "model."
  jax.tree.map(np.testing.assert_array_equal, params, tiny_params[1])
  _, tensors = conv.params_to_torch(params, model_config)
  assert all(k.startswith("model.") for k in tensors)


def test_orbax_cli_round_trip(tmp_path, tiny_dir, tiny_config):
  from wc_jax.convert.__main__ import main
  ckpt = _copy_checkpoint(tmp_path, tiny_dir, tiny_config, prefix="model.")
  assert main(["--torch", str(ckpt), "--out", str(tmp_path / "orbax")]) == 0
  assert main(["--orbax", str(tmp_path / "orbax"), "--to-torch", str(tmp_path / "back")]) == 0
  a = load_file(str(ckpt / "model.safetensors"))
  b = load_file(str(tmp_path / "back" / conv.TORCH_FILENAME))
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("edit, msg", [
    (lambda t: t.pop("cam_dec.fc_t.weight"), r"missing keys \(1\).*cam_dec\.fc_t\.weight"),
    (lambda t: t.update({"head.extra.weight": np.zeros(2, np.float32)}),
     r"unexpected keys.*head\.extra"),
    (lambda t: t.update({"cam_dec.fc_t.bias": np.zeros(4, np.float32)}),
     r"shape mismatches.*cam_dec\.fc_t\.bias"),
    (lambda t: t.update({"head.scratch.output_conv2_aux.0.2.weight": np.zeros(32, np.float32)}),
     r"output_conv2_aux\.0\.2\.weight differs.*shares one LayerNorm"),
])
def test_conversion_reports_bad_checkpoints(tmp_path, tiny_dir, tiny_config, edit, msg):
  ckpt = _copy_checkpoint(tmp_path, tiny_dir, tiny_config, edit=edit)
  with pytest.raises(ConversionError, match=msg):
    conv.torch_to_params(TensorSource(ckpt, conv.STRIP_PREFIX), tiny_config)


def test_conversion_rejects_foreign_config(tiny_dir):
  with pytest.raises(ConversionError, match="DA3 config"):
    conv.torch_to_params(TensorSource(tiny_dir), {"model_name": "da3-nope"})


def test_conversion_skips_gs_head_weights(tmp_path, tiny_dir, tiny_config):
  cfg = json.loads(json.dumps(tiny_config))
  cfg["architecture"]["gs_head"] = {"type": "GSDPT"}
  ckpt = _copy_checkpoint(tmp_path, tiny_dir, cfg, config=cfg,
                          edit=lambda t: t.update({"gs_head.norm.weight": np.ones(4, np.float32)}))
  model_config, _ = conv.torch_to_params(TensorSource(ckpt, conv.STRIP_PREFIX), cfg)
  assert tuple(model_config["ignored_prefixes"]) == ("gs_head.",)
  assert da3_config.preset("da3-giant").ignored_prefixes == ("gs_head.", "gs_adapter.")


def test_conversion_casts_and_shards(tiny_dir, tiny_config):
  mesh = make_mesh({"fsdp": len(jax.devices())})
  _, params = conv.torch_to_params(TensorSource(tiny_dir), tiny_config, dtype="bfloat16", mesh=mesh)
  k = params["backbone"]["blocks"][0]["attn"]["qkv"]["kernel"]
  assert k.dtype == jnp.bfloat16 and k.shape == (32, 96)
  assert k.sharding.spec[0] == "fsdp"


def test_load_params_reports_mismatch(tiny_config, tiny_params):
  model = abstract_model(da3_config.from_reference_config(tiny_config))
  bad = jax.tree.map(lambda x: x, tiny_params[1])
  del bad["cam_dec"]["fc_t"]
  with pytest.raises(ValueError, match="missing"):
    load_params(model, bad)


def test_parameters_carry_logical_axis_names():
  rules = dict(LOGICAL_RULES)
  state = nnx.state(abstract_model(da3_config.preset("da3-small")), nnx.Param)
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == len(var.get_value().shape), path
    assert all(n is None or n in rules for n in names), (path, names)
