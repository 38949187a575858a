"""The device mesh and the logical-axis -> mesh-axis rules, in one place.

Every parameter and key activation in wc_jax names its dimensions with logical
axes ("embed", "heads", "activation_length", ...). This module is the only place
that says which mesh axis each logical axis is split over. The mesh axes are
(data, fsdp, context, tensor):

* data    - pure data parallelism (candidates / batch rows), parameters replicated;
* fsdp    - batch rows AND parameter shards (ZeRO-3 style);
* context - sequence (token) parallelism for long videos;
* tensor  - model (head / MLP) parallelism.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "context"),
    ("activation_kv_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_channels", None),
    # video activations [B, T, H, W, C] (VAE): large frames split by rows over `context`
    ("activation_frames", None),
    ("activation_height", "context"),
    ("activation_width", None),
    # parameters
    ("layers", None),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("qkv", None),
    ("head_dim", None),
    ("norm", None),
    ("in_features", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("kernel_t", None),
    ("kernel_h", None),
    ("kernel_w", None),
    ("modulation", "tensor"),
    ("vocab", None),
)


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a (data, fsdp, context, tensor) mesh.

  `shape` maps axis name -> size (missing axes are 1; one axis may be -1 to take
  the remaining devices). Default: all devices on fsdp.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if shape is None:
    sizes = {"data": 1, "fsdp": -1, "context": 1, "tensor": 1}
  elif isinstance(shape, dict):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  else:
    if len(shape) != len(MESH_AXES):
      raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    sizes = dict(zip(MESH_AXES, (int(s) for s in shape)))
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {free}")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if n % known:
      raise ValueError(f"{n} devices do not divide by the fixed mesh axes product {known}")
    sizes[free[0]] = n // known
  total = int(np.prod(list(sizes.values())))
  if total != n:
    raise ValueError(f"mesh {sizes} needs {total} devices but {n} are available")
  try:
    dev_array = jax.experimental.mesh_utils.create_device_mesh(
        [sizes[a] for a in MESH_AXES], devices=devices)
  except Exception:  # pragma: no cover - odd topologies
    dev_array = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(dev_array, MESH_AXES)


def logical_to_spec(logical_axes: Iterable[str | None] | None,
                    rules: Sequence[tuple[str, object]] = LOGICAL_RULES,
                    mesh: Mesh | None = None) -> P:
  """Maps a tuple of logical axis names to a PartitionSpec with the rules.

  A mesh axis is used at most once per spec (first dimension wins). Mesh axes
  that are absent from `mesh` or have size 1 are dropped.
  """
  if logical_axes is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in logical_axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no rule in wc_jax.sharding.LOGICAL_RULES")
    target = table[name]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    keep = []
    for a in axes:
      if a in used:
        continue
      if mesh is not None and (a not in mesh.shape or mesh.shape[a] == 1):
        continue
      keep.append(a)
      used.add(a)
    out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
  return P(*out)


def named_sharding(mesh: Mesh, logical_axes) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, mesh=mesh))


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide the dimension they would split."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if entry is None:
      out.append(None)
      continue
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    keep, size = [], 1
    for a in axes:
      if dim % (size * mesh.shape[a]) == 0:
        keep.append(a)
        size *= mesh.shape[a]
    out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
  return P(*out)


def logical_axes_of(variable) -> tuple | None:
  """The logical axis names attached to an nnx.Variable (flax stores them as out_sharding)."""
  meta = variable.get_metadata()
  for key in ("out_sharding", "sharding_names", "sharding"):
    names = meta.get(key)
    if names:
      return tuple(names)
  return None


def stacked_layer_paths(state) -> frozenset:
  """Key paths of the parameters whose first logical axis is "layers" (stacked by nnx.vmap and
  run with nnx.scan), read from the Variables' metadata."""
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return frozenset(path_keys(p) for p, v in flat
                   if isinstance(v, nnx.Variable) and (logical_axes_of(v) or (None,))[0] == "layers")


def state_shardings(state, mesh: Mesh):
  """NamedShardings for an nnx.State, from each Variable's `sharding_names` metadata."""
  def one(x):
    names = None
    value = x
    if isinstance(x, nnx.Variable):
      names = logical_axes_of(x)
      value = x.get_value() if hasattr(x, "get_value") else x.value
    shape = getattr(value, "shape", ())
    spec = logical_to_spec(names, mesh=mesh) if names else P()
    return NamedSharding(mesh, fit_spec(spec, tuple(shape), mesh))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, logical_axes) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside a mesh context."""
  mesh = current_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = fit_spec(logical_to_spec(logical_axes, mesh=mesh), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def current_mesh():
  """The mesh of the enclosing `use_mesh` block (abstract), or None."""
  try:
    m = jax.sharding.get_abstract_mesh()
    if m is not None and not m.empty:
      return m
  except Exception:  # pragma: no cover
    pass
  return None


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
  """Sets `mesh` as the current mesh (jax.set_mesh) for the enclosed block."""
  with jax.set_mesh(mesh):
    yield mesh


def path_keys(path) -> tuple[str, ...]:
  """A jax key path as plain strings, e.g. ('double_blocks', 'img_mod', 'kernel', 'value')."""
  out = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        out.append(str(getattr(p, attr)))
        break
    else:
      out.append(str(p))
  return tuple(out)


def shardings_like_params(tree, params, param_shardings, mesh: Mesh):
  """Shardings for a tree that embeds copies of the parameter tree (optimizer moments, EMAs):
  a leaf whose path ends with a parameter's path and has its shape gets that parameter's
  sharding; anything else (step counters, scalars) is replicated."""
  table = {}
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings)):
    table[path_keys(path)] = (tuple(leaf.shape), sh)
  replicated = NamedSharding(mesh, P())

  def one(path, leaf):
    keys = path_keys(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for i in range(len(keys)):
      hit = table.get(keys[i:])
      if hit is not None and hit[0] == shape:
        return hit[1]
    return replicated
  return jax.tree_util.tree_map_with_path(one, tree)
