"""LingBot-World: DiT (+ camera branch, two experts), camera conditioning, UniPC + CFG sampler,
converter: parity with the reference fixtures (tests/fixtures/lingbot/*/PROVENANCE.md) and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import load_config
from wc_jax import sharding
from wc_jax.convert import kinds
from wc_jax.convert import lingbot as convert_lingbot
from wc_jax.convert.common import ConversionError, TensorSource, read_config
from wc_jax.fixtures import lingbot_dit
from wc_jax.inference import unipc
from wc_jax.models.lingbot import camera
from wc_jax.models.lingbot.config import LingBotConfig, from_config
from wc_jax.models.lingbot.dit import abstract_model, sinusoid
from wc_jax.tools import check_fixture


@pytest.fixture(scope="module")
def dit_dir(fixtures_dir):
  return fixtures_dir / "lingbot" / "dit"


@pytest.fixture(scope="module")
def cam_dir(fixtures_dir):
  return fixtures_dir / "lingbot" / "camera"


@pytest.fixture(scope="module")
def low(dit_dir):
  return lingbot_dit.load_expert(dit_dir)


# ----------------------------------------------------------------------------- parity

def test_dit_calls_intermediates_and_rollout_match_reference(dit_dir):
  """Camera on/off, negative prompt, high expert, every intermediate, the scheduler alone and
  the 4-step UniPC + CFG rollout across the expert switch."""
  kind, results, ok = check_fixture.run(dit_dir, out=None)
  assert kind == "lingbot_dit"
  names = {r.name for r in results}
  assert {"out_full", "out_nocam", "out_uncond", "out_high_expert", "intermediates/block1.cam_scale",
          "intermediates/rope_freqs_first64", "scheduler/timesteps", "scheduler/step3_latent_out",
          "rollout/step1_cond", "rollout/step2_uncond", "rollout/final_latent"} <= names
  bad = [(r.name, r.max_abs, r.max_rel) for r in results if not r.ok]
  assert ok and not bad, bad
  # README: a float32 port should match to ~1e-5 abs (measured <= 8e-6, the guided velocity).
  assert max(r.max_abs for r in results if r.tol_abs > 0) < 2e-5


def test_camera_every_step_matches_reference(cam_dir):
  kind, results, ok = check_fixture.run(cam_dir, out=None)
  assert kind == "lingbot_camera"
  assert {f"traj{k}/{n}" for k in range(3) for n in ("c2ws_interp", "c2ws_relative", "c2ws_plucker_emb")} <= {
      r.name for r in results}
  bad = [(r.name, r.max_abs, r.max_rel) for r in results if not r.ok]
  assert ok and not bad, bad


def test_fixture_kinds_are_told_apart_by_their_files(fixtures_dir, dit_dir, cam_dir):
  assert check_fixture.detect(fixtures_dir / "worldplay" / "dit") == "dit"
  assert check_fixture.detect(dit_dir) == "lingbot_dit"
  assert check_fixture.detect(cam_dir) == "lingbot_camera"


def test_batched_calls_share_one_camera_and_match_the_recorded_outputs(low, dit_dir):
  """A batch of 2 (prompt, negative prompt: the CFG pair) with a camera of batch 1."""
  from wc_jax.models.lingbot.dit import functional
  d = np.load(dit_dir / "inputs.npz")
  out = np.load(dit_dir / "outputs.npz")
  ctx = np.zeros((2, 7, 32), np.float32)
  ctx[0], ctx[1, :5] = d["context"], d["context_null"]      # zero rows = the reference's own padding
  apply, state = functional(low)
  got = jax.jit(apply)(state, jnp.asarray(np.stack([d["x"]] * 2)), jnp.asarray([700.0, 700.0]), jnp.asarray(ctx),
                       y=jnp.asarray(np.stack([d["y"]] * 2)), cam=jnp.asarray(d["c2ws_plucker_emb"]))
  np.testing.assert_allclose(got[0], out["out_full"], atol=2e-5)
  np.testing.assert_allclose(got[1], out["out_uncond"], atol=2e-5)


def test_timestep_sinusoid_is_float64_accurate():
  t = np.concatenate([np.arange(0, 1000, 7), [999, 967, 908.5, 0.25]])
  got = np.asarray(sinusoid(jnp.asarray(t, jnp.float32), 256))
  half = 128
  args = np.outer(t, np.power(10000.0, -np.arange(half) / half))
  want = np.concatenate([np.cos(args), np.sin(args)], axis=1)
  assert np.abs(got - want).max() < 2e-6


def test_unipc_schedule_and_expert_switch():
  ts, sig = unipc.schedule(70, 10.0)
  assert ts[0] == 999 and sig[-1] == 0 and np.all(np.diff(ts) <= 0)
  runs = unipc.expert_runs(ts)
  assert [r[2] for r in runs] == [True, False]                  # high-noise prefix, then low
  assert ts[runs[0][1] - 1] >= 947 > ts[runs[1][0]]
  c = unipc.coefficients(sig)
  assert c.px[-1] == 0 and c.p0[-1] == 1                         # the last step returns x0
  assert c.cx[0] == 1 and np.all(c.cx[1:] == 0)                  # corrector from step 1 on


def test_sampler_names_the_missing_expert(low):
  from wc_jax.models.lingbot.dit import functional
  apply, state = functional(low)
  noise = jnp.zeros((1, 4, 3, 4, 8))
  ctx = jnp.zeros((1, 3, 32))
  with pytest.raises(ValueError, match="high-noise expert, which was not given"):
    unipc.sample(apply, state, None, noise, context=ctx, context_null=ctx, y=jnp.zeros((1, 8, 3, 4, 8)),
                 steps=2, shift=10.0)


# ----------------------------------------------------------------------------- conversion

def _reference_shapes(dim, ffn, layers, in_dim, text_dim, freq_dim, out_dim, patch):
  """The WanModel + LingBot camera state dict, written out from the reference's layer list."""
  pv = int(np.prod(patch))
  s = {"patch_embedding.weight": (dim, in_dim) + tuple(patch), "patch_embedding.bias": (dim,),
       "patch_embedding_wancamctrl.weight": (dim, 6 * 64 * pv), "patch_embedding_wancamctrl.bias": (dim,),
       "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
       "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
       "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
       "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
       "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
       "head.head.weight": (out_dim * pv, dim), "head.head.bias": (out_dim * pv,), "head.modulation": (1, 2, dim)}
  for n in ("c2ws_hidden_states_layer1", "c2ws_hidden_states_layer2"):
    s[f"{n}.weight"], s[f"{n}.bias"] = (dim, dim), (dim,)
  for i in range(layers):
    b = f"blocks.{i}."
    s[b + "modulation"] = (1, 6, dim)
    s[b + "norm3.weight"], s[b + "norm3.bias"] = (dim,), (dim,)
    s[b + "ffn.0.weight"], s[b + "ffn.0.bias"] = (ffn, dim), (ffn,)
    s[b + "ffn.2.weight"], s[b + "ffn.2.bias"] = (dim, ffn), (dim,)
    for a in ("self_attn", "cross_attn"):
      for n in ("q", "k", "v", "o"):
        s[f"{b}{a}.{n}.weight"], s[f"{b}{a}.{n}.bias"] = (dim, dim), (dim,)
      s[f"{b}{a}.norm_q.weight"], s[f"{b}{a}.norm_k.weight"] = (dim,), (dim,)
    for n in ("cam_injector_layer1", "cam_injector_layer2", "cam_scale_layer", "cam_shift_layer"):
      s[f"{b}{n}.weight"], s[f"{b}{n}.bias"] = (dim, dim), (dim,)
  return s


def test_converter_expects_the_released_a14b_key_set():
  """configs/lingbot_a14b.py -> the keys and shapes of one released expert, from jax.eval_shape."""
  cfg = from_config(load_config("lingbot_a14b").model)
  assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.in_dim, cfg.text_len) == (
      5120, 40, 40, 13824, 36, 512)
  got = convert_lingbot.expected_torch_shapes(cfg)
  want = _reference_shapes(5120, 13824, 40, 36, 4096, 256, 16, (1, 2, 2))
  assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
  assert {k: v for k, v in got.items() if tuple(want[k]) != tuple(v)} == {}
  n_params = sum(int(np.prod(v)) for v in got.values())
  assert 18.5e9 < n_params < 18.6e9                     # 14.3B Wan2.2 expert + 4.2B camera layers
  # the full-size expert traces (no memory): 2 latent frames of 4x4 -> 8 tokens, 512 text rows
  from wc_jax.models.lingbot.dit import functional
  apply, state = functional(abstract_model(cfg.replace(attention_impl="xla")))
  f32 = jnp.float32
  out = jax.eval_shape(apply, state, jax.ShapeDtypeStruct((1, 16, 2, 4, 4), f32), jax.ShapeDtypeStruct((1,), f32),
                       jax.ShapeDtypeStruct((1, 300, 4096), f32), y=jax.ShapeDtypeStruct((1, 20, 2, 4, 4), f32),
                       cam=jax.ShapeDtypeStruct((1, 384, 2, 4, 4), jnp.bfloat16))
  assert out.shape == (1, 16, 2, 4, 4) and out.dtype == f32


def test_fixture_checkpoint_round_trips(dit_dir):
  config = read_config(dit_dir / "config.json")
  src = TensorSource(dit_dir / "weights.safetensors")
  model_config, params = convert_lingbot.torch_to_params(src, config)
  assert convert_lingbot.matches(config) and convert_lingbot.KIND == kinds.LINGBOT_DIT in kinds.ALL
  assert np.shape(params["blocks"]["modulation"]) == (2, 6, 64)
  ref, tensors = convert_lingbot.params_to_torch(params, model_config, reference_config=config)
  want = load_file(str(dit_dir / "weights.safetensors"))
  assert set(tensors) == set(want)
  for k in want:
    np.testing.assert_array_equal(tensors[k], want[k], err_msg=k)
  assert ref["constructor_kwargs"]["dim"] == 64 and ref["constructor_kwargs"]["num_layers"] == 2


def test_converter_names_missing_unexpected_and_misshaped_keys(dit_dir, tmp_path):
  config = read_config(dit_dir / "config.json")
  t = load_file(str(dit_dir / "weights.safetensors"))
  del t["blocks.1.cam_scale_layer.weight"]
  t["blocks.0.extra_adapter.weight"] = np.zeros((2, 2), np.float32)
  t["head.modulation"] = np.zeros((1, 3, 64), np.float32)
  save_file(t, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ConversionError) as e:
    convert_lingbot.torch_to_params(TensorSource(tmp_path / "bad.safetensors"), config)
  msg = str(e.value)
  assert "missing keys (1): ['blocks.1.cam_scale_layer.weight']" in msg
  assert "unexpected keys (1): ['blocks.0.extra_adapter.weight']" in msg
  assert "head.modulation: checkpoint (1, 3, 64) vs model (1, 2, 64)" in msg
  with pytest.raises(ConversionError, match="not supported by wc_jax.*qk_norm"):
    convert_lingbot.torch_to_params(TensorSource(dit_dir / "weights.safetensors"),
                                    {"constructor_kwargs": {**config["constructor_kwargs"], "qk_norm": False}})


# ----------------------------------------------------------------------------- errors / metadata

def test_model_rejects_bad_inputs_with_the_expected_shapes(low):
  x = jnp.zeros((1, 4, 3, 4, 8))
  y = jnp.zeros((1, 8, 3, 4, 8))
  ctx = jnp.zeros((1, 7, 32))
  with pytest.raises(ValueError, match=r"x channels 4 \+ y channels 4 must equal in_dim 12"):
    low(x, 700.0, ctx, y=y[:, :4])
  with pytest.raises(ValueError, match=r"cam must be \[B or 1, 384, F, H, W\] = \[1, 384, 3, 4, 8\]"):
    low(x, 700.0, ctx, y=y, cam=jnp.zeros((1, 384, 3, 8, 8)))
  with pytest.raises(ValueError, match=r"context must be \[B, Lc <= 16, 32\]"):
    low(x, 700.0, jnp.zeros((1, 17, 32)), y=y)
  with pytest.raises(ValueError, match="divisible by patch"):
    low(jnp.zeros((1, 4, 3, 5, 8)), 700.0, ctx, y=jnp.zeros((1, 8, 3, 5, 8)))


def test_camera_rejects_bad_input_and_handles_static_and_fractional_poses():
  with pytest.raises(ValueError, match=r"poses must be \[N, 4, 4\]"):
    camera.camera_conditioning(np.zeros((9, 3, 4)), np.ones((9, 4)), 32, 32)
  with pytest.raises(ValueError, match="multiple of the VAE stride"):
    camera.camera_conditioning(np.tile(np.eye(4), (9, 1, 1)), np.ones((9, 4)), 30, 32)
  # a camera that does not move: zero translations (the max_norm == 0 branch), identity rotations
  pose = np.eye(4)
  pose[:3, 3] = (5678.9, -12.3, 40.0)
  steps = camera.camera_conditioning(np.tile(pose, (9, 1, 1)), np.tile([[300.0, 300.0, 416, 240]], (9, 1)), 32, 32)
  np.testing.assert_array_equal(steps.c2ws_relative, np.tile(np.eye(4, dtype=np.float32), (3, 1, 1)))
  assert steps.c2ws_plucker_emb.shape == (1, 384, 3, 4, 4)
  # Slerp between 0 and 90 degrees about z, sampled at a quarter: 22.5 degrees
  rz = lambda a: np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
  poses = np.tile(np.eye(4), (2, 1, 1))
  poses[1, :3, :3] = rz(np.pi / 2)
  poses[1, :3, 3] = (4.0, 0, 0)
  out = camera.interpolate_poses(poses, np.array([0.25]))
  np.testing.assert_allclose(out[0, :3, :3], rz(np.pi / 8), atol=1e-6)
  np.testing.assert_allclose(out[0, :3, 3], (1.0, 0, 0), atol=1e-6)


def test_every_parameter_has_logical_axes_with_a_sharding_rule():
  cfg = LingBotConfig(dim=64, ffn_dim=128, freq_dim=32, text_dim=32, text_len=16, in_dim=12, out_dim=4,
                      num_heads=2, num_layers=3)
  state = nnx.state(abstract_model(cfg), nnx.Param)
  rules = dict(sharding.LOGICAL_RULES)
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  for path, var in flat:
    axes = sharding.logical_axes_of(var)
    key = sharding.path_keys(path)
    assert axes is not None and len(axes) == len(var.shape), key
    assert all(a is None or a in rules for a in axes), (key, axes)
    assert (axes[0] == "layers") == (key[0] == "blocks"), (key, axes)
