"""Work split over the chips (issue 14 part 1): sequence-parallel attention equals the unsharded
kernel, the WorldPlay AR pass gives the same velocity with the candidates over `data`, the
queries over `context` and the heads over `tensor`, and an activation axis the mesh cannot split
is a logged decision (or, strictly, an error naming the tensor, axis and sizes)."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax import sharding
from wc_jax.nn.attention import Mask, attention


def _qkv(b=4, lq=64, lk=96, h=4, d=16, seed=0):
  ks = jax.random.split(jax.random.key(seed), 5)
  q, k, v = (jax.random.normal(kk, (b, n, h, d), jnp.float32) for kk, n in zip(ks[:3], (lq, lk, lk)))
  kv_valid = jax.random.uniform(ks[3], (b, lk)) > 0.3
  q_valid = jax.random.uniform(ks[4], (b, lq)) > 0.1
  return q, k, v, Mask(kv_valid=kv_valid, q_valid=q_valid)


@pytest.mark.parametrize("impl", ["xla", "xla_flash"])
def test_sequence_parallel_attention_equals_unsharded(impl):
  q, k, v, mask = _qkv()
  want = attention(q, k, v, mask, impl=impl, block_kv=32)
  mesh = sharding.make_mesh({"data": 2, "context": 2, "tensor": 2})
  fn = jax.jit(lambda q, k, v, kv, qv: attention(q, k, v, Mask(kv_valid=kv, q_valid=qv), impl=impl, block_kv=32))
  with sharding.use_mesh(mesh):
    text = fn.lower(q, k, v, mask.kv_valid, mask.q_valid).as_text()
    got = fn(q, k, v, mask.kv_valid, mask.q_valid)
  assert "shard_map" in text or "sdy.manual_computation" in text or "custom_call" in text
  print(f"\n{impl}: sequence-parallel vs unsharded max |diff| {float(jnp.max(jnp.abs(got - want))):.2e}")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_sequence_parallel_attention_splits_the_queries_per_chip():
  q, k, v, mask = _qkv()
  mesh = sharding.make_mesh({"data": 2, "context": 2, "tensor": 2})
  seen = []

  def local(q, k, v, m):
    seen.append((q.shape, k.shape))
    from wc_jax.nn.attention import _xla
    return _xla(q, k, v, m)

  from wc_jax.nn import attention as attn
  with sharding.use_mesh(mesh):
    jax.jit(lambda q, k, v: attn._sharded(local, q, k, v, mask)).lower(q, k, v)
  # per chip: 2 of the 4 rows (data), 32 of the 64 queries (context), 2 of the 4 heads (tensor),
  # and every one of the 96 keys
  assert seen == [((2, 32, 2, 16), (2, 96, 2, 16))]


def test_an_unsplittable_activation_is_logged_or_an_error(caplog):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  x = jnp.ones((6, 8, 4))
  axes = ("activation_batch", "activation_length", "activation_embed")
  with sharding.use_mesh(mesh):
    with pytest.raises(sharding.UnsplittableAxisError,
                       match=r"kept samples \(6, 8, 4\): logical axis 'activation_batch' \(dimension 0, size 6\) "
                             r"cannot be split over mesh axes \('data', 'fsdp'\) = 8 ways \(data=2, fsdp=4\)"):
      with sharding.strict_activations():
        jax.jit(lambda x: sharding.constrain(x, axes, "kept samples")).lower(x)
    with caplog.at_level(logging.WARNING, logger="wc_jax.sharding"), sharding.record_replication() as rec:
      out = jax.jit(lambda x: sharding.constrain(x, axes, "kept samples"))(x)
    # logged (once) and recorded; the batch keeps the split that divides it (data) and is
    # replicated over fsdp
    assert len(rec) == 1 and "['fsdp'] would leave it replicated" in rec[0]
    assert any("kept samples (6, 8, 4)" in r.getMessage() for r in caplog.records)
    assert out.sharding.spec[0] == "data"
    # a batch-1 axis (a shared conditioning) has nothing to split: replicated by rule, silently
    with sharding.strict_activations(), sharding.record_replication() as rec:
      jax.jit(lambda x: sharding.constrain(x, axes, "shared")).lower(jnp.ones((1, 8, 4)))
    assert rec == []


def test_worldplay_ar_pass_is_the_same_split_over_data_context_tensor():
  """The RL update's pass (denoise_chunk against batch-1 caches) with 4 candidates over data=2,
  the chunk's tokens over context=2 and the heads over tensor=2 equals the single-device result;
  nothing is replicated against the rules."""
  from wc_jax.models.worldplay.config import DiTConfig
  from wc_jax.models.worldplay.model import WorldPlayDiT, functional
  from wc_jax.rl import programs
  from flax import nnx
  cfg = DiTConfig(latent_channels=4, out_channels=4, hidden_size=64, heads=4, depth=1, mlp_ratio=2.0,
                  rope_dims=(4, 6, 6), text_dim=32, refiner_depth=1, byt5_in_dim=16, byt5_hidden_dim=32,
                  byt5_out_dim=64, vision_dim=24, chunk_latents=2, dtype="float32")
  model = WorldPlayDiT(cfg, rngs=nnx.Rngs(0))
  from wc_jax.models.worldplay.model import randomize
  randomize(model, 1)
  apply, state = functional(model)
  ks = jax.random.split(jax.random.key(2), 8)
  b, c, t, h, w = 4, cfg.latent_channels, cfg.chunk_latents, 4, 4
  text = apply(state, "encode_text", jax.random.normal(ks[0], (1, 6, 32)), jnp.ones((1, 6), bool),
               jax.random.normal(ks[1], (1, 3, 16)), jnp.ones((1, 3), bool), jax.random.normal(ks[2], (1, 2, 24)), 0.0)
  tc = apply(state, "text_cache", text)
  eye = jnp.broadcast_to(jnp.eye(4), (1, 2 * t, 4, 4))
  kk = jnp.broadcast_to(jnp.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]), (1, 2 * t, 3, 3))
  ctx_in = jax.random.normal(ks[3], (1, 2 * c + 1, 2 * t, h, w))
  ctx = apply(state, "context_cache", ctx_in, jnp.zeros((1, 2 * t)), eye, kk, tc)
  hs = jax.random.normal(ks[4], (b, 2 * c + 1, t, h, w))
  args = (hs, jnp.full((b, t), 500.0), jnp.zeros((b, t)), jnp.broadcast_to(eye[:, :t], (b, t, 4, 4)),
          jnp.broadcast_to(kk[:, :t], (b, t, 3, 3)), tc, ctx)
  fn = jax.jit(lambda st, *a: apply(st, "denoise_chunk", *a))
  want = fn(state, *args)
  mesh = sharding.make_mesh({"data": 2, "context": 2, "tensor": 2})
  st_shard = sharding.state_shardings(state, mesh)
  with sharding.use_mesh(mesh), sharding.strict_activations(), sharding.record_replication() as rec:
    placed = jax.device_put(state, st_shard)
    hs_s = jax.device_put(hs, NamedSharding(mesh, P("data")))
    tc_s = jax.tree.map(lambda x: x, tc)._replace(k=jax.device_put(tc.k, programs.kv_sharding(tc.k, mesh)),
                                                 v=jax.device_put(tc.v, programs.kv_sharding(tc.v, mesh)))
    got = fn(placed, hs_s, *args[1:5], tc_s, ctx)
  assert rec == []
  print(f"\nAR pass on data=2 x context=2 x tensor=2 vs one device: max |diff| "
        f"{float(jnp.max(jnp.abs(got - want))):.2e} (|v| <= {float(jnp.max(jnp.abs(want))):.2f})")
  assert programs.kv_sharding(tc.k, mesh).spec == P(None, None, None, "tensor", None)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)
