"""Depth Anything 3 checkpoints: reference (PyTorch safetensors) <-> wc_jax params.

The key map is derived from the model itself: every wc_jax layer declares how its
parameters are named and laid out in torch (`TORCH` in models/da3/layers.py), and
the module path gives the rest, with two renames: `backbone.` <-> `backbone.pretrained.`,
and the one auxiliary-head LayerNorm that the reference shares between its four
`head.scratch.output_conv2_aux.{i}.2` slots. HF checkpoints prefix every key with
`model.`; folders with and without it are accepted.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, TensorSource, check_keys
from wc_jax.models.da3 import config as da3_config
from wc_jax.models.da3 import model as da3_model
from wc_jax.models.da3.config import DA3Config
from wc_jax.sharding import logical_to_spec

KIND = kinds.DA3
STRIP_PREFIX = "model."
TORCH_FILENAME = "model.safetensors"

_SHARED_AUX_NORM = "head.scratch.output_conv2_aux_norm"


def matches(config: dict) -> bool:
  """An HF DA3 config (`model_name: da3-...`) or an architecture dump with a DINO backbone."""
  if not isinstance(config, dict):
    return False
  name = config.get("model_name")
  if isinstance(name, str) and name.lower().startswith("da3"):
    return True
  arch = config.get("architecture")
  return (isinstance(arch, dict) and isinstance(arch.get("backbone"), dict)
          and arch["backbone"].get("type") == "DinoVisionTransformer")


def abstract_model(cfg: DA3Config):
  """The model with ShapeDtypeStructs instead of arrays (nothing allocated)."""
  return da3_model.abstract_model(cfg)


def _torch_prefixes(path: tuple, cfg: DA3Config) -> list[str]:
  dotted = ".".join(str(p) for p in path)
  if dotted == _SHARED_AUX_NORM:
    return [f"head.scratch.output_conv2_aux.{i}.2" for i in range(cfg.aux_pyramid_levels)]
  if dotted.startswith("backbone."):
    dotted = "backbone.pretrained." + dotted[len("backbone."):]
  return [dotted]


def key_map(cfg: DA3Config, model=None) -> Iterator[tuple[tuple, list[str], object, object, tuple]]:
  """Yields (wc_jax param path, torch keys, to_torch, from_torch, torch shape) per parameter."""
  model = abstract_model(cfg) if model is None else model
  for path, node in nnx.iter_graph(model):
    spec = getattr(type(node), "TORCH", None)
    if spec is None or not isinstance(node, nnx.Module):
      continue
    for leaf, (torch_leaf, to_torch, from_torch) in spec.items():
      var = getattr(node, leaf, None)
      if var is None:
        continue
      shape = tuple(var.shape)
      tshape = tuple(to_torch(np.empty(shape, np.bool_)).shape)
      keys = [p if torch_leaf is None else f"{p}.{torch_leaf}" for p in _torch_prefixes(path, cfg)]
      yield tuple(path) + (leaf,), keys, to_torch, from_torch, tshape


def expected_shapes(cfg: DA3Config) -> dict[str, tuple[int, ...]]:
  """Reference state-dict key -> shape for a config (ignored sub-modules excluded)."""
  out = {}
  for _, keys, _, _, tshape in key_map(cfg):
    for k in keys:
      out[k] = tshape
  return out


class _Filtered:
  """A TensorSource view without the keys of sub-modules wc_jax does not build."""

  def __init__(self, source, prefixes):
    self._s, self._p = source, tuple(prefixes)

  def keys(self):
    return [k for k in self._s.keys() if not k.startswith(self._p)]

  def shape(self, k):
    return self._s.shape(k)


def _place(arr: np.ndarray, names, mesh):
  if mesh is None:
    return jnp.asarray(arr)
  spec = logical_to_spec(names, mesh=mesh) if names else P()
  fitted = []
  for dim, entry in zip(arr.shape, tuple(spec) + (None,) * (arr.ndim - len(spec))):
    axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    fitted.append(entry if axes and dim % size == 0 else None)
  return jax.device_put(arr, NamedSharding(mesh, P(*fitted)))


def _cast(arr: np.ndarray, dtype) -> np.ndarray:
  floating = np.issubdtype(arr.dtype, np.floating) or arr.dtype == jnp.bfloat16
  if dtype is None or not floating:
    return arr
  return np.asarray(arr).astype(jnp.dtype(dtype))


def torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None):
  """Reference tensors -> (model_config dict, nested wc_jax params)."""
  try:
    cfg = da3_config.from_reference_config(config)
  except ValueError as e:
    raise ConversionError(f"DA3 config: {e}") from e
  if dtype is not None:
    cfg = cfg.replace(param_dtype=jnp.dtype(dtype))
  model = abstract_model(cfg)
  entries = list(key_map(cfg, model))
  expected = {k: tshape for _, keys, _, _, tshape in entries for k in keys}
  view = _Filtered(source, cfg.ignored_prefixes) if cfg.ignored_prefixes else source
  check_keys(expected, view, "DA3")
  names = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names[tuple(path)] = var.get_metadata().get("out_sharding")
  flat = {}
  for path, keys, _, from_torch, _ in entries:
    arr = np.asarray(source.get(keys[-1]))
    # the shared aux LayerNorm: every reference slot must hold the same tensor
    for k in keys[:-1]:
      if not np.array_equal(np.asarray(source.get(k)), arr):
        raise ConversionError(f"{k} differs from {keys[-1]}; the reference shares one LayerNorm "
                              "between these slots, so this checkpoint is not a DA3 DualDPT")
    arr = from_torch(arr)
    flat[path] = _place(_cast(arr, dtype), names.get(path), mesh)
  params: dict = {}
  for path, v in flat.items():
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  model_config = cfg.to_dict()
  model_config["torch_prefix"] = getattr(source, "_prefix", "")
  return model_config, params


def params_to_torch(params: Mapping, model_config: dict, dtype=None, reference_config=None):
  """wc_jax params -> (reference config, reference-layout tensors)."""
  prefix = model_config.get("torch_prefix", "")
  cfg = DA3Config.from_dict(model_config)
  flat = {}

  def walk(node, path):
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, path + ((int(k) if isinstance(k, str) and k.isdigit() else k),))
    else:
      flat[path] = node

  walk(params, ())
  tensors = {}
  missing = []
  for path, keys, to_torch, _, _ in key_map(cfg):
    if path not in flat:
      missing.append("/".join(str(p) for p in path))
      continue
    arr = to_torch(np.asarray(flat[path]))
    arr = np.ascontiguousarray(_cast(arr, dtype))
    for k in keys:
      tensors[prefix + k] = arr
  if missing:
    raise ConversionError(f"DA3 params lack {len(missing)} entries: {missing[:20]}")
  ref_config = reference_config if reference_config is not None else da3_config.to_reference_config(cfg)
  return ref_config, tensors


def build_model(model_config: dict, params: Mapping, mesh=None, **overrides) -> da3_model.DepthAnything3:
  """The module holding `params` (no random initialisation); `overrides` replace config fields.
  Parameters keep the placement they come with (`torch_to_params(mesh=...)` places them)."""
  del mesh
  return da3_model.from_params(DA3Config.from_dict({**model_config, **overrides}), params)
