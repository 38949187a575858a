"""Wan2.1 VAE checkpoint (`Wan2.1_VAE.pth` state dict / safetensors) <-> wc_jax parameters.

Key map: the wc_jax path joined with "." is the reference key after three
renames. Inside a block of `downsamples` / `middle` / `upsamples` (the
reference's nn.Sequential indices are kept): ResidualBlock `norm1, conv1,
norm2, conv2` = `residual.0, .2, .3, .6` (its SiLU / dropout slots hold no
weights), Resample `conv` = `resample.1`; the encoder's / decoder's
`head_norm, head_conv` = `head.0, head.2`; the leaf `kernel` = `weight`.
Layouts: conv weight [out, in, *k] <-> kernel [*k, in, out]; RMS-norm gamma
[C, 1, 1, 1] (attention: [C, 1, 1]) <-> [C]. The expected keys come from the
model built abstractly from the config, so every checkpoint key is accounted
for; tensors are read, converted and placed one at a time.

The released checkpoint is a torch pickle (`.pth`): read through torch when it is
importable, else by the restricted reader of `torch_files` (no code runs). Safetensors
files with the same keys (the fixtures) need nothing but safetensors.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, check_keys, flatten, unflatten
from wc_jax.convert.torch_files import TorchStateSource, TorchUnavailableError, open_state_dict  # noqa: F401  (re-exports)
from wc_jax.models.wan_vae.config import WanVAEConfig, is_reference_wan_vae_config
from wc_jax.models.wan_vae.model import (WanVAE, abstract_model, model_from_params, param_shapes,
                                         param_shardings, shard_model)

KIND = kinds.WAN_VAE
TORCH_FILENAME = "Wan2.1_VAE.safetensors"
RELEASED_FILENAME = "Wan2.1_VAE.pth"

_BLOCK_RENAME = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                 "conv": "resample.1"}
_HEAD_RENAME = {"head_norm": "head.0", "head_conv": "head.2"}


def matches(config: dict) -> bool:
  return is_reference_wan_vae_config(config)


def _reference_key(parts: list[str]) -> str:
  out = []
  for i, p in enumerate(parts):
    prev = parts[i - 1] if i else ""
    if prev.isdigit() and p in _BLOCK_RENAME:
      p = _BLOCK_RENAME[p]
    elif prev in ("encoder", "decoder") and p in _HEAD_RENAME:
      p = _HEAD_RENAME[p]
    elif i == len(parts) - 1 and p == "kernel":
      p = "weight"
    out.append(p)
  return ".".join(out)


def key_map(cfg: WanVAEConfig) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
  """wc_jax path ("encoder/downsamples/0/conv1/kernel") -> (reference key, reference shape, wc_jax shape)."""
  out = {}
  for path, shape in param_shapes(cfg).items():
    parts = path.split("/")
    leaf = parts[-1]
    if leaf == "kernel":
      ref_shape = (shape[-1], shape[-2]) + shape[:-2]
    elif leaf == "gamma":
      attention_norm = parts[-2] == "norm" and len(parts) >= 3 and parts[-3].isdigit()
      ref_shape = (shape[0],) + (1,) * (2 if attention_norm else 3)
    elif leaf == "bias":
      ref_shape = shape
    else:  # pragma: no cover - the model has no other parameter kinds
      raise ConversionError(f"no reference layout for parameter {path}")
    out[path] = (_reference_key(parts), ref_shape, shape)
  return out


def reference_shapes(cfg: WanVAEConfig | None = None) -> dict[str, tuple[int, ...]]:
  """The reference state dict's key -> shape for `cfg` (default: the released model), from shapes only."""
  return {ref: ref_shape for ref, ref_shape, _ in key_map(cfg or WanVAEConfig()).values()}


def _to_jax(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    nd = a.ndim
    return np.ascontiguousarray(np.transpose(a, tuple(range(2, nd)) + (1, 0)))
  if leaf == "gamma":
    return a.reshape(a.shape[0])
  return a


def _to_torch(leaf: str, a: np.ndarray, ref_shape: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel":
    nd = a.ndim
    return np.ascontiguousarray(np.transpose(a, (nd - 1, nd - 2) + tuple(range(nd - 2))))
  if leaf == "gamma":
    return a.reshape(ref_shape)
  return a


def _cast(a: np.ndarray, dtype) -> np.ndarray:
  if dtype is None or not jnp.issubdtype(a.dtype, jnp.floating):
    return a
  return a.astype(jnp.dtype(dtype))


# ---------------------------------------------------------------------------- sources
def open_checkpoint(path: str | os.PathLike):
  """A tensor source for a Wan VAE checkpoint: a `.safetensors` file, a `.pth` / `.pt` file
  (read through torch when it is installed, else by torch_files.TorchZipSource), or a folder
  holding either (safetensors preferred)."""
  return open_state_dict(path)


# ---------------------------------------------------------------------------- conversion
def torch_to_params(source, config: dict | None = None, dtype=None, mesh=None):
  """Reads a reference VAE state dict into (model_config, nested params).

  `config`: a fixture config.json or a dict of constructor fields; None (the
  released `.pth` ships without one) means the released architecture.
  """
  try:
    cfg = WanVAEConfig.from_reference(config)
  except (ValueError, TypeError) as e:
    raise ConversionError(f"Wan VAE config: {e}") from e
  kmap = key_map(cfg)
  check_keys({ref: ref_shape for ref, ref_shape, _ in kmap.values()}, source, "Wan VAE")
  placements = {}
  if mesh is not None:
    placements = {"/".join(str(p) for p in path): s
                  for path, s in nnx.to_flat_state(param_shardings(abstract_model(cfg), mesh))}
  flat = {}
  for path, (ref_key, _, _) in kmap.items():
    a = _cast(_to_jax(path.rsplit("/", 1)[-1], np.asarray(source.get(ref_key))), dtype)
    flat[path] = jax.device_put(a, placements[path]) if mesh is not None else a
  dtypes = {jnp.dtype(getattr(v, "dtype", np.float32)).name for v in flat.values()}
  param_dtype = jnp.dtype(dtype).name if dtype is not None else (dtypes.pop() if len(dtypes) == 1 else "float32")
  return cfg.replace(param_dtype=param_dtype).to_dict(), unflatten(flat)


def params_to_torch(params: Mapping, model_config: dict, dtype=None, reference_config=None):
  """wc_jax params -> (reference config, {reference key: array in reference layout})."""
  cfg = WanVAEConfig.from_dict(model_config)
  kmap = key_map(cfg)
  flat = flatten(params)
  missing = sorted(set(kmap) - set(flat))
  unexpected = sorted(set(flat) - set(kmap))
  if missing or unexpected:
    raise ConversionError(f"Wan VAE params do not match the model: missing {missing[:20]}, "
                          f"unexpected {unexpected[:20]}")
  tensors = {}
  for path in sorted(kmap, key=lambda p: kmap[p][0]):
    ref_key, ref_shape, shape = kmap[path]
    a = np.asarray(jax.device_get(flat[path]))
    if tuple(a.shape) != shape:
      raise ConversionError(f"Wan VAE param {path}: shape {tuple(a.shape)} vs model {shape}")
    tensors[ref_key] = _cast(_to_torch(path.rsplit("/", 1)[-1], a, ref_shape), dtype)
  ref_config = dict(reference_config) if reference_config else cfg.to_reference()
  return ref_config, tensors


def build_model(model_config: dict, params: Mapping, mesh=None, **runtime) -> WanVAE:
  """The module holding `params`; `runtime` overrides dtype / precision / latent constants."""
  model = model_from_params(WanVAEConfig.from_dict(model_config, **runtime), params)
  return shard_model(model, mesh) if mesh is not None else model


def load(path: str | os.PathLike, config: dict | None = None, dtype=None, mesh=None, **runtime) -> WanVAE:
  """The VAE from a checkpoint file or folder (see `open_checkpoint`); `config` as in torch_to_params."""
  model_config, params = torch_to_params(open_checkpoint(path), config, dtype=dtype, mesh=mesh)
  return build_model(model_config, params, mesh=mesh, **runtime)
