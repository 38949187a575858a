"""The device mesh and the logical-axis -> mesh-axis rules, in one place.

Every parameter and key activation in wc_jax names its dimensions with logical
axes ("embed", "heads", "activation_length", ...). This module is the only place
that says which mesh axis each logical axis is split over. The mesh axes are
(data, fsdp, context, tensor):

* data    - pure data parallelism (candidates / batch rows), parameters replicated;
* fsdp    - batch rows AND parameter shards (ZeRO-3 style);
* context - sequence (token) parallelism for long videos;
* tensor  - model (head / MLP) parallelism.

No silent replication of activations: `constrain` splits an activation as the rules say or
says why not. An axis of size 1 (a conditioning shared by a batch, a batch-1 cache) has nothing
to split and is replicated by rule; any other axis that a mesh axis does not divide is logged
once (tensor, logical axis, sizes) and replicated, or, inside `strict_activations()` (what
`python -m wc_jax.plan` compiles under), an error naming them. Parameters that do not divide
keep their fallback (the dimension replicated), logged once per parameter shape.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from typing import Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

log = logging.getLogger("wc_jax.sharding")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "context"),
    # keys/values a query attends to (and the K/V caches' token axis): whole on every chip; the
    # queries are split over `context` (sequence-parallel attention all-gathers the chunk's K/V)
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
  return Mesh(_device_array(sizes, devices), MESH_AXES)


def num_slices(devices: Sequence[jax.Device] | None = None) -> int:
  """How many TPU slices the run spans: MEGASCALE_NUM_SLICES (set by Cloud TPU multislice), or
  the distinct `slice_index` of the devices; 1 for one slice, GPUs and CPUs."""
  env = os.environ.get("MEGASCALE_NUM_SLICES", "").strip()
  if env:
    return max(1, int(env))
  return len({getattr(d, "slice_index", 0) for d in (devices if devices is not None else jax.devices())})


def _device_array(sizes: dict[str, int], devices: list) -> np.ndarray:
  """The devices laid out as the mesh. Several slices (multislice): `data` is split across the
  slices, over the data-centre network (DCN), and the other axes stay inside a slice, on its
  inter-chip links (ICI). A layout that does not follow the topology is an error naming the axes,
  never a silent reshape: a mesh that ignores the topology runs, but its collectives are slow."""
  from jax.experimental import mesh_utils
  shape = [sizes[a] for a in MESH_AXES]
  platform = devices[0].platform if devices else "cpu"
  slices = num_slices(devices)
  if slices > 1:
    if sizes["data"] % slices:
      raise ValueError(f"mesh {sizes}: the run spans {slices} slices (MEGASCALE_NUM_SLICES), and the `data` "
                       f"axis is the one split across them, so mesh.data must be a multiple of {slices} "
                       f"(e.g. --config.mesh.data={slices} --config.mesh.fsdp=-1)")
    ici = [sizes["data"] // slices] + shape[1:]
    dcn = [slices] + [1] * (len(MESH_AXES) - 1)
    try:
      return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    except Exception as e:
      raise ValueError(f"mesh {sizes} over {slices} slices: per-slice axes {dict(zip(MESH_AXES, ici))} (ICI) x "
                       f"{dict(zip(MESH_AXES, dcn))} across slices (DCN) do not fit the {len(devices)} "
                       f"{devices[0].device_kind} devices: {e}") from None
  if platform == "cpu":           # no physical topology to follow
    return np.asarray(devices).reshape(shape)
  try:
    return mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:   # e.g. data=2 x context=2 on a 4x4x4 slice: split one physical axis of 4 into 2 x 2
    pass
  try:
    arr = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    log.info("mesh %s: laid out by splitting physical axes of the %d %s devices", sizes, len(devices),
             devices[0].device_kind)
    return arr
  except Exception as e:
    raise ValueError(f"mesh {sizes} (axes {MESH_AXES}, shape {tuple(shape)}) cannot follow the topology of the "
                     f"{len(devices)} {devices[0].device_kind} devices: {e}. Choose axis sizes that split the "
                     f"chips along the slice's physical axes (e.g. put all devices on one axis)") from None


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


def activation_sharding(mesh: Mesh, logical_axes, shape, name: str = "") -> NamedSharding:
  """Where an activation-like input lives (candidates, kept samples, caches): the rules' split,
  with `check_spec`'s decision (rule, log or error) for an axis the mesh does not divide."""
  spec = check_spec(logical_to_spec(logical_axes, mesh=mesh), tuple(shape), mesh, logical_axes, name)
  return NamedSharding(mesh, spec)


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide the dimension they would split (parameters and other
  placements that may legitimately not divide; activations go through `check_spec`)."""
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


class UnsplittableAxisError(ValueError):
  """An activation axis that the sharding rules split over mesh axes that do not divide it."""


_STRICT = contextvars.ContextVar("wc_jax_strict_activations", default=False)
_RECORD = contextvars.ContextVar("wc_jax_replication_record", default=None)
_LOGGED: set = set()


@contextlib.contextmanager
def record_replication():
  """Collects, as a list of messages, every activation replicated (not split as the rules say)
  while tracing inside the block: `plan` reports them as `replicated_activations`."""
  out: list[str] = []
  token = _RECORD.set(out)
  try:
    yield out
  finally:
    _RECORD.reset(token)


@contextlib.contextmanager
def strict_activations(on: bool = True):
  """Inside this block an activation that cannot be split as the rules say is an error
  (`UnsplittableAxisError`) instead of a logged replication. `plan` compiles under it."""
  token = _STRICT.set(on)
  try:
    yield
  finally:
    _STRICT.reset(token)


def _mesh_sizes(mesh) -> dict:
  return dict(mesh.shape)


def check_spec(spec: P, shape: tuple[int, ...], mesh, logical_axes=None, name: str = "") -> P:
  """`spec` with every mesh axis that does not divide its dimension removed, and a decision for
  each removal: a dimension of size 1 is replicated by rule (nothing to split); any other is
  logged once (or raised inside `strict_activations()`), naming the tensor, the logical axis,
  the dimension and the mesh axes."""
  fitted = fit_spec(spec, shape, mesh)
  sizes = _mesh_sizes(mesh)
  names = tuple(logical_axes) if logical_axes is not None else (None,) * len(shape)
  names = names + (None,) * (len(shape) - len(names))
  for i, (dim, want, got) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape), tuple(fitted) + (None,) * len(shape))):
    if want == got or dim == 1:
      continue
    want_t = (want,) if isinstance(want, str) else tuple(want)
    got_t = () if got is None else (got,) if isinstance(got, str) else tuple(got)
    dropped = [a for a in want_t if a not in got_t]
    split = int(np.prod([sizes[a] for a in want_t]))
    what = name or "activation"
    msg = (f"{what} {tuple(shape)}: logical axis {names[i]!r} (dimension {i}, size {dim}) cannot be split over "
           f"mesh axes {want_t} = {split} ways ({', '.join(f'{a}={sizes[a]}' for a in want_t)}); "
           f"{dropped} would leave it replicated on every chip of {dropped}. Choose mesh sizes that divide {dim} "
           f"(e.g. --config.mesh.data / fsdp / context) or a batch that the data axes divide")
    if _STRICT.get():
      raise UnsplittableAxisError(msg)
    rec = _RECORD.get()
    if rec is not None and msg not in rec:
      rec.append(msg)
    key = (what, tuple(shape), tuple(sorted(sizes.items())), i)
    if key not in _LOGGED:
      _LOGGED.add(key)
      log.warning("replicated: %s", msg)
  return fitted


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
      if not jax.tree.leaves(value):   # e.g. an optimizer partition that masked this parameter out
        return x
    shape = tuple(getattr(value, "shape", ()))
    spec = logical_to_spec(names, mesh=mesh) if names else P()
    fitted = fit_spec(spec, shape, mesh)
    if tuple(x for x in fitted if x is not None) != tuple(x for x in spec if x is not None):
      # a parameter dimension the mesh axis does not divide: replicated, said once
      key = ("param", names, shape, tuple(sorted(dict(mesh.shape).items())))
      if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("parameter %s %s: spec %s does not divide its shape on mesh %s; using %s", names, shape, spec,
                 dict(mesh.shape), fitted)
    return NamedSharding(mesh, fitted)
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, logical_axes, name: str = "") -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside a mesh context. An axis the
  mesh cannot split as the rules say is replicated with a logged line, or an error inside
  `strict_activations()` (see `check_spec`)."""
  mesh = current_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = check_spec(logical_to_spec(logical_axes, mesh=mesh), tuple(x.shape), mesh, logical_axes, name)
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
