"""Reference VAE checkpoint (AutoencoderKLConv3D) <-> wc_jax parameters.

Key map: a wc_jax parameter path joined with "." is the reference key, with the
leaf renamed: `kernel` -> `weight`, `bias` and `gamma` unchanged. Layouts:
Conv3d weight [out, in, kt, kh, kw] <-> kernel [kt, kh, kw, in, out]; RMS-norm
gamma [C, 1, 1, 1] <-> [C]. The expected key list is derived from the model
built (abstractly) from the config, so every checkpoint key is accounted for.
Tensors are read, converted and placed one at a time.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, TensorSource, check_keys, flatten, unflatten
from wc_jax.models.vae.config import VAEConfig, is_reference_vae_config
from wc_jax.models.vae.model import (AutoencoderKL, abstract_model, model_from_params, param_shardings,
                                     shard_model)

KIND = kinds.VAE
TORCH_FILENAME = "diffusion_pytorch_model.safetensors"


def matches(config: dict) -> bool:
  return is_reference_vae_config(config)


def key_map(cfg: VAEConfig) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
  """wc_jax path ("a/b/kernel") -> (reference key, reference shape, wc_jax shape)."""
  state = nnx.state(abstract_model(cfg), nnx.Param)
  out = {}
  for path, var in nnx.to_flat_state(state):
    parts = [str(p) for p in path]
    shape = tuple(var.get_value().shape)
    leaf = parts[-1]
    if leaf == "kernel":
      ref_shape = (shape[4], shape[3], shape[0], shape[1], shape[2])
      ref_key = ".".join(parts[:-1] + ["weight"])
    elif leaf == "bias":
      ref_shape, ref_key = shape, ".".join(parts)
    elif leaf == "gamma":
      ref_shape, ref_key = (shape[0], 1, 1, 1), ".".join(parts)
    else:  # pragma: no cover - the model has no other parameter kinds
      raise ConversionError(f"no reference layout for parameter {'/'.join(parts)}")
    out["/".join(parts)] = (ref_key, ref_shape, shape)
  return out


def _placements(cfg: VAEConfig, mesh) -> dict:
  """wc_jax path -> NamedSharding on `mesh`, from the parameters' logical axis names."""
  flat = nnx.to_flat_state(param_shardings(abstract_model(cfg), mesh))
  return {"/".join(str(p) for p in path): s for path, s in flat}


def _to_jax(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return np.ascontiguousarray(np.transpose(a, (2, 3, 4, 1, 0)))
  if leaf == "gamma":
    return a.reshape(a.shape[0])
  return a


def _to_torch(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return np.ascontiguousarray(np.transpose(a, (4, 3, 0, 1, 2)))
  if leaf == "gamma":
    return a.reshape(a.shape[0], 1, 1, 1)
  return a


def _cast(a: np.ndarray, dtype) -> np.ndarray:
  if dtype is None or not jnp.issubdtype(a.dtype, jnp.floating):
    return a
  return a.astype(jnp.dtype(dtype))


def torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None):
  """Reads a reference VAE checkpoint into (model_config, nested params)."""
  try:
    cfg = VAEConfig.from_reference(config)
  except (ValueError, TypeError) as e:
    raise ConversionError(f"VAE config.json: {e}") from e
  kmap = key_map(cfg)
  check_keys({ref: ref_shape for ref, ref_shape, _ in kmap.values()}, source, "VAE")
  placements = _placements(cfg, mesh) if mesh is not None else {}
  flat = {}
  for path, (ref_key, _, _) in kmap.items():
    a = _cast(_to_jax(path.rsplit("/", 1)[-1], source.get(ref_key)), dtype)
    flat[path] = jax.device_put(a, placements[path]) if mesh is not None else a
  param_dtype = jnp.dtype(dtype).name if dtype is not None else _common_dtype(flat)
  model_config = cfg.replace(param_dtype=param_dtype).to_dict()
  return model_config, unflatten(flat)


def _common_dtype(flat: Mapping[str, object]) -> str:
  dtypes = {jnp.dtype(getattr(v, "dtype", np.float32)).name for v in flat.values()}
  return dtypes.pop() if len(dtypes) == 1 else "float32"


def params_to_torch(params: Mapping, model_config: dict, dtype=None, reference_config=None):
  """wc_jax params -> (reference config.json, {reference key: array in reference layout})."""
  cfg = VAEConfig.from_dict(model_config)
  kmap = key_map(cfg)
  flat = flatten(params)
  missing = sorted(set(kmap) - set(flat))
  unexpected = sorted(set(flat) - set(kmap))
  if missing or unexpected:
    raise ConversionError(f"VAE params do not match the model: missing {missing[:20]}, "
                          f"unexpected {unexpected[:20]}")
  tensors = {}
  for path in sorted(kmap, key=lambda p: kmap[p][0]):
    ref_key, _, shape = kmap[path]
    a = np.asarray(jax.device_get(flat[path]))
    if tuple(a.shape) != shape:
      raise ConversionError(f"VAE param {path}: shape {tuple(a.shape)} vs model {shape}")
    tensors[ref_key] = _cast(_to_torch(path.rsplit("/", 1)[-1], a), dtype)
  ref_config = dict(reference_config) if reference_config else cfg.to_reference()
  return ref_config, tensors


def build_model(model_config: dict, params: Mapping, mesh=None, **runtime) -> AutoencoderKL:
  """The module holding `params`; `runtime` overrides dtype / precision, and with `mesh`
  every parameter is placed by its logical axis names (a no-op for tensors a converter
  already placed)."""
  model = model_from_params(VAEConfig.from_dict(model_config, **runtime), params)
  return shard_model(model, mesh) if mesh is not None else model
