"""Dispatch between model-specific converters.

Each converter module `wc_jax.convert.<kind>` provides:

    KIND: str
    matches(config: dict) -> bool                    # is this reference config.json ours?
    torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None)
        -> (model_config: dict, params: nested dict of arrays in wc_jax layout)
    params_to_torch(params: nested dict, model_config: dict, dtype=None)
        -> (reference_config: dict, tensors: dict[str, np.ndarray] in reference layout)
    TORCH_FILENAME: str                              # file name used on export
"""
from __future__ import annotations

import importlib

from wc_jax.convert.common import (ConversionError, TensorSource, load_orbax, read_config,
                                   save_orbax, save_torch_safetensors)

CONVERTERS = ("wc_jax.convert.dit", "wc_jax.convert.vae", "wc_jax.convert.da3", "wc_jax.models.quality.convert")


def _modules():
  for name in CONVERTERS:
    try:
      yield importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise


def converter_for(config: dict, kind: str | None = None):
  for mod in _modules():
    if (kind is not None and mod.KIND == kind) or (kind is None and mod.matches(config)):
      return mod
  raise ConversionError(
      f"config.json is not a known model kind ({', '.join(m.rsplit('.', 2)[-2 if m.endswith('convert') else -1] for m in CONVERTERS)}); "
      f"keys: {sorted(config)[:15]}")


def torch_to_orbax(src, dst, dtype=None, mesh=None, kind=None) -> str:
  config = read_config(src)
  mod = converter_for(config, kind)
  source = TensorSource(src, strip_prefix=getattr(mod, "STRIP_PREFIX", None))
  model_config, params = mod.torch_to_params(source, config, dtype=dtype, mesh=mesh)
  save_orbax(params, dst, {"kind": mod.KIND, "model_config": model_config, "reference_config": config})
  return mod.KIND


def orbax_to_torch(src, dst, dtype=None, max_shard_bytes=None) -> str:
  params, meta = load_orbax(src)
  mod = converter_for({}, meta["kind"])
  ref_config, tensors = mod.params_to_torch(params, meta["model_config"], dtype=dtype,
                                            reference_config=meta.get("reference_config"))
  save_torch_safetensors(tensors, dst, ref_config, filename=mod.TORCH_FILENAME, max_shard_bytes=max_shard_bytes)
  return mod.KIND
