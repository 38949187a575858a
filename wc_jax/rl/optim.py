"""The WorldCompass optimizer: Muon for >=2-D weights, AdamW for the rest.

Muon's update is rescaled to 0.2 * sqrt(max(fan_in, fan_out)) (optax's consistent_rms),
the reference's lr scaling; stacked per-layer kernels [L, in, out] are orthogonalised per
layer. Global-norm clipping 2.0, weight decay 1e-4, constant lr 1e-5, gradient
accumulation with optax.MultiSteps.

The Muon transform is optax.contrib.muon's algorithm and state tree (nesterov momentum,
Frobenius preconditioning, the quintic Newton-Schulz iteration), with one change: on a mesh
the Newton-Schulz iterates are split by rows over every mesh axis. optax's version leaves
their sharding to propagation, and XLA then runs each A = X X^T, A @ A on every chip whole
(the 8B update did the optimizer's matmuls ~18x over on v5p-64, docs/performance.md).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from optax.contrib import MuonDimensionNumbers, MuonState

from wc_jax import sharding
from wc_jax.sharding import path_keys

NS_STEPS = 5                              # optax's default Newton-Schulz iterations
NS_COEFFS = (3.4445, -4.775, 2.0315)      # optax's default quintic coefficients


def muon_dims(params, stacked: frozenset = frozenset()):
  """Per leaf: MuonDimensionNumbers for matrices (stacked ones per layer), None -> AdamW.

  `stacked`: key paths of per-layer stacked parameters [L, ...] (`sharding.stacked_layer_paths`
  reads them from the model's "layers" axis metadata); their leading axis is not a matrix axis."""
  def one(path, x):
    keys = path_keys(path)
    core = x.ndim - (1 if any(keys[:len(p)] == p for p in stacked) else 0)
    if core < 2:
      return None
    if core == 2:
      off = x.ndim - 2
      return MuonDimensionNumbers(reduction_axis=off, output_axis=off + 1)
    return None   # >2-D cores (conv kernels) go to AdamW
  return jax.tree_util.tree_map_with_path(one, params)


@functools.lru_cache(maxsize=32)   # one object per setting: jitted steps keyed on it are shared
def make_optimizer(lr: float = 1e-5, weight_decay: float = 1e-4, grad_clip: float = 2.0, grad_accum: int = 1,
                   use_muon: bool = True, muon_rms: float = 0.2, b1: float = 0.9, b2: float = 0.999,
                   muon_beta: float = 0.95, stacked: frozenset = frozenset()) -> optax.GradientTransformation:
  if lr <= 0:
    raise ValueError(f"lr must be > 0, got {lr}")
  if grad_accum < 1:
    raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
  if use_muon:
    core = muon(lr, beta=muon_beta, weight_decay=weight_decay, b1=b1, b2=b2, consistent_rms=muon_rms,
                dims=functools.partial(muon_dims, stacked=stacked))
  else:
    core = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  tx = optax.chain(optax.clip_by_global_norm(grad_clip), core)
  if grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum)
  return tx


# ----------------------------------------------------------------------------- Muon, rows split over the mesh

def _is_dims(x) -> bool:
  return x is None or isinstance(x, MuonDimensionNumbers)


def _matrix_axes(x, d: MuonDimensionNumbers) -> tuple[tuple[int, ...], tuple[int, ...]]:
  norm = lambda a: tuple(i % x.ndim for i in ((a,) if isinstance(a, int) else a))
  return norm(d.reduction_axis), norm(d.output_axis)


def _row_constraint(x):
  """x [B, m, n]: rows over as many mesh axes as divide m (all of them for the 8B widths), or
  nothing off a mesh. Each chip then computes its rows of X X^T, A @ A and B @ X against
  all-gathered X and A: the iteration's FLOPs are split, not repeated."""
  mesh = sharding.current_mesh()
  if mesh is None:
    return x
  axes = tuple(a for a in sharding.MESH_AXES if mesh.shape.get(a, 1) > 1)
  spec = sharding.fit_spec(P(None, axes or None, None), tuple(x.shape), mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def orthogonalize(x, d: MuonDimensionNumbers, steps: int = NS_STEPS, coeffs=NS_COEFFS, eps: float = 1e-8):
  """Newton-Schulz orthogonalisation of the matrices of x (reduction x output axes; the other
  axes, e.g. stacked layers, are a batch): X <- c0 X + (c1 A + c2 A A) X with A = X X^T,
  on the wide orientation (rows <= columns), after dividing by the Frobenius norm."""
  red, out = _matrix_axes(x, d)
  batch = tuple(i for i in range(x.ndim) if i not in red + out)
  perm = batch + red + out
  size = lambda axes: math.prod(x.shape[i] for i in axes)
  m = x.transpose(perm).reshape(size(batch), size(red), size(out))
  tall = m.shape[1] > m.shape[2]
  if tall:
    m = jnp.swapaxes(m, 1, 2)
  m = m / (jnp.sqrt(jnp.sum(jnp.square(m), axis=(1, 2), keepdims=True)) + eps)
  c0, c1, c2 = (jnp.asarray(c, m.dtype) for c in coeffs)

  def step(_, m):   # a loop, not unrolled: one body per matrix shape to compile
    a = _row_constraint(jnp.einsum("bik,bjk->bij", m, m))
    aa = _row_constraint(jnp.einsum("bik,bkj->bij", a, a))
    return _row_constraint(c0 * m + jnp.einsum("bik,bkj->bij", c1 * a + c2 * aa, m))
  m = jax.lax.fori_loop(0, steps, step, _row_constraint(m))
  if tall:
    m = jnp.swapaxes(m, 1, 2)
  shape = tuple(x.shape[i] for i in perm)
  inv = tuple(sorted(range(x.ndim), key=lambda i: perm[i]))
  return m.reshape(shape).transpose(inv)


def scale_by_muon(dims, beta: float = 0.95, steps: int = NS_STEPS, eps: float = 1e-8) -> optax.GradientTransformation:
  """Nesterov momentum, then Newton-Schulz (`orthogonalize`); state as optax's MuonState."""
  def init(params):
    return MuonState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                     ns_coeffs=jnp.asarray(NS_COEFFS))

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    mu_hat = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g,
                          optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                          optax.tree.bias_correction(updates, beta, count))
    out = jax.tree.map(lambda x, d: orthogonalize(x, d, steps, eps=eps), mu_hat, dims(updates), is_leaf=_is_dims)
    return out, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)
  return optax.GradientTransformation(init, update)


def scale_by_rms_shape(dims, consistent_rms: float) -> optax.GradientTransformation:
  """Scales each orthogonalised update by consistent_rms * sqrt(max(fan_in, fan_out))."""
  def one(x, d):
    red, out = _matrix_axes(x, d)
    fan_in, fan_out = math.prod(x.shape[i] for i in red), math.prod(x.shape[i] for i in out)
    return x * (math.sqrt(max(fan_in, fan_out)) * consistent_rms)
  return optax.GradientTransformation(optax.init_empty_state,
                                      lambda u, s, p=None: (jax.tree.map(one, u, dims(u), is_leaf=_is_dims), s))


def muon(lr: float, *, dims, beta: float = 0.95, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
         consistent_rms: float = 0.2, eps: float = 1e-8) -> optax.GradientTransformation:
  """optax.contrib.muon's composition (the same state tree): `dims(params)` gives each leaf's
  MuonDimensionNumbers (Muon) or None (AdamW)."""
  def labels(params):
    return jax.tree.map(lambda d, x: jax.tree.map(lambda _: "adam" if d is None else "muon", x), dims(params), params,
                        is_leaf=_is_dims)

  def masked_dims(params):   # the Muon partition's tree: AdamW leaves masked out
    mask = jax.tree.map(lambda label: label == "muon", labels(params))
    return jax.tree.map(lambda d, m: jax.tree.map(lambda keep: d if keep else optax.MaskedNode(), m), dims(params),
                        mask, is_leaf=lambda x: _is_dims(x) or isinstance(x, optax.MaskedNode))

  return optax.partition(
      transforms={
          "muon": optax.chain(scale_by_muon(masked_dims, beta=beta, eps=eps),
                              scale_by_rms_shape(masked_dims, consistent_rms),
                              optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(lr)),
          "adam": optax.adamw(learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, nesterov=True)},
      param_labels=labels)


def optimizer_flops(params, stacked: frozenset = frozenset(), use_muon: bool = True, steps: int = NS_STEPS) -> dict:
  """FLOPs of one optimizer step (for `plan`'s analytic count). `newton_schulz`: per Muon matrix
  (m <= n after orienting it wide, times its stacked layers) `steps` x (X X^T 2m^2n + A A 2m^3
  + B X 2m^2n); `elementwise`: ~12 per parameter (moments, bias correction, decay, the update),
  not matmul work."""
  ns = 0.0
  if use_muon:
    for x, d in zip(jax.tree.leaves(params), jax.tree.leaves(muon_dims(params, stacked), is_leaf=_is_dims)):
      if d is None:
        continue
      red, out = _matrix_axes(x, d)
      m, n = sorted((math.prod(x.shape[i] for i in red), math.prod(x.shape[i] for i in out)))
      batch = math.prod(x.shape) // (m * n)
      ns += batch * steps * (4.0 * m * m * n + 2.0 * m ** 3)
  return {"newton_schulz": ns, "elementwise": 12.0 * sum(math.prod(x.shape) for x in jax.tree.leaves(params))}
