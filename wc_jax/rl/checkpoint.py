"""Orbax checkpointing of the RL state: model, optimizer, both EMAs, step, RNG, data-iterator
state and config, saved asynchronously; a run resumes from the newest step.

A checkpoint of another model config is refused with a message naming the differences.
"""
from __future__ import annotations

import json
import pathlib

import jax
import orbax.checkpoint as ocp

from wc_jax.rl.update import TrainState


class ConfigMismatch(ValueError):
  pass


def _model_fingerprint(cfg) -> dict:
  d = cfg.model.to_dict()
  d.pop("checkpoint", None)
  return json.loads(json.dumps(d))


class Checkpointer:

  def __init__(self, directory, cfg, max_to_keep: int | None = None):
    self.cfg = cfg
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or cfg.checkpoint.keep,
                                           enable_async_checkpointing=bool(cfg.checkpoint.get("async_save", True)))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def save(self, step: int, state: TrainState, data) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data.get_state()),
                              config=ocp.args.JsonSave({"model": _model_fingerprint(self.cfg),
                                                        "full": json.loads(self.cfg.to_json())}))
    self.manager.save(step, args=args)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_latest(self, state_like: TrainState, data):
    """(state, next_step) from the newest checkpoint, or None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    saved_cfg = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    want = _model_fingerprint(self.cfg)
    diff = {k: (saved_cfg["model"].get(k), want.get(k)) for k in set(want) | set(saved_cfg["model"])
            if saved_cfg["model"].get(k) != want.get(k)}
    if diff:
      raise ConfigMismatch(f"checkpoint {self.directory} (step {step}) was written for another model config; "
                           f"differences (checkpoint vs now): {diff}")
    # restore straight onto the mesh: every array takes the sharding of the live state's array
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like)
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                              data=ocp.args.JsonRestore()))
    data.set_state(out["data"])
    return out["state"], step + 1
