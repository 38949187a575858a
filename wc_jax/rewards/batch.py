"""Scoring a group of candidates at once, sharded over the mesh's data axes.

The reward functions score one candidate and are jit-compiled; `jax.vmap`
turns each into a batched program (compiled once per batch shape). This module
places the candidate axis on the mesh axes that logical "activation_batch"
maps to (data, fsdp), padding it to a multiple of their size when needed
(12 candidates on 8 devices -> 16 rows, 2 per device; the padding rows repeat
the last candidate and are cut from the result).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wc_jax import sharding


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
  spec = sharding.logical_to_spec(("activation_batch",), mesh=mesh)
  entry = spec[0] if len(spec) else None
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def data_shards(mesh: Mesh) -> int:
  """How many ways the candidate (batch) axis splits on `mesh`: the product of its batch axes."""
  return int(np.prod([mesh.shape[a] for a in _batch_axes(mesh)] or [1]))


def candidate_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of an [N,...] candidate array: N over the batch mesh axes, the rest replicated."""
  axes = _batch_axes(mesh)
  first = None if not axes else (axes[0] if len(axes) == 1 else axes)
  return NamedSharding(mesh, P(first, *([None] * (ndim - 1))))


def score_candidates(reward_fn: Callable, *candidates, mesh: Mesh | None = None,
                     pad: bool = True):
  """Scores every candidate: `jax.vmap(reward_fn)(*candidates)`.

  Args:
    reward_fn: one-candidate reward taking the per-candidate slices of
      `candidates` positionally; close over models and options, e.g.
      `lambda f, a: interaction_reward(f, a, pose_model)`.
    *candidates: arrays (or pytrees of arrays) with a leading candidate axis N.
    mesh: if given, candidates are sharded over its data axes (data, fsdp) and
      the reward runs there.
    pad: pad N to a multiple of the data-axis size (else N must divide).

  Returns:
    reward_fn's outputs with a leading [N] axis.
  """
  leaves = jax.tree.leaves(candidates)
  if not leaves:
    raise ValueError("score_candidates: no candidate arrays given")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"score_candidates: every candidate array needs the same leading axis N, "
                     f"got leading sizes {sorted(map(str, sizes))}")
  n = sizes.pop()
  if n < 1:
    raise ValueError("score_candidates: no candidates (N = 0)")
  batched = jax.vmap(reward_fn)
  if mesh is None:
    return batched(*candidates)
  shards = data_shards(mesh)
  total = -(-n // shards) * shards
  if total != n and not pad:
    raise ValueError(f"score_candidates: {n} candidates do not divide over {shards} data shards "
                     f"(pass pad=True)")

  def place(x):
    x = jnp.asarray(x)
    if total != n:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], total - n, axis=0)], axis=0)
    return jax.device_put(x, candidate_sharding(mesh, x.ndim))

  placed = jax.tree.map(place, candidates)
  with sharding.use_mesh(mesh):
    out = batched(*placed)
  return jax.tree.map(lambda y: y[:n], out)
