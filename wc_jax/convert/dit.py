"""WorldPlay DiT: reference state dict <-> wc_jax parameters.

Linear weights [out, in] become kernels [in, out]; img_in's Conv3d [C, Cin, pt, ph, pw]
becomes a patch kernel [(Cin pt ph pw), C]; per-layer tensors of `double_blocks.{i}`
are stacked on a leading layer axis (the nnx.scan layout).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, TensorSource, as_path, check_keys, flatten, unflatten
from wc_jax.models.worldplay import config as dit_config
from wc_jax.models.worldplay.model import WorldPlayDiT, abstract_model
from wc_jax.models.worldplay.model import load_params as assign_params
from wc_jax.sharding import logical_axes_of, named_sharding

KIND = kinds.DIT
TORCH_FILENAME = "diffusion_pytorch_model.safetensors"
STRIP_PREFIX = None

# (torch prefix, wc_jax path, kind): kind "linear" -> .weight/.bias, "norm" -> .weight(/.bias),
# "rms" -> .weight only, "embed" -> a bare .weight table, "patch" -> conv3d patch embed.
_TOP = [
    ("img_in.proj", "img_in", "patch"),
    ("time_in.mlp.0", "time_in/fc1", "linear"),
    ("time_in.mlp.2", "time_in/fc2", "linear"),
    ("action_in.mlp.0", "action_in/fc1", "linear"),
    ("action_in.mlp.2", "action_in/fc2", "linear"),
    ("txt_in.input_embedder", "txt_in/input_embedder", "linear"),
    ("txt_in.t_embedder.mlp.0", "txt_in/t_embedder/fc1", "linear"),
    ("txt_in.t_embedder.mlp.2", "txt_in/t_embedder/fc2", "linear"),
    ("txt_in.c_embedder.linear_1", "txt_in/c_embedder/fc1", "linear"),
    ("txt_in.c_embedder.linear_2", "txt_in/c_embedder/fc2", "linear"),
    ("byt5_in.layernorm", "byt5_in/layernorm", "norm"),
    ("byt5_in.fc1", "byt5_in/fc1", "linear"),
    ("byt5_in.fc2", "byt5_in/fc2", "linear"),
    ("byt5_in.fc3", "byt5_in/fc3", "linear"),
    ("vision_in.proj.0", "vision_in/norm_in", "norm"),
    ("vision_in.proj.1", "vision_in/fc1", "linear"),
    ("vision_in.proj.3", "vision_in/fc2", "linear"),
    ("vision_in.proj.4", "vision_in/norm_out", "norm"),
    ("cond_type_embedding", "cond_type_embedding", "embed"),
    ("final_layer.linear", "final_linear", "linear"),
    ("final_layer.adaLN_modulation.1", "final_adaLN", "linear"),
]
_REFINER = [
    ("norm1", "norm1", "norm"), ("norm2", "norm2", "norm"), ("self_attn_qkv", "self_attn_qkv", "linear"),
    ("self_attn_proj", "self_attn_proj", "linear"), ("mlp.fc1", "mlp/fc1", "linear"),
    ("mlp.fc2", "mlp/fc2", "linear"), ("adaLN_modulation.1", "adaLN_modulation", "linear"),
]
_BLOCK = [("img_attn_prope_proj", "img_attn_prope_proj", "linear")]
for _s in ("img", "txt"):
  _BLOCK += [(f"{_s}_mod.linear", f"{_s}_mod", "linear")]
  _BLOCK += [(f"{_s}_attn_{n}", f"{_s}_attn_{n}", "linear") for n in ("q", "k", "v", "proj")]
  _BLOCK += [(f"{_s}_attn_{n}_norm", f"{_s}_attn_{n}_norm", "rms") for n in ("q", "k")]
  _BLOCK += [(f"{_s}_mlp.fc1", f"{_s}_mlp/fc1", "linear"), (f"{_s}_mlp.fc2", f"{_s}_mlp/fc2", "linear")]

_SUFFIX = {  # kind -> [(torch suffix, our leaf, layout)]
    "linear": [("weight", "kernel", "t"), ("bias", "bias", "id")],
    "norm": [("weight", "weight", "id"), ("bias", "bias", "id")],
    "rms": [("weight", "weight", "id")],
    "embed": [("weight", None, "id")],
    "patch": [("weight", "kernel", "patch"), ("bias", "bias", "id")],
}


def matches(config: dict) -> bool:
  """A HunyuanVideo-1.5 transformer config.json (or a fixture config with constructor_kwargs)."""
  config = config.get("constructor_kwargs", config)
  return "mm_double_blocks_depth" in config and "heads_num" in config


def _entries(cfg: dit_config.DiTConfig) -> Iterator[tuple[str, str, str, int | None]]:
  """(torch key, our path, layout, layer index or None) for every tensor."""
  def leaves(tprefix, ppath, kind, layer=None):
    for tsuf, leaf, layout in _SUFFIX[kind]:
      if tsuf == "bias" and kind == "linear" and not _has_bias(tprefix, cfg):
        continue
      yield f"{tprefix}.{tsuf}", ppath if leaf is None else f"{ppath}/{leaf}", layout, layer
  for tp, pp, kind in _TOP:
    yield from leaves(tp, pp, kind)
  for j in range(cfg.refiner_depth):
    for tp, pp, kind in _REFINER:
      yield from leaves(f"txt_in.individual_token_refiner.blocks.{j}.{tp}", f"txt_in/blocks/{j}/{pp}", kind)
  for i in range(cfg.depth):
    for tp, pp, kind in _BLOCK:
      yield from leaves(f"double_blocks.{i}.{tp}", f"double_blocks/{pp}", kind, i)


def _has_bias(tprefix: str, cfg) -> bool:
  if re.search(r"_attn_(q|k|v|proj|prope_proj)$", tprefix) and "double_blocks" in tprefix:
    return cfg.qkv_bias
  return True


def _to_ours(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "t":
    return np.ascontiguousarray(x.T)
  if layout == "patch":
    return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
  return x


def _to_torch(x: np.ndarray, layout: str, torch_shape) -> np.ndarray:
  if layout == "t":
    return np.ascontiguousarray(x.T)
  if layout == "patch":
    return np.ascontiguousarray(x.T).reshape(torch_shape)
  return np.ascontiguousarray(x)


def _torch_shape(our_shape, layout, cfg):
  if layout == "t":
    return tuple(reversed(our_shape))
  if layout == "patch":
    return (our_shape[1], cfg.in_channels) + tuple(cfg.patch_size)
  return tuple(our_shape)


def _our_shapes(cfg) -> dict[str, tuple[int, ...]]:
  state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  out = {}
  def rec(prefix, node):
    for k, v in node.items():
      path = f"{prefix}/{k}" if prefix else str(k)
      if isinstance(v, dict):
        rec(path, v)
      else:
        out[path] = tuple(v.shape)
  rec("", state)
  return out


def expected_torch_shapes(cfg) -> dict[str, tuple[int, ...]]:
  ours = _our_shapes(cfg)
  shapes = {}
  for tkey, path, layout, layer in _entries(cfg):
    if path not in ours:
      raise AssertionError(f"converter table names {path}, which the model does not have")
    shape = ours[path][1:] if layer is not None else ours[path]
    shapes[tkey] = _torch_shape(shape, layout, cfg)
  return shapes


def config_from_reference(config: dict, **overrides) -> dit_config.DiTConfig:
  ctor = config.get("constructor_kwargs", config)
  byt5 = config.get("wc_jax_byt5_mapper") or (config.get("scratch_overrides", {}) or {}).get("ByT5Mapper")
  byt5 = {k: v for k, v in (byt5 or {}).items() if k in ("in_dim", "hidden_dim", "out_dim")}
  ctor = {k: v for k, v in ctor.items() if not k.startswith("_") and k != "wc_jax_byt5_mapper"}
  return dit_config.from_reference(ctor, byt5, **overrides)


def _place(x: np.ndarray, path: str, mesh, abstract):
  if mesh is None:
    return x
  return jax.device_put(x, named_sharding(mesh, abstract.get(path)))


def _logical_axes(cfg) -> dict[str, tuple]:
  state = nnx.state(abstract_model(cfg), nnx.Param)
  out = {}
  for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = logical_axes_of(var)
  return out


def torch_to_params(source: TensorSource, config: dict, dtype=None, mesh=None):
  """Streams tensors one by one (one stacked layer parameter at most in RAM)."""
  cfg = config_from_reference(config)
  check_keys(expected_torch_shapes(cfg), source, "WorldPlay DiT")
  entries = list(_entries(cfg))
  axes = _logical_axes(cfg) if mesh is not None else {}
  cast = (lambda x: x.astype(jnp.dtype(dtype))) if dtype else (lambda x: x)
  flat: dict[str, object] = {}
  stacked: dict[str, list] = {}
  for tkey, path, layout, layer in entries:
    x = cast(_to_ours(source.get(tkey), layout))
    if layer is None:
      flat[path] = _place(x, path, mesh, axes)
    else:
      stacked.setdefault(path, [None] * cfg.depth)[layer] = x
      if all(v is not None for v in stacked[path]):
        flat[path] = _place(np.stack(stacked.pop(path)), path, mesh, axes)
  model_config = cfg.to_dict()
  if dtype:
    model_config["param_dtype"] = str(jnp.dtype(dtype))
  return model_config, unflatten(flat)


# DiTConfig fields that set how the model runs, not its weights: a reference config.json
# does not record them (a checkpoint converted back gets the defaults).
RUNTIME_FIELDS = ("chunk_latents", "context_timestep", "dtype", "param_dtype", "attention_impl",
                  "attention_block_kv", "remat_policy")


def _check_expressible(cfg: dit_config.DiTConfig, ref: dict) -> None:
  """Fails, naming each field, if `ref` would not rebuild the same architecture as `cfg`."""
  try:
    back = config_from_reference(ref)
  except (KeyError, ValueError, TypeError) as e:
    raise ConversionError(f"this DiT cannot be exported as a reference checkpoint: {e}") from e
  lost = [f"{f.name}={getattr(cfg, f.name)!r} (a reference config.json can only mean {getattr(back, f.name)!r})"
          for f in dataclasses.fields(cfg)
          if f.name not in RUNTIME_FIELDS and getattr(cfg, f.name) != getattr(back, f.name)]
  if lost:
    raise ConversionError(
        "this DiT cannot be exported as a reference checkpoint: the reference constructor "
        "(HunyuanVideo_1_5_DiffusionTransformer) cannot express " + "; ".join(lost)
        + ". Keep it as a wc_jax Orbax checkpoint, or train with those fields at the reference values.")


def params_to_torch(params, model_config: dict, dtype=None, reference_config=None):
  cfg = dit_config.DiTConfig.from_dict(model_config)
  ref = dict(reference_config or {})
  ref_cfg = dit_config.to_reference(cfg)
  if "constructor_kwargs" in ref:  # a fixture-style config: keep its layout
    ref["constructor_kwargs"] = {k: v for k, v in ref_cfg.items() if not k.startswith("_") and k != "wc_jax_byt5_mapper"}
  else:
    ref = ref_cfg
  _check_expressible(cfg, ref)
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  shapes = expected_torch_shapes(cfg)
  tensors = {}
  for tkey, path, layout, layer in _entries(cfg):
    if path not in flat:
      raise ConversionError(f"parameter {path} missing from the wc_jax checkpoint")
    x = flat[path] if layer is None else flat[path][layer]
    x = _to_torch(x, layout, shapes[tkey])
    if dtype:
      x = x.astype(jnp.dtype(dtype))
    tensors[tkey] = x
  return ref, tensors


def build_model(model_config: Mapping, params: Mapping, mesh=None, **overrides) -> WorldPlayDiT:
  """The module holding `params`, built without a random init; `overrides` replace config
  fields (e.g. the run's dtype / attention_impl / remat_policy, or a whole `cfg.to_dict()`:
  the checkpoint's shapes are checked against it). Placement on a mesh is the caller's."""
  del mesh
  cfg = dit_config.DiTConfig.from_dict({**model_config, **overrides})
  return assign_params(abstract_model(cfg), params)


# ----------------------------------------------------------------------------- RL checkpoints
# An RL run (wc_jax.rl) saves WORKDIR/checkpoints/<step>/{state,data,config}: `state` is the
# TrainState (params = raw trained weights, policy = rollout EMA, ema = checkpoint EMA, optimizer
# moments, step, rng) as one Orbax pytree whose leaves are nnx Variables (`.../<name>/value`);
# `config` is JSON {"model": the run's model section, "full": the whole config}. Read here with
# plain Orbax (no TrainState, optimizer or config object needed), one subtree at a time.
RL_WHICH = {"ema": "ema", "raw": "params", "policy": "policy"}


def rl_step_dir(path):
  """The step folder (an etils.epath.Path: local or gs://) of an RL checkpoint at `path` (WORKDIR,
  WORKDIR/checkpoints, or one step's folder; the newest committed step when not named), or None
  when `path` is not one."""
  path = as_path(path)
  if (path / "state").is_dir() and (path / "config").is_dir():
    return path
  for root in (path / "checkpoints", path):
    if root.is_dir():
      steps = sorted((int(p.name), p) for p in root.iterdir()
                     if p.is_dir() and p.name.isdigit() and (p / "state").is_dir() and (p / "config").is_dir()
                     and ((p / "commit_success.txt").exists() or (p / "_CHECKPOINT_METADATA").exists()))
      if steps:
        return steps[-1][1]
  return None


def rl_model_config(step_dir) -> dict:
  """The run's model section recorded in an RL checkpoint step (its `config` item)."""
  step_dir = as_path(step_dir)
  try:
    saved = json.loads((step_dir / "config" / "metadata").read_text())
    model = dict(saved["model"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConversionError(f"{step_dir} has no readable run config (config/metadata): {e}") from None
  model.pop("checkpoint", None)
  model.pop("init", None)
  try:
    return dit_config.DiTConfig.from_dict(model).to_dict()
  except (TypeError, ValueError) as e:
    raise ConversionError(f"{step_dir} is not an RL checkpoint of a WorldPlay DiT: its model config does not "
                          f"describe one ({e})") from None


def params_from_rl_checkpoint(path, which: str = "ema"):
  """(model_config, params as nested NumPy dicts, step folder) of the `which` weights
  ("ema" checkpoint EMA, "raw" trained weights, "policy" rollout EMA) of an RL checkpoint.
  Restores only that subtree, to host memory (no mesh, no optimizer state)."""
  import orbax.checkpoint as ocp
  if which not in RL_WHICH:
    raise ConversionError(f"which must be one of {', '.join(RL_WHICH)}, got {which!r}")
  step_dir = rl_step_dir(path)
  if step_dir is None:
    raise ConversionError(f"{path} is not an RL checkpoint (no checkpoints/<step>/state and config)")
  model_config = rl_model_config(step_dir)
  ckpt = ocp.PyTreeCheckpointer()
  key = RL_WHICH[which]
  tree = ckpt.metadata(step_dir / "state").item_metadata.tree
  if key not in tree:
    raise ConversionError(f"{step_dir}/state has no {key!r} weights (has {sorted(tree)})")
  sub = tree[key]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), sub)
  out = ckpt.restore(step_dir / "state", args=ocp.args.PyTreeRestore(item={key: sub}, restore_args={key: restore_args},
                                                                      partial_restore=True))[key]
  # nnx Variables are stored as `<leaf>/value`: drop that level
  flat = {(k[:-len("/value")] if k.endswith("/value") else k): np.asarray(v) for k, v in flatten(out).items()}
  return model_config, unflatten(flat), step_dir


# ----------------------------------------------------------------------------- streaming export
# `python -m wc_jax.export` reads one tensor (one layer of a stacked leaf) at a time from the
# checkpoint (wc_jax.export.LeafReader) and writes it straight into its safetensors file.

def torch_plan(model_config: dict, reference_config=None):
  """(reference config.json, [(torch key, our path, layer index or None, layout, torch shape)]):
  what `params_to_torch` writes, in the same order, without touching any weights."""
  cfg = dit_config.DiTConfig.from_dict(model_config)
  ref = dict(reference_config or {})
  ref_cfg = dit_config.to_reference(cfg)
  if "constructor_kwargs" in ref:
    ref["constructor_kwargs"] = {k: v for k, v in ref_cfg.items() if not k.startswith("_") and k != "wc_jax_byt5_mapper"}
  else:
    ref = ref_cfg
  _check_expressible(cfg, ref)
  shapes = expected_torch_shapes(cfg)
  return ref, [(tkey, path, layer, layout, tuple(shapes[tkey])) for tkey, path, layout, layer in _entries(cfg)]


def torch_tensor(x: np.ndarray, layout: str, torch_shape, dtype=None) -> np.ndarray:
  """One of our tensors (one layer's slice of a stacked leaf) in the reference layout."""
  x = _to_torch(np.asarray(x), layout, torch_shape)
  return x.astype(jnp.dtype(dtype)) if dtype else x
