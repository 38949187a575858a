"""Checkpoints of wc_jax's inverse-dynamics model (the SWIRL-style IDM reward).

The IDM is our own model: there is no reference (torch) layout to convert from or to,
only wc_jax Orbax folders (`save_idm` / `load_model(kinds.IDM, path)`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from flax import nnx

from wc_jax.convert import kinds
from wc_jax.convert.common import ConversionError, save_orbax
from wc_jax.models.idm import IDMConfig, InverseDynamicsModel, init_idm

KIND = kinds.IDM
TORCH_FILENAME = "idm.safetensors"


def matches(config: dict) -> bool:
  return False                      # no reference config.json describes an IDM


def torch_to_params(source, config: dict, dtype=None, mesh=None):
  raise ConversionError("the IDM is wc_jax's own model: there is no reference checkpoint to convert "
                        "(train one and save it with wc_jax.convert.idm.save_idm)")


def params_to_torch(params: Mapping, model_config: dict, dtype=None, reference_config=None):
  raise ConversionError("the IDM is wc_jax's own model: it has no reference (torch) layout to export to")


def config_from_dict(model_config: Mapping) -> IDMConfig:
  known = {f.name for f in dataclasses.fields(IDMConfig)}
  unknown = sorted(set(model_config) - known)
  if unknown:
    raise ConversionError(f"IDM config has unknown fields {unknown} (known: {sorted(known)})")
  return IDMConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in model_config.items()})


def build_model(model_config: Mapping, params, mesh=None, **overrides) -> InverseDynamicsModel:
  cfg = config_from_dict({**model_config, **overrides})
  model = nnx.eval_shape(lambda: InverseDynamicsModel(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  want = nnx.to_pure_dict(state)
  try:
    nnx.replace_by_pure_dict(state, params)
  except (KeyError, ValueError) as e:
    raise ConversionError(f"IDM parameters do not fit the recorded config {cfg}: {e}") from e
  got = nnx.to_pure_dict(state)
  import jax
  for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
    if tuple(w.shape) != tuple(g.shape):
      raise ConversionError(f"IDM parameter {jax.tree_util.keystr(path)} has shape {tuple(g.shape)}, "
                            f"the config needs {tuple(w.shape)}")
  nnx.update(model, state)
  return model


def save_idm(model: InverseDynamicsModel, out_dir) -> None:
  """Writes `model` as a wc_jax Orbax folder of kind 'idm' (load with load_model(kinds.IDM, path))."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  save_orbax(params, out_dir, {"kind": KIND, "model_config": dataclasses.asdict(model.config)})


def random_idm(cfg: IDMConfig, seed: int = 0) -> InverseDynamicsModel:
  return init_idm(cfg, seed=seed)
