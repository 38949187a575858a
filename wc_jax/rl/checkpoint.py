"""Orbax checkpointing of the RL state: model, optimizer, both EMAs, step, RNG, data-iterator
state, the reward stage's state (when it has one) and config, saved asynchronously; a run resumes
from the newest intact step.

A reward stage with state (`get_state()` / `set_state(tree)`: a ShuffledRewardStage's call count,
a SWIRL stage's IDM weights and optimizer) is saved as the item "reward", a pytree of arrays; its
Python ints come back as 0-d arrays, so `set_state` converts them. A step written without that item
(before it existed, or by a run with a stateless stage) still restores: the stage keeps its state
and a warning says so.

A checkpoint of another model config is refused with a message naming the differences.

A step that cannot be read (a truncated or missing array file, unreadable JSON, ...: anything
Orbax, TensorStore or JSON raises while restoring it) is not fatal: the next older step is tried,
and once one restores, one warning line names each unreadable step, whose folder is moved aside to
`<checkpoints>.corrupt/<step>` (nothing is deleted). When no step can be read, `restore_latest`
raises, naming them, and moves nothing, so that a run never silently starts again from step 1.
"""
from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import sys
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from wc_jax.distributed import any_process
from wc_jax.rl.logging_utils import as_path, is_remote
from wc_jax.rl.update import TrainState

log = logging.getLogger("wc_jax.train")


class ConfigMismatch(ValueError):
  pass


def _model_fingerprint(cfg) -> dict:
  d = cfg.model.to_dict()
  d.pop("checkpoint", None)
  return json.loads(json.dumps(d))


def _one_line(err: BaseException, strip: str = "", limit: int = 240) -> str:
  """`Type: first line of the message` of the error's root cause (Orbax wraps TensorStore's
  precise error in a vague one), `strip` removed, at most `limit` characters."""
  while True:
    nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    if nxt is None:
      break
    err = nxt
  lines = str(err).strip().splitlines()
  first = lines[0].strip().replace(strip, "") if lines and strip else (lines[0].strip() if lines else "")
  msg = f"{type(err).__name__}: {first}" if first else type(err).__name__
  return msg if len(msg) <= limit else msg[:limit - 3] + "..."


# When one array of a step fails to read, Orbax's gather raises at once and closes its event loop
# while the step's other reads (~1900 for the tiny model) are still in flight. Each then reports
# itself, some during the restore, some seconds later: as an unraisable error (the coroutine,
# closed by the garbage collector, turns GeneratorExit into an Exception carrying a ~65-line
# TensorStore spec; TensorStore callbacks find the loop closed), as asyncio's "Task exception was
# never retrieved" log, or as "coroutine ... was never awaited": 100,000+ lines for one truncated
# file. `_drop_abandoned_read_noise` drops exactly those, for the rest of the process.
_ABANDONED = "_read_array_index_and_device_put"   # orbax/checkpoint/_src/serialization/serialization.py


def _abandoned_read(u) -> bool:
  e = u.exc_value
  if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
    return True
  return (inspect.iscoroutine(u.object) and getattr(u.object, "__name__", "") == _ABANDONED
          and isinstance(getattr(e, "__cause__", None), GeneratorExit))


class _AbandonedReadLog(logging.Filter):
  """asyncio's "Task/Future/_GatheringFuture exception was never retrieved" for those reads."""
  MARKS = (_ABANDONED, "Encountered error while reading array index", "OCDBT database", '"zarr" driver')

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not ("exception was never retrieved" in msg and any(m in msg for m in self.MARKS))


def _drop_abandoned_read_noise() -> None:
  """Idempotent; every other unraisable error, asyncio log and warning goes through as before."""
  if not getattr(sys.unraisablehook, "_wc_jax_abandoned_reads", False):
    prev = sys.unraisablehook

    def hook(u):
      if not _abandoned_read(u):
        prev(u)

    hook._wc_jax_abandoned_reads = True
    sys.unraisablehook = hook
  asyncio_log = logging.getLogger("asyncio")
  if not any(isinstance(f, _AbandonedReadLog) for f in asyncio_log.filters):
    asyncio_log.addFilter(_AbandonedReadLog())
  warnings.filterwarnings("ignore", message=f"coroutine '{_ABANDONED}' was never awaited", category=RuntimeWarning)


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  for f in src.iterdir():
    if f.is_dir():
      _copy_tree(f, dst / f.name)
    else:
      (dst / f.name).parent.mkdir(parents=True, exist_ok=True)
      (dst / f.name).write_bytes(f.read_bytes())


def _multiprocess() -> bool:
  return jax.process_count() > 1


REWARD_ITEM = "reward"


def stateful(obj) -> bool:
  """True for an object with the checkpoint protocol: `get_state()` -> pytree of arrays and ints,
  `set_state(tree)`."""
  return obj is not None and callable(getattr(obj, "get_state", None)) and callable(getattr(obj, "set_state", None))


def _reward_tree(reward_stage):
  """The stage's state as a pytree of NumPy arrays (ints become 0-d int64 arrays), or None when
  the stage keeps no state."""
  if not stateful(reward_stage):
    return None
  tree = jax.tree.map(lambda x: np.array(x), reward_stage.get_state())   # a copy: saves may be async
  return tree if jax.tree.leaves(tree) else None


class Checkpointer:

  def __init__(self, directory, cfg, max_to_keep: int | None = None):
    self.cfg = cfg
    self.directory = as_path(directory)   # local or gs://: Orbax and TensorStore write either
    # corrupt steps go beside the checkpoint folder, where Orbax does not look for steps
    self.corrupt_dir = self.directory.parent / f"{self.directory.name}.corrupt"
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or cfg.checkpoint.keep,
                                           enable_async_checkpointing=bool(cfg.checkpoint.get("async_save", True)))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config", REWARD_ITEM))

  def save(self, step: int, state: TrainState, data, reward_stage=None) -> None:
    """Saves step `step`; `reward_stage`'s state too when it has the get_state/set_state protocol."""
    items = dict(state=ocp.args.StandardSave(state),
                 data=ocp.args.JsonSave(data.get_state()),
                 config=ocp.args.JsonSave({"model": _model_fingerprint(self.cfg),
                                           "full": json.loads(self.cfg.to_json())}))
    reward = _reward_tree(reward_stage)
    if reward is not None:
      items[REWARD_ITEM] = ocp.args.StandardSave(reward)
    self.manager.save(step, args=ocp.args.Composite(**items))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True on every process at the same step once a preemption notice arrived (the TPU
    maintenance / Spot notice through jax.distributed's preemption sync manager, which is only
    there on a multi-process run). Call it at every step boundary; a True means: save, exit."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception as e:  # noqa: BLE001  (no sync manager: no notice can arrive this way)
      log.debug("preemption check unavailable: %s", e)
      return False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _step_dir(self, step: int) -> epath.Path:
    try:   # the manager's own path (its step name format); a private method, hence the fallback
      return epath.Path(self.manager._get_read_step_directory(step, self.manager.directory))
    except Exception:  # noqa: BLE001
      return self.directory / str(step)

  def _model_diff(self, step: int) -> dict:
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    saved_model = saved["model"]
    if not isinstance(saved_model, dict):
      raise TypeError(f"config item of step {step} holds {type(saved_model).__name__}, not a dict")
    want = _model_fingerprint(self.cfg)
    return {k: (saved_model.get(k), want.get(k)) for k in set(want) | set(saved_model)
            if saved_model.get(k) != want.get(k)}

  def _move_aside(self, step: int, reason: str, resumed: int) -> epath.Path:
    """Moves the unreadable step's folder to `<checkpoints>.corrupt/<step>[.N]` (process 0; every
    process waits for it) and re-reads the step list. Returns the new location."""
    src = self._step_dir(step)
    dst = self.corrupt_dir / src.name
    n = 1
    while dst.exists():
      dst = self.corrupt_dir / f"{src.name}.{n}"
      n += 1
    log.warning("checkpoint step %d in %s could not be restored (%s); treated as corrupt: moved to %s, "
                "resuming from step %d", step, self.directory, reason, dst, resumed)
    if _multiprocess():   # every process has chosen `dst` before process 0 renames
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"wc_jax checkpoint step {step} moving aside")
    if jax.process_index() == 0:
      self.corrupt_dir.mkdir(parents=True, exist_ok=True)
      if is_remote(src):     # object stores have no folder rename: copy every object, then drop the old
        _copy_tree(src, dst)
        src.rmtree()
      else:
        os.replace(src, dst)   # a rename on the same filesystem: nothing is copied or deleted
    if _multiprocess():
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"wc_jax checkpoint step {step} moved aside")
    self.manager.reload()    # forget the step, so that it can be written again
    if step in self.manager.all_steps():
      raise RuntimeError(f"moved checkpoint step {step} from {src} to {dst}, yet Orbax still lists it")
    return dst

  def _has_item(self, step: int, name: str) -> bool:
    try:
      return (self._step_dir(step) / name).exists()
    except Exception:  # noqa: BLE001  (an unreadable folder: the restore itself will say)
      return False

  def restore_latest(self, state_like: TrainState, data, reward_stage=None):
    """(state, next_step) from the newest readable checkpoint, or None when there is none.

    Steps are tried newest first. Steps newer than the one restored could not be read (a
    truncated or missing file, ...): each is named in one warning and moved aside, see the module
    doc. `data` (and `reward_stage`, when it has the get_state/set_state protocol and the step
    holds its item) is only set from a step that was read completely.
    Raises ConfigMismatch for a checkpoint of another model config (a user error: nothing moves),
    and RuntimeError when no step can be read: then nothing is moved either, for the same error on
    every step more likely means a changed setup (say, the optimizer's state) than damage, and the
    next restart must not find an empty folder and silently start from step 1.
    """
    # restore straight onto the mesh: every array takes the sharding of the live state's array
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like)
    failed = []   # (step, one-line reason), newest first
    if self.manager.all_steps():
      _drop_abandoned_read_noise()   # before any restore: a failing one is noisy while it runs
    for step in sorted(self.manager.all_steps(), reverse=True):
      err, out, diff = None, None, {}
      want_reward = stateful(reward_stage) and self._has_item(step, REWARD_ITEM)
      try:
        diff = self._model_diff(step)
        if not diff:
          items = dict(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
          if want_reward:
            items[REWARD_ITEM] = ocp.args.StandardRestore()
          out = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001  (Orbax, TensorStore, JSON, ...: the step is unreadable)
        err = e
      if any_process(err is not None):   # every process moves on to the same older step
        failed.append((step, _one_line(err, strip=f"{self.directory}{os.sep}") if err is not None
                       else "failed on another process"))
        del err
        gc.collect()   # close the failed restore's abandoned reads now
        continue
      if diff:
        raise ConfigMismatch(f"checkpoint {self.directory} (step {step}) was written for another model config; "
                             f"differences (checkpoint vs now): {diff}")
      data.set_state(out["data"])
      if want_reward:
        reward_stage.set_state(jax.tree.map(np.asarray, out[REWARD_ITEM]))
      elif _reward_tree(reward_stage) is not None:
        log.warning("checkpoint step %d holds no reward-stage state (written before it was saved, or by a run "
                    "whose reward stage kept none): %s starts from its initial state", step,
                    type(reward_stage).__name__)
      for bad, reason in failed:
        self._move_aside(bad, reason, resumed=step)
      return out["state"], step + 1
    if failed:
      steps = "; ".join(f"{self._step_dir(s)}: {r}" for s, r in failed)
      raise RuntimeError(f"no checkpoint step in {self.directory} could be restored, so this run cannot resume ({steps}). "
                         f"Nothing was moved or deleted. If every step fails alike, the config (optimizer, model) "
                         f"likely differs from the run's; otherwise move the damaged step folders out of "
                         f"{self.directory} or start a new workdir")
    return None
