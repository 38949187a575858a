"""The checkpoint layer's entry points: one converter per model kind, and the loader.

Each converter module `wc_jax.convert.<name>` provides:

    KIND: str                                        # one of wc_jax.convert.kinds
    matches(config: dict) -> bool                    # is this reference config.json ours?
    torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None)
        -> (model_config: dict, params: nested dict of arrays in wc_jax layout)
    params_to_torch(params: nested dict, model_config: dict, dtype=None, reference_config=None)
        -> (reference_config: dict, tensors: dict[str, np.ndarray] in reference layout)
    build_model(model_config: dict, params, mesh=None, **overrides) -> nnx.Module
    TORCH_FILENAME: str                              # file name used on export

Models do no file I/O: `load_model(kind, path)` is the one way to get a module with
weights from a checkpoint folder.
"""
from __future__ import annotations

import os

from flax import nnx

from wc_jax.convert import da3, dit, encoders, hpsv3, idm, kinds, lingbot, quality, vae, wan_vae
from wc_jax.convert.common import (ConversionError, TensorSource, as_path, load_orbax, read_config,
                                   save_orbax, save_torch_safetensors)

CONVERTERS = (dit, vae, da3, quality, hpsv3, idm, lingbot, wan_vae, *encoders.CONVERTERS)
assert all(m.KIND in kinds.ALL for m in CONVERTERS)


def converter(kind: str):
  """The converter module for `kind` (one of `kinds.ALL`)."""
  for mod in CONVERTERS:
    if mod.KIND == kind:
      return mod
  raise ConversionError(f"unknown model kind {kind!r} (known kinds: {', '.join(kinds.ALL)})")


def converter_for(config: dict, kind: str | None = None):
  if kind is not None:
    return converter(kind)
  for mod in CONVERTERS:
    if mod.matches(config):
      return mod
  raise ConversionError(
      f"config.json is not a known model kind ({', '.join(kinds.ALL)}); keys: {sorted(config)[:15]}")


def load_params(path: str | os.PathLike, target=None) -> tuple[dict, dict]:
  """(params, metadata) of a wc_jax Orbax checkpoint folder (metadata: kind, model_config, ...)."""
  return load_orbax(path, target)


def load_model(kind: str, path: str | os.PathLike, *, mesh=None, **overrides) -> nnx.Module:
  """The `kind` model holding the weights at `path`, built without a random init.

  `path` is a wc_jax Orbax folder (written by `python -m wc_jax.convert` or a trainer;
  its recorded kind must be `kind`) or a reference folder (config.json + safetensors),
  converted on the fly. `overrides` replace model config fields (dtype, precision, ...);
  `mesh` places the weights where the kind supports it (VAE, and conversion from torch).
  """
  mod = converter(kind)
  path = as_path(path)            # local or gs:// (etils.epath)
  if (path / "wc_jax.json").exists():
    params, meta = load_orbax(path)
    if meta.get("kind") != kind:
      raise ConversionError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    model_config = meta["model_config"]
  else:
    config = read_config(path)
    if not mod.matches(config):
      other = next((m.KIND for m in CONVERTERS if m.matches(config)), None)
      raise ConversionError(f"{path} holds a {other or 'unknown'!r} reference checkpoint, not a {kind!r} one")
    source = TensorSource(path, strip_prefix=getattr(mod, "STRIP_PREFIX", None))
    model_config, params = mod.torch_to_params(source, config, mesh=mesh)
  return mod.build_model(model_config, params, mesh=mesh, **overrides)


# kinds whose release is one bare checkpoint file (no config.json beside it): kind -> (opener of a
# .pth / .safetensors file or folder, the released file's name)
BARE_FILE_KINDS = {kinds.UMT5: (encoders.open_umt5_checkpoint, encoders.UMT5_RELEASED_FILENAME),
                   kinds.WAN_VAE: (wan_vae.open_checkpoint, "Wan2.1_VAE.pth")}


def _reference_config(src, reference_config) -> dict | None:
  """The reference config of `src`: the given one (a dict, or a JSON file's path), else the
  config.json in / beside `src`, else None."""
  import json
  if isinstance(reference_config, (str, os.PathLike)):
    path = as_path(reference_config)
    if not path.is_file():
      raise ConversionError(f"--reference-config {reference_config}: no such file")
    try:
      return json.loads(path.read_text())
    except ValueError as e:
      raise ConversionError(f"--reference-config {reference_config}: not JSON ({e})") from None
  if reference_config is not None:
    return dict(reference_config)
  try:
    return read_config(src)
  except ConversionError:
    return None


def bare_file_to_orbax(src, dst, kind: str, dtype=None, mesh=None, reference_config=None) -> str:
  """A checkpoint released as one bare file (the umT5 `models_t5_umt5-xxl-enc-bf16.pth`, the
  Wan2.1 VAE `.pth`; also the same keys as .safetensors or a folder of either) -> a wc_jax Orbax
  folder that `load_model(kind, dst)` (and for umT5 `load_umt5` / `umt5_from_config`) reads.
  The architecture comes from `reference_config` (the reference constructor arguments, a dict or
  JSON file, e.g. a fixture's config.json), else a config.json beside the file, else the
  released model's. Every missing / unexpected / mis-shaped key is named (ConversionError)."""
  if kind not in BARE_FILE_KINDS:
    raise ConversionError(f"--kind={kind}: a bare checkpoint file is read for {', '.join(BARE_FILE_KINDS)}; "
                          f"{kind} checkpoints are a folder with config.json")
  src_path = as_path(src)
  if not src_path.exists():
    raise FileNotFoundError(f"no checkpoint at {src}")
  config = _reference_config(src, reference_config)
  opener = BARE_FILE_KINDS[kind][0]
  if kind == kinds.UMT5:
    if config is not None and not encoders.umt5.matches(config) and "reference_args" not in config \
        and "dim" not in config:
      raise ConversionError(f"the config for {src} (model_type {config.get('model_type')!r}) is not a umT5 one")
    encoders.convert_umt5(src, dst, config, dtype=dtype)
    return kind
  mod = converter(kind)
  model_config, params = mod.torch_to_params(opener(src), config, dtype=dtype, mesh=mesh)
  save_orbax(params, dst, {"kind": mod.KIND, "model_config": model_config, "reference_config": config or {}})
  return kind


def torch_to_orbax(src, dst, dtype=None, mesh=None, kind=None, reference_config=None) -> str:
  """A reference checkpoint -> a wc_jax Orbax folder. `src`: a folder with config.json (+ the
  safetensors; the kind is recognised from the config unless given), or, with `kind` one of
  BARE_FILE_KINDS, the bare file the release ships (`bare_file_to_orbax`)."""
  src_path = as_path(src)
  if kind in BARE_FILE_KINDS and (src_path.is_file() or reference_config is not None
                                  or not (src_path / "config.json").exists()):
    return bare_file_to_orbax(src, dst, kind, dtype=dtype, mesh=mesh, reference_config=reference_config)
  if src_path.is_file() or not src_path.exists():
    if not src_path.exists():
      raise FileNotFoundError(f"no checkpoint at {src}")
    if kind is not None:     # a kind that ships as a folder: named by bare_file_to_orbax
      return bare_file_to_orbax(src, dst, kind, dtype=dtype, mesh=mesh, reference_config=reference_config)
    hint = next((k for k, (_, name) in BARE_FILE_KINDS.items() if name.lower() == src_path.name.lower()), None)
    raise ConversionError(f"{src} is a single file: pass a reference folder (config.json + *.safetensors), or "
                          f"--kind={hint or '|'.join(BARE_FILE_KINDS)} for a checkpoint released as one bare file")
  config = read_config(src)
  mod = converter_for(config, kind)
  source = TensorSource(src, strip_prefix=getattr(mod, "STRIP_PREFIX", None))
  model_config, params = mod.torch_to_params(source, config, dtype=dtype, mesh=mesh)
  save_orbax(params, dst, {"kind": mod.KIND, "model_config": model_config, "reference_config": config})
  return mod.KIND


def orbax_to_torch(src, dst, dtype=None, max_shard_bytes=None) -> str:
  params, meta = load_orbax(src)
  mod = converter(meta.get("kind"))
  ref_config, tensors = mod.params_to_torch(params, meta["model_config"], dtype=dtype,
                                            reference_config=meta.get("reference_config"))
  save_torch_safetensors(tensors, dst, ref_config, filename=mod.TORCH_FILENAME, max_shard_bytes=max_shard_bytes)
  return mod.KIND
