"""The WorldCompass optimizer: Muon for >=2-D weights, AdamW for the rest.

Muon's update is rescaled to 0.2 * sqrt(max(fan_in, fan_out)) (optax's consistent_rms),
the reference's lr scaling; stacked per-layer kernels [L, in, out] are orthogonalised per
layer. Global-norm clipping 2.0, weight decay 1e-4, constant lr 1e-5, gradient
accumulation with optax.MultiSteps.
"""
from __future__ import annotations

import functools

import jax
import optax
from optax.contrib import MuonDimensionNumbers

from wc_jax.sharding import path_keys


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
    core = optax.contrib.muon(learning_rate=lr, beta=muon_beta, weight_decay=weight_decay, adam_b1=b1, adam_b2=b2,
                              adam_weight_decay=weight_decay, muon_weight_dimension_numbers=functools.partial(muon_dims, stacked=stacked),
                              consistent_rms=muon_rms)
  else:
    core = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  tx = optax.chain(optax.clip_by_global_norm(grad_clip), core)
  if grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum)
  return tx
