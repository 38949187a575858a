"""The update's Muon: optax.contrib.muon's algorithm and state tree, its Newton-Schulz matmuls split
over the chips (plan's optimizer term), and the analytic FLOPs `plan` counts for it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wc_jax.rl.optim import make_optimizer, muon_dims, optimizer_flops

_STACKED = frozenset({("blocks", "qkv", "kernel"), ("blocks", "qkv", "bias"), ("blocks", "out", "kernel")})


def _params(key=0):
  ks = jax.random.split(jax.random.key(key), 5)
  return {"blocks": {"qkv": {"kernel": jax.random.normal(ks[0], (3, 8, 24)), "bias": jax.random.normal(ks[1], (3, 24))},
                     "out": {"kernel": jax.random.normal(ks[2], (3, 16, 8))}},
          "embed": {"kernel": jax.random.normal(ks[3], (12, 8))}, "norm": jax.random.normal(ks[4], (8,))}


def test_muon_is_optaxs_muon():
  """Same state tree (checkpoints load across the change) and the same steps as optax.contrib.muon."""
  params = _params()
  ours = make_optimizer(lr=1e-2, weight_decay=1e-4, grad_clip=2.0, stacked=_STACKED)
  ref = optax.chain(optax.clip_by_global_norm(2.0), optax.contrib.muon(
      learning_rate=1e-2, beta=0.95, weight_decay=1e-4, adam_b1=0.9, adam_b2=0.999, adam_weight_decay=1e-4,
      muon_weight_dimension_numbers=functools.partial(muon_dims, stacked=_STACKED), consistent_rms=0.2))
  s1, s2 = ours.init(params), ref.init(params)
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  p1 = p2 = params
  for i in range(3):
    g = jax.tree.map(lambda x: 3.0 * jax.random.normal(jax.random.key(10 + i), x.shape), params)
    u1, s1 = jax.jit(ours.update)(g, s1, p1)
    u2, s2 = jax.jit(ref.update)(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))))
  assert err < 1e-5, err
  moved = float(jnp.max(jnp.abs(p1["blocks"]["out"]["kernel"] - params["blocks"]["out"]["kernel"])))
  assert moved > 1e-3   # three Muon steps of lr 1e-2 moved the matrices


def test_optimizer_flops_count_each_matrix_per_layer():
  f = optimizer_flops(_params(), _STACKED)
  ns = lambda m, n: 5 * (4 * m * m * n + 2 * m ** 3)   # rows m <= columns n
  assert f["newton_schulz"] == 3 * ns(8, 24) + 3 * ns(8, 16) + ns(8, 12)   # biases and the norm: AdamW
  assert f["elementwise"] == 12 * (3 * 8 * 24 + 3 * 24 + 3 * 16 * 8 + 12 * 8 + 8)
  assert optimizer_flops(_params(), _STACKED, use_muon=False)["newton_schulz"] == 0


def test_newton_schulz_is_split_over_a_v5p_64_mesh():
  """Compiled for 64 v5p chips (data 2 x context 2 x tensor 16), per chip the optimizer's
  matmuls are 1/64 of the Newton-Schulz FLOPs: optax's muon left them to propagation and every
  chip ran A = X X^T and A @ A whole (~18x over on the 8B update)."""
  pytest.importorskip("libtpu")
  from jax.sharding import NamedSharding, PartitionSpec as P
  from wc_jax import plan, sharding
  mesh = plan.topology_mesh("v5p:4x4x4", {"data": 2, "fsdp": 1, "context": -1, "tensor": 16})
  sds = jax.ShapeDtypeStruct
  shapes = {"blocks": {"qkv": {"kernel": ((2, 256, 768), P(None, None, "tensor"))},
                       "out": {"kernel": ((2, 1024, 256), P(None, "tensor", None))}},
            "embed": {"kernel": ((448, 256), P())}}
  is_leaf = lambda x: isinstance(x, tuple) and isinstance(x[1], P)
  params = jax.tree.map(lambda t: sds(t[0], jnp.float32, sharding=NamedSharding(mesh, t[1])), shapes, is_leaf=is_leaf)
  stacked = frozenset({("blocks", "qkv", "kernel"), ("blocks", "out", "kernel")})
  tx = make_optimizer(stacked=stacked)
  state = jax.tree.map(lambda x: sds(x.shape, x.dtype, sharding=NamedSharding(mesh, P())), jax.eval_shape(tx.init, params))

  def step(p, g, s):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  with sharding.use_mesh(mesh):
    text = jax.jit(step).lower(params, params, state).compile().as_text()
  per_chip = plan.hlo_costs(text)["matmul_flops"]
  expected = optimizer_flops(params, stacked)["newton_schulz"] / 64
  assert np.isclose(per_chip / expected, 1.0, rtol=0.02), per_chip / expected
