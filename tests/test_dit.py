"""WorldPlay DiT: parity with the reference fixture, conversion, sharding, caches, errors."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from wc_jax import sharding
from wc_jax.convert import __main__ as convert_cli
from wc_jax.fixtures import dit as dit_fixture
from wc_jax.models.worldplay.config import DiTConfig
from wc_jax.models.worldplay.model import VisionCache, build, functional
from wc_jax.nn.attention import Mask, attention
from wc_jax.tools import check_fixture


@pytest.fixture(scope="module")
def dit_dir(fixtures_dir):
  return fixtures_dir / "worldplay" / "dit"


@pytest.fixture(scope="module")
def model(dit_dir):
  return dit_fixture.load_model(dit_dir)


def _inputs(dit_dir, name="inputs_bi_full.npz"):
  return dict(np.load(dit_dir / name))


def test_every_recorded_call_matches_reference(dit_dir, capsys):
  """Full forward (+ intermediates), chunk-causal forward, every AR call, whole rollout."""
  kind, results, ok = check_fixture.run(dit_dir)
  assert kind == "dit"
  names = {r.name for r in results}
  assert {"bi_full/output", "bi_causal/output", "ar/txt_cache/k_txt.0", "ar/c6_ctx/v_vision.1",
          "ar/c6_s1/output", "ar/rollout/latents_final", "ar/rollout/selected_frame_indices"} <= names
  bad = [(r.name, r.max_abs, r.max_rel) for r in results if not r.ok]
  assert ok and not bad, bad
  worst = max(r.max_rel for r in results if r.tol_rel > 0)
  assert worst < 1e-4


def test_check_fixture_cli_rejects_unknown_folder(tmp_path, capsys):
  (tmp_path / "notes.txt").write_text("hello")
  assert check_fixture.main([str(tmp_path)]) == 2
  assert "not a known fixture folder" in capsys.readouterr().err


def test_chunk_causal_forward_equals_ar_cache_path(model, dit_dir):
  """Context at t=14 + target chunk through the chunk-causal forward == context cache + denoise."""
  d = _inputs(dit_dir, "inputs_bi_causal.npz")
  apply, state = functional(model)
  text = dit_fixture._text_inputs(model, d)
  hs = jnp.asarray(d["hidden_states"])
  t = np.full(8, 14.0, np.float32)
  t[4:] = 500.0
  full = apply(state, "forward", hs, jnp.asarray(t), text, action=d["action"], viewmats=d["viewmats"],
               Ks=d["Ks"], causal=True)
  cache = apply(state, "text_cache", text)
  ctx = apply(state, "context_cache", hs[:, :, :4], d["action"][:4], d["viewmats"][:, :4], d["Ks"][:, :4], cache)
  tgt = apply(state, "denoise_chunk", hs[:, :, 4:], jnp.full(4, 500.0), d["action"][4:], d["viewmats"][:, 4:],
              d["Ks"][:, 4:], cache, ctx)
  np.testing.assert_allclose(np.asarray(tgt), np.asarray(full[:, :, 4:]), atol=2e-5, rtol=0)
  # and the causal mask matters: the bidirectional forward differs on the first chunk
  bi = apply(state, "forward", hs, jnp.asarray(t), text, action=d["action"], viewmats=d["viewmats"],
             Ks=d["Ks"], causal=False)
  assert np.abs(np.asarray(bi[:, :, :4]) - np.asarray(full[:, :, :4])).max() > 1e-3


def test_one_context_cache_serves_many_candidates(model, dit_dir):
  d = _inputs(dit_dir, "inputs_bi_causal.npz")
  apply, state = functional(model)
  text = dit_fixture._text_inputs(model, d)
  cache = apply(state, "text_cache", text)
  hs = jnp.asarray(d["hidden_states"])
  ctx = apply(state, "context_cache", hs[:, :, :4], d["action"][:4], d["viewmats"][:, :4], d["Ks"][:, :4], cache)
  g = 3
  noise = jax.random.normal(jax.random.key(0), (g, 4, 4, 4, 6))
  cand = jnp.concatenate([noise, jnp.broadcast_to(hs[:, 4:, 4:], (g, 5, 4, 4, 6))], axis=1)
  bcast = lambda x: jnp.broadcast_to(x, (g,) + x.shape[1:])
  ctx_g = VisionCache(jnp.broadcast_to(ctx.k, ctx.k.shape[:2] + (g,) + ctx.k.shape[3:]),
                      jnp.broadcast_to(ctx.v, ctx.v.shape[:2] + (g,) + ctx.v.shape[3:]), bcast(ctx.valid),
                      bcast(ctx.frames))
  cache_g = cache._replace(k=jnp.broadcast_to(cache.k, cache.k.shape[:1] + (g,) + cache.k.shape[2:]),
                           v=jnp.broadcast_to(cache.v, cache.v.shape[:1] + (g,) + cache.v.shape[2:]),
                           mask=bcast(cache.mask))
  batched = apply(state, "denoise_chunk", cand, jnp.full((g, 4), 700.0), bcast(d["action"][None, 4:]),
                  bcast(d["viewmats"][:, 4:]), bcast(d["Ks"][:, 4:]), cache_g, ctx_g)
  for i in range(g):
    one = apply(state, "denoise_chunk", cand[i:i + 1], jnp.full(4, 700.0), d["action"][4:], d["viewmats"][:, 4:],
                d["Ks"][:, 4:], cache, ctx)
    np.testing.assert_allclose(np.asarray(batched[i:i + 1]), np.asarray(one), atol=1e-5)
  assert np.abs(np.asarray(batched[0] - batched[1])).max() > 1e-3  # different noise -> different velocity


def test_attention_backends_agree_with_masks():
  key = jax.random.split(jax.random.key(1), 3)
  b, lq, h, d = 2, 40, 2, 8
  q, k, v = (jax.random.normal(kk, (b, lq, h, d)) for kk in key)
  valid = jnp.asarray(np.arange(lq)[None] < np.array([[33], [40]]))
  chunk = np.concatenate([np.full(6, -1), np.repeat(np.arange(17), 2)])[:lq].astype(np.int32)
  mask = Mask(kv_valid=valid, q_valid=valid, q_chunk=chunk, kv_chunk=chunk)
  ref = attention(q, k, v, mask, impl="xla")
  flash = attention(q, k, v, mask, impl="xla_flash", block_kv=16)
  np.testing.assert_allclose(np.asarray(flash), np.asarray(ref), atol=1e-5)
  assert np.all(np.asarray(ref)[0, 33:] == 0)            # padded queries return 0
  # a text query (chunk -1) only sees text keys: changing video keys leaves it unchanged
  k2 = k.at[:, 6:].set(0.0)
  np.testing.assert_allclose(np.asarray(attention(q, k2, v, mask)[:, :6]), np.asarray(ref[:, :6]), atol=1e-6)
  with pytest.raises(ValueError, match="unknown attention impl"):
    attention(q, k, v, mask, impl="magic")
  with pytest.raises(ValueError, match=r"expects \[B,L,H,D\]"):
    attention(q[0], k, v)


def test_sharded_forward_equals_single_device(model, dit_dir):
  assert len(jax.devices()) == 8
  d = _inputs(dit_dir)
  apply, state = functional(model)
  text = dit_fixture._text_inputs(model, d)
  args = (jnp.asarray(d["hidden_states"]), jnp.asarray(d["timestep"]), text)
  kw = dict(action=jnp.asarray(d["action"]), viewmats=jnp.asarray(d["viewmats"]), Ks=jnp.asarray(d["Ks"]))
  ref = jax.jit(lambda st, *a: apply(st, "forward", *a, **kw))(state, *args)
  mesh = sharding.make_mesh({"fsdp": 4, "context": 2})
  shardings = sharding.state_shardings(nnx.state(model), mesh)
  with sharding.use_mesh(mesh):
    st = jax.device_put(state, shardings)
    out = jax.jit(lambda st, *a: apply(st, "forward", *a, **kw))(st, *args)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
  # parameters follow the logical rules: (layers, embed, mlp) -> (None, fsdp, tensor->absent)
  fc1 = st["double_blocks"]["img_mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == P(None, "fsdp", None)
  assert len(fc1.addressable_shards) == 8 and fc1.addressable_shards[0].data.shape == (2, 16, 256)
  norm = st["double_blocks"]["img_attn_q_norm"]["weight"]
  assert norm.sharding.spec == P(None, None)


def test_logical_rules_are_the_single_source():
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  assert sharding.logical_to_spec(("layers", "embed", "mlp"), mesh=mesh) == P(None, "fsdp", "tensor")
  assert sharding.logical_to_spec(("activation_batch", "activation_length"), mesh=mesh) == P("fsdp", None)
  with pytest.raises(KeyError, match="no rule"):
    sharding.logical_to_spec(("nonsense",))
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh({"fsdp": 4, "tensor": 4})


def _copy_fixture_ckpt(dit_dir, dst, dtype=None):
  dst.mkdir(parents=True)
  shutil.copy(dit_dir / "config.json", dst / "config.json")
  tensors = load_file(str(dit_dir / "weights.safetensors"))
  if dtype is not None:
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
  save_file(tensors, str(dst / "diffusion_pytorch_model.safetensors"))
  return tensors


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_conversion_round_trip_is_bit_exact(dit_dir, tmp_path, dtype):
  import ml_dtypes
  src = tmp_path / "torch"
  tensors = _copy_fixture_ckpt(dit_dir, src, ml_dtypes.bfloat16 if dtype else None)
  assert convert_cli.main(["--torch", str(src), "--out", str(tmp_path / "orbax")]) == 0
  assert convert_cli.main(["--orbax", str(tmp_path / "orbax"), "--to-torch", str(tmp_path / "back"),
                           "--shard-gb", "0.0005"]) == 0
  index = json.loads((tmp_path / "back" / "diffusion_pytorch_model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 1  # sharded export, read back through the index
  back = {}
  for f in files:
    back.update(load_file(str(tmp_path / "back" / f)))
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert np.array_equal(back[k].view(np.uint8), v.view(np.uint8)), k
  # the exported folder converts again (sharded index input)
  assert convert_cli.main(["--torch", str(tmp_path / "back"), "--out", str(tmp_path / "orbax2")]) == 0


def test_converted_checkpoint_loads_onto_a_mesh(dit_dir, tmp_path):
  src = tmp_path / "torch"
  _copy_fixture_ckpt(dit_dir, src)
  assert convert_cli.main(["--torch", str(src), "--out", str(tmp_path / "o"), "--mesh", "fsdp=8"]) == 0
  from wc_jax.convert.common import load_orbax
  params, meta = load_orbax(tmp_path / "o")
  assert meta["kind"] == "dit" and meta["model_config"]["depth"] == 2
  assert params["double_blocks"]["img_mod"]["kernel"].shape == (2, 64, 384)


def test_conversion_names_missing_unexpected_and_mismatched_keys(dit_dir, tmp_path, capsys):
  src = tmp_path / "torch"
  tensors = _copy_fixture_ckpt(dit_dir, src)
  tensors.pop("double_blocks.1.img_attn_prope_proj.weight")
  tensors["double_blocks.0.extra.weight"] = np.zeros(3, np.float32)
  tensors["final_layer.linear.weight"] = np.zeros((5, 64), np.float32)
  save_file(tensors, str(src / "diffusion_pytorch_model.safetensors"))
  assert convert_cli.main(["--torch", str(src), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "double_blocks.1.img_attn_prope_proj.weight" in err and "missing keys" in err
  assert "double_blocks.0.extra.weight" in err and "unexpected keys" in err
  assert "final_layer.linear.weight: checkpoint (5, 64) vs model (4, 64)" in err


def test_conversion_rejects_unknown_config(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps({"foo": 1}))
  save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "m.safetensors"))
  assert convert_cli.main(["--torch", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
  assert "not a known model kind" in capsys.readouterr().err


def test_bad_inputs_get_clear_errors(model, dit_dir):
  d = _inputs(dit_dir)
  text = dit_fixture._text_inputs(model, d)
  hs = jnp.asarray(d["hidden_states"])
  kw = dict(action=d["action"], viewmats=d["viewmats"], Ks=d["Ks"])
  with pytest.raises(ValueError, match=r"hidden_states must be \[B, 9, T, H, W\]"):
    model.forward(hs[:, :8], d["timestep"], text, **kw)
  with pytest.raises(ValueError, match=r"timestep must have one value per latent frame"):
    model.forward(hs, d["timestep"][:5], text, **kw)
  with pytest.raises(ValueError, match=r"viewmats must be \[B,T,4,4\]"):
    model.forward(hs, d["timestep"], text, action=d["action"], viewmats=d["viewmats"][:, :3], Ks=d["Ks"])
  with pytest.raises(ValueError, match="viewmats .* and Ks .* are required"):
    model.forward(hs, d["timestep"], text, action=d["action"])
  with pytest.raises(ValueError, match=r"text_states must be \[B=1, L, 32\]"):
    model.encode_text(jnp.zeros((1, 4, 31)), jnp.ones((1, 4)), jnp.asarray(d["byt5_text_states"]),
                      jnp.asarray(d["byt5_text_mask"]), jnp.asarray(d["vision_states"]), jnp.zeros(1))
  with pytest.raises(ValueError, match="must be divisible by heads"):
    DiTConfig(hidden_size=64, heads=3)
  with pytest.raises(ValueError, match="must sum to head_dim"):
    DiTConfig(hidden_size=64, heads=2, rope_dims=(8, 8, 8))


def test_padding_tokens_do_not_change_the_output(model, dit_dir):
  """Extra padded text tokens (masked) leave the velocity unchanged."""
  d = _inputs(dit_dir)
  apply, state = functional(model)
  kw = dict(action=d["action"], viewmats=d["viewmats"], Ks=d["Ks"])
  text = dit_fixture._text_inputs(model, d)
  ref = apply(state, "forward", d["hidden_states"], d["timestep"], text, **kw)
  d2 = dict(d)
  d2["text_states"] = np.concatenate([d["text_states"], np.random.randn(1, 5, 32).astype(np.float32)], 1)
  d2["encoder_attention_mask"] = np.concatenate([d["encoder_attention_mask"], np.zeros((1, 5), np.int64)], 1)
  out = apply(state, "forward", d["hidden_states"], d["timestep"], dit_fixture._text_inputs(model, d2), **kw)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_analytic_flops_match_xla_count_for_one_layer():
  """XLA counts a one-layer model exactly (scan body once = the whole model); the analytic
  count (matmuls + attention) must be within the elementwise overhead of it."""
  from wc_jax.models.worldplay import flops
  cfg = DiTConfig(latent_channels=4, out_channels=4, hidden_size=64, heads=2, depth=1, rope_dims=(8, 12, 12),
                  text_dim=32, byt5_in_dim=8, byt5_hidden_dim=8, byt5_out_dim=8, vision_dim=8, remat_policy="none")
  m = build(cfg)
  apply, state = functional(m)
  b, h, w, ctx, lt = 1, 4, 6, 8, 10
  L, H, D = 1, 2, 32
  from wc_jax.models.worldplay.model import TextCache
  tc = TextCache(jnp.zeros((L, b, lt, H, D)), jnp.zeros((L, b, lt, H, D)), jnp.ones((b, lt), bool))
  vc = VisionCache(jnp.zeros((L, 2, b, ctx * h * w, H, D)), jnp.zeros((L, 2, b, ctx * h * w, H, D)),
                   jnp.ones((b, ctx * h * w), bool), jnp.array([ctx], jnp.int32))
  fn = jax.jit(lambda st, x: apply(st, "denoise_chunk", x, jnp.zeros(4), jnp.zeros(4),
                                   jnp.broadcast_to(jnp.eye(4), (1, 4, 4, 4)),
                                   jnp.broadcast_to(jnp.eye(3), (1, 4, 3, 3)), tc, vc))
  cost = fn.lower(state, jnp.zeros((1, 9, 4, h, w))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = flops.ar_chunk_flops(cfg, h * w, 4, ctx, lt)
  assert 1.0 <= cost["flops"] / analytic <= 1.2
