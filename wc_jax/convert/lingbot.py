"""LingBot-World DiT (one Wan2.2 expert + camera branch): reference state dict <-> wc_jax.

The released checkpoint has two experts, `high_noise_model/` and `low_noise_model/`, each a
diffusers-style folder (config.json + sharded safetensors with the `WanModel` state dict);
each converts on its own with this module (same architecture, different weights).

Linear weights [out, in] become kernels [in, out]; the Conv3d patch embedding
[C, Cin, pt, ph, pw] becomes a kernel [(Cin pt ph pw), C]; `modulation` [1, 6, C] / [1, 2, C]
drop the leading 1; per-block tensors `blocks.{i}.*` are stacked on a leading layer axis
(the nnx.scan layout). Tensors are read one at a time (one stacked parameter in RAM at most).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, TensorSource, check_keys, flatten, unflatten
from wc_jax.models.lingbot import config as lb_config
from wc_jax.models.lingbot.dit import LingBotDiT, abstract_model
from wc_jax.models.lingbot.dit import load_params as assign_params
from wc_jax.sharding import logical_axes_of, named_sharding

KIND = kinds.LINGBOT_DIT
TORCH_FILENAME = "diffusion_pytorch_model.safetensors"
STRIP_PREFIX = None
EXPERT_FOLDERS = ("high_noise_model", "low_noise_model")

# (torch prefix, wc_jax path, kind)
_TOP = [
    ("patch_embedding", "patch_embedding", "patch"),
    ("patch_embedding_wancamctrl", "patch_embedding_wancamctrl", "linear"),
    ("c2ws_hidden_states_layer1", "c2ws_hidden_states_layer1", "linear"),
    ("c2ws_hidden_states_layer2", "c2ws_hidden_states_layer2", "linear"),
    ("text_embedding.0", "text_embedding/fc1", "linear"),
    ("text_embedding.2", "text_embedding/fc2", "linear"),
    ("time_embedding.0", "time_embedding/fc1", "linear"),
    ("time_embedding.2", "time_embedding/fc2", "linear"),
    ("time_projection.1", "time_projection", "linear"),
    ("head.head", "head/head", "linear"),
    ("head.modulation", "head/modulation", "modulation"),
]
_BLOCK = [("modulation", "modulation", "modulation"), ("norm3", "norm3", "norm"),
          ("ffn.0", "ffn/fc1", "linear"), ("ffn.2", "ffn/fc2", "linear")]
for _a in ("self_attn", "cross_attn"):
  _BLOCK += [(f"{_a}.{n}", f"{_a}/{n}", "linear") for n in ("q", "k", "v", "o")]
  _BLOCK += [(f"{_a}.{n}", f"{_a}/{n}", "rms") for n in ("norm_q", "norm_k")]
_BLOCK += [(n, n, "linear") for n in ("cam_injector_layer1", "cam_injector_layer2", "cam_scale_layer",
                                      "cam_shift_layer")]

_SUFFIX = {  # kind -> [(torch suffix or None for a bare tensor, our leaf, layout)]
    "linear": [("weight", "kernel", "t"), ("bias", "bias", "id")],
    "patch": [("weight", "kernel", "patch"), ("bias", "bias", "id")],
    "norm": [("weight", "weight", "id"), ("bias", "bias", "id")],
    "rms": [("weight", "weight", "id")],
    "modulation": [(None, None, "lead1")],
}


def matches(config: dict) -> bool:
  """A WanModel config.json with the LingBot camera branch, or a fixture config (kind lingbot_dit)."""
  if config.get("kind") == KIND:
    return True
  ctor = config.get("constructor_kwargs", config)
  return (config.get("_class_name") == "WanModel" or "WanModel" in str(config.get("model_class", ""))) and \
      "num_layers" in ctor and "ffn_dim" in ctor


def _entries(cfg: lb_config.LingBotConfig) -> Iterator[tuple[str, str, str, int | None]]:
  """(torch key, our path, layout, layer index or None) for every tensor."""
  def leaves(tprefix, ppath, kind, layer=None):
    for tsuf, leaf, layout in _SUFFIX[kind]:
      tkey = tprefix if tsuf is None else f"{tprefix}.{tsuf}"
      yield tkey, ppath if leaf is None else f"{ppath}/{leaf}", layout, layer
  for tp, pp, kind in _TOP:
    yield from leaves(tp, pp, kind)
  for i in range(cfg.num_layers):
    for tp, pp, kind in _BLOCK:
      yield from leaves(f"blocks.{i}.{tp}", f"blocks/{pp}", kind, i)


def _to_ours(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "t":
    return np.ascontiguousarray(x.T)
  if layout == "patch":
    return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
  if layout == "lead1":
    return x.reshape(x.shape[1:])
  return x


def _to_torch(x: np.ndarray, layout: str, torch_shape) -> np.ndarray:
  if layout == "t":
    return np.ascontiguousarray(x.T)
  if layout == "patch":
    return np.ascontiguousarray(x.T).reshape(torch_shape)
  if layout == "lead1":
    return np.ascontiguousarray(x).reshape(torch_shape)
  return np.ascontiguousarray(x)


def _torch_shape(our_shape, layout, cfg):
  if layout == "t":
    return tuple(reversed(our_shape))
  if layout == "patch":
    return (our_shape[1], cfg.in_dim) + tuple(cfg.patch_size)
  if layout == "lead1":
    return (1,) + tuple(our_shape)
  return tuple(our_shape)


def our_shapes(cfg: lb_config.LingBotConfig) -> dict[str, tuple[int, ...]]:
  """wc_jax parameter path -> shape, from jax.eval_shape of the model (nothing allocated)."""
  state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  return {k: tuple(v.shape) for k, v in flatten(state).items()}


def expected_torch_shapes(cfg: lb_config.LingBotConfig) -> dict[str, tuple[int, ...]]:
  """Reference key -> shape for `cfg` (what a checkpoint folder must hold, exactly)."""
  ours = our_shapes(cfg)
  shapes = {}
  for tkey, path, layout, layer in _entries(cfg):
    if path not in ours:
      raise AssertionError(f"converter table names {path}, which the model does not have")
    shape = ours[path][1:] if layer is not None else ours[path]
    shapes[tkey] = _torch_shape(shape, layout, cfg)
  return shapes


def config_from_reference(config: dict, **overrides) -> lb_config.LingBotConfig:
  ctor = config.get("constructor_kwargs", config)
  ctor = {k: v for k, v in ctor.items() if not k.startswith("_")}
  return lb_config.from_reference(ctor, **overrides)


def _logical_axes(cfg) -> dict[str, tuple]:
  state = nnx.state(abstract_model(cfg), nnx.Param)
  out = {}
  for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = logical_axes_of(var)
  return out


def torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None):
  """(model_config, params): streams tensors one by one; ConversionError names every
  missing, unexpected and mis-shaped key."""
  try:
    cfg = config_from_reference(config)
  except (KeyError, ValueError, TypeError) as e:
    raise ConversionError(f"LingBot DiT config.json is not usable: {e}") from e
  check_keys(expected_torch_shapes(cfg), source, "LingBot-World DiT")
  axes = _logical_axes(cfg) if mesh is not None else {}
  cast = (lambda x: x.astype(jnp.dtype(dtype))) if dtype else (lambda x: x)

  def place(x, path):
    return x if mesh is None else jax.device_put(x, named_sharding(mesh, axes.get(path)))

  flat: dict[str, object] = {}
  stacked: dict[str, list] = {}
  for tkey, path, layout, layer in _entries(cfg):
    x = cast(_to_ours(source.get(tkey), layout))
    if layer is None:
      flat[path] = place(x, path)
    else:
      stacked.setdefault(path, [None] * cfg.num_layers)[layer] = x
      if all(v is not None for v in stacked[path]):
        flat[path] = place(np.stack(stacked.pop(path)), path)
  model_config = cfg.to_dict()
  if dtype:
    model_config["param_dtype"] = str(jnp.dtype(dtype))
  return model_config, unflatten(flat)


# Config fields that set how the model runs, not its weights (a reference config.json has none).
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention_impl", "attention_block_kv", "remat_policy")


def params_to_torch(params, model_config: dict, dtype=None, reference_config=None):
  """(reference config, tensors in the reference layout) for export."""
  cfg = lb_config.LingBotConfig.from_dict(model_config)
  lost = [f.name for f in dataclasses.fields(cfg) if f.name not in RUNTIME_FIELDS
          and getattr(cfg, f.name) != getattr(lb_config.from_reference(lb_config.to_reference(cfg)), f.name)]
  if lost:
    raise ConversionError(f"this LingBot DiT cannot be exported as a reference checkpoint: WanModel cannot "
                          f"express {', '.join(f'{n}={getattr(cfg, n)!r}' for n in lost)}")
  ref = dict(reference_config or {})
  if "constructor_kwargs" in ref:
    ref["constructor_kwargs"] = {k: v for k, v in lb_config.to_reference(cfg).items() if not k.startswith("_")}
  else:
    ref = lb_config.to_reference(cfg)
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  shapes = expected_torch_shapes(cfg)
  tensors = {}
  for tkey, path, layout, layer in _entries(cfg):
    if path not in flat:
      raise ConversionError(f"parameter {path} missing from the wc_jax checkpoint")
    x = flat[path] if layer is None else flat[path][layer]
    x = _to_torch(x, layout, shapes[tkey])
    tensors[tkey] = x.astype(jnp.dtype(dtype)) if dtype else x
  return ref, tensors


def build_model(model_config: Mapping, params: Mapping, mesh=None, **overrides) -> LingBotDiT:
  """The expert holding `params`, built without a random init (`overrides`: dtype, attention
  impl, remat...). Placement on a mesh is the caller's."""
  del mesh
  cfg = lb_config.LingBotConfig.from_dict({**model_config, **overrides})
  return assign_params(abstract_model(cfg), params)
