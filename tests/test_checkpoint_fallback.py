"""A damaged newest checkpoint (truncated or missing file) is moved aside and the run resumes,
bit-exactly, from the newest readable step; a config mismatch still refuses; when nothing can be
read the error names the step folders and nothing moves."""
import contextlib
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import warnings

import jax
import numpy as np
import pytest

from test_rl import latent_reward_stage, micro_config
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl.trainer import Trainer


def fast_config():
  cfg = micro_config()                 # group 4, 2 rollout steps, checkpoint every step, synchronous saves
  cfg.rl.curriculum = "fixed"          # clip 1 at every step: one compilation per trainer
  cfg.rl.fixed_clip = 1
  cfg.logging.video_every = 0
  cfg.logging.progress = False
  return cfg


class DataSpy:
  """Stands in for the data iterator: records every set_state."""

  def __init__(self):
    self.calls = []

  def get_state(self):
    return {"index": 0}

  def set_state(self, state):
    self.calls.append(state)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  """Run A: steps 1..3 uninterrupted, a checkpoint after each; its trainer, metrics and folder."""
  workdir = tmp_path_factory.mktemp("run_a")
  tr = Trainer(fast_config(), str(workdir), reward_stage=latent_reward_stage())
  last = tr.run(3)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3] and last["step"] == 3 and tr.ckpt.latest_step() == 3
  return tr, lines, workdir / "checkpoints"


def _copy_run(run_a, dst: pathlib.Path) -> pathlib.Path:
  """Run B's checkpoints: a byte copy of run A's (the runs are deterministic; see test_rl's
  test_killed_run_resumes_exactly), which saves a second 3-step run."""
  shutil.copytree(run_a[2], dst / "checkpoints")
  return dst / "checkpoints"


def _files(d: pathlib.Path) -> dict:
  return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def _truncate(p: pathlib.Path):
  os.truncate(p, p.stat().st_size // 2)


class _Records(logging.Handler):

  def __init__(self, seen):
    super().__init__(logging.WARNING)
    self.seen = seen

  def emit(self, record):
    self.seen.append(f"log {record.name}: {record.getMessage()}"[:200])


@contextlib.contextmanager
def restore_noise():
  """Collects what a failed Orbax restore would spill besides our warning: ~1900 abandoned read
  coroutines reporting themselves as unraisable errors (~65 lines each), asyncio's "exception was
  never retrieved" logs, "never awaited" warnings; restore_latest drops exactly those. Not counted:
  "Event loop is closed" errors, which TensorStore callbacks raise up to seconds later, possibly
  from an earlier test (see test_noise_filter_is_narrow)."""
  seen, prev = [], sys.unraisablehook

  def count(u):
    if str(u.exc_value) != "Event loop is closed":
      seen.append(f"unraisable {type(u.exc_value).__name__}: {u.exc_value}"[:200])

  sys.unraisablehook = count
  handler = _Records(seen)
  logging.getLogger("asyncio").addHandler(handler)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      try:
        yield seen
      finally:
        gc.collect()
        seen.extend(f"warning {w.category.__name__}: {w.message}"[:200] for w in caught
                    if "coroutine" in str(w.message))
  finally:
    logging.getLogger("asyncio").removeHandler(handler)
    sys.unraisablehook = prev
    ckpt_lib._drop_abandoned_read_noise()   # as restore_latest left it: stragglers stay quiet


def _corrupt_records(caplog):
  return [r for r in caplog.records if r.name == "wc_jax.train" and "could not be restored" in r.getMessage()]


def test_truncated_newest_step_falls_back_and_resumes_exactly(run_a, tmp_path, caplog):
  ref, ref_lines, _ = run_a
  ckpt_dir = _copy_run(run_a, tmp_path)
  original = _files(ckpt_dir / "3")
  victim = _largest_array_file(ckpt_dir / "3")
  _truncate(victim)
  rel = str(victim.relative_to(ckpt_dir / "3"))

  b = Trainer(fast_config(), str(tmp_path), reward_stage=latent_reward_stage())
  with caplog.at_level(logging.WARNING, logger="wc_jax.train"):
    last = b.run(3)

  warned = _corrupt_records(caplog)
  assert len(warned) == 1
  msg = warned[0].getMessage()
  assert "\n" not in msg and "step 3" in msg and "corrupt" in msg and "resuming from step 2" in msg
  assert str(ckpt_dir) in msg
  # step 3 re-ran from step 2's checkpoint: the same loss and state as the uninterrupted run, bit for bit
  assert last["step"] == 3 and last["loss"] == ref_lines[2]["loss"]
  assert [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [3]
  for x, y in zip(jax.tree.leaves(jax.tree.map(np.asarray, ref.state)), jax.tree.leaves(jax.tree.map(np.asarray, b.state))):
    np.testing.assert_array_equal(x, y)
  # the damaged step sits beside the checkpoints with all its files, the truncated one included
  moved = tmp_path / "checkpoints.corrupt" / "3"
  assert str(moved) in msg
  assert set(_files(moved)) == set(original)
  assert _files(moved)[rel] == original[rel] // 2
  # ... and the checkpoint folder has a new, readable step 3
  again = ckpt_lib.Checkpointer(ckpt_dir, fast_config())
  assert again.manager.all_steps() == [1, 2, 3]
  spy = DataSpy()
  state, nxt = again.restore_latest(ref.state, spy)
  assert nxt == 4 and spy.calls == [ref.data.get_state()]
  for x, y in zip(jax.tree.leaves(jax.tree.map(np.asarray, ref.state)), jax.tree.leaves(jax.tree.map(np.asarray, state))):
    np.testing.assert_array_equal(x, y)


def _delete(p: pathlib.Path):
  p.unlink()


@pytest.mark.parametrize("damage", [
    pytest.param(lambda s: _delete(_largest_array_file(s)), id="deleted_array_file"),
    pytest.param(lambda s: _truncate(s / "state" / "_METADATA"), id="truncated_state_metadata"),
    pytest.param(lambda s: _delete(s / "state" / "manifest.ocdbt"), id="deleted_ocdbt_manifest"),
    pytest.param(lambda s: os.truncate(s / "data" / "metadata", 3), id="truncated_data_json"),
    pytest.param(lambda s: _delete(s / "config" / "metadata"), id="deleted_config_json"),
])
def test_damaged_newest_step_restores_the_previous_one(run_a, tmp_path, caplog, damage):
  ref = run_a[0]
  ckpt_dir = _copy_run(run_a, tmp_path)
  original = _files(ckpt_dir / "3")
  damage(ckpt_dir / "3")
  ck = ckpt_lib.Checkpointer(ckpt_dir, fast_config())
  assert ck.manager.all_steps() == [1, 2, 3]
  spy = DataSpy()
  with caplog.at_level(logging.WARNING, logger="wc_jax.train"), restore_noise() as noise:
    _, nxt = ck.restore_latest(ref.state, spy)
  assert nxt == 3 and noise == []
  assert spy.calls == [{"index": 2}]          # only the step that was read completely set the data state
  [rec] = _corrupt_records(caplog)
  assert "step 3" in rec.getMessage() and "\n" not in rec.getMessage()
  assert ck.manager.all_steps() == [1, 2] and not (ckpt_dir / "3").exists()
  moved = _files(tmp_path / "checkpoints.corrupt" / "3")
  assert set(moved) <= set(original) and len(original) - len(moved) <= 1   # whatever was left of it


def test_uncommitted_newest_step_is_ignored(run_a, tmp_path, caplog):
  """An interrupted save leaves `<step>.orbax-checkpoint-tmp-*`: Orbax does not list it; nothing moves."""
  ckpt_dir = _copy_run(run_a, tmp_path)
  os.rename(ckpt_dir / "3", ckpt_dir / "3.orbax-checkpoint-tmp-1234")
  ck = ckpt_lib.Checkpointer(ckpt_dir, fast_config())
  spy = DataSpy()
  with caplog.at_level(logging.WARNING, logger="wc_jax.train"):
    _, nxt = ck.restore_latest(run_a[0].state, spy)
  assert nxt == 3 and spy.calls == [{"index": 2}] and not _corrupt_records(caplog)
  assert not (tmp_path / "checkpoints.corrupt").exists()


def test_config_mismatch_still_refuses_and_moves_nothing(run_a, tmp_path):
  ckpt_dir = _copy_run(run_a, tmp_path)
  before = _files(ckpt_dir)
  other = fast_config()
  other.model.depth = 3
  spy = DataSpy()
  with pytest.raises(ckpt_lib.ConfigMismatch, match=r"'depth': \(2, 3\)"):
    ckpt_lib.Checkpointer(ckpt_dir, other).restore_latest(run_a[0].state, spy)
  assert spy.calls == [] and _files(ckpt_dir) == before
  assert not (tmp_path / "checkpoints.corrupt").exists()


def test_no_readable_step_raises_naming_the_folders(run_a, tmp_path, caplog):
  ckpt_dir = _copy_run(run_a, tmp_path)
  for s in (1, 2, 3):
    _truncate(_largest_array_file(ckpt_dir / str(s)))
  before = _files(ckpt_dir)
  ck = ckpt_lib.Checkpointer(ckpt_dir, fast_config())
  spy = DataSpy()
  with pytest.raises(RuntimeError, match="no checkpoint step in .* could be restored") as e, \
       restore_noise() as noise:
    ck.restore_latest(run_a[0].state, spy)
  assert noise == []
  for s in (1, 2, 3):
    assert str(ckpt_dir / str(s)) in str(e.value)
  assert "OUT_OF_RANGE" in str(e.value)       # TensorStore's own reason, not Orbax's wrapper
  # nothing moved: the next restart must fail the same way, not find an empty folder and start over
  assert spy.calls == [] and _files(ckpt_dir) == before and ck.manager.all_steps() == [1, 2, 3]
  assert not (tmp_path / "checkpoints.corrupt").exists() and not _corrupt_records(caplog)


def test_a_second_corrupt_copy_of_a_step_gets_a_suffix(run_a, tmp_path):
  ckpt_dir = _copy_run(run_a, tmp_path)
  (tmp_path / "checkpoints.corrupt" / "3").mkdir(parents=True)     # left by an earlier incident
  _truncate(_largest_array_file(ckpt_dir / "3"))
  ck = ckpt_lib.Checkpointer(ckpt_dir, fast_config())
  assert ck.restore_latest(run_a[0].state, DataSpy())[1] == 3
  assert (tmp_path / "checkpoints.corrupt" / "3.1" / "state").is_dir()
  assert not any((tmp_path / "checkpoints.corrupt" / "3").iterdir())


def test_one_line_reason():
  try:
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "x" in "/ck/3/state/"\nmore detail')
    except ValueError as inner:
      raise Exception("Encountered error while reading array index\n" + "x" * 500) from inner
  except Exception as e:
    assert ckpt_lib._one_line(e, strip="/ck/") == 'ValueError: OUT_OF_RANGE: Error reading "x" in "3/state/"'
  assert len(ckpt_lib._one_line(RuntimeError("y" * 500))) == 240


def test_noise_filter_is_narrow():
  seen, prev = [], sys.unraisablehook
  sys.unraisablehook = lambda u: seen.append(str(u.exc_value))
  try:
    ckpt_lib._drop_abandoned_read_noise()
    ckpt_lib._drop_abandoned_read_noise()    # idempotent: one wrapper
    hook = sys.unraisablehook

    class U:
      def __init__(self, exc, obj=None):
        self.exc_type, self.exc_value, self.exc_traceback, self.err_msg, self.object = type(exc), exc, None, None, obj

    async def _read_array_index_and_device_put():
      pass

    coro = _read_array_index_and_device_put()
    wrapped = Exception("Encountered error while reading array index")
    wrapped.__cause__ = GeneratorExit()
    hook(U(RuntimeError("Event loop is closed")))
    hook(U(wrapped, coro))
    hook(U(RuntimeError("something else")))
    hook(U(Exception("Encountered error while reading array index"), coro))   # not from a GeneratorExit
    coro.close()
  finally:
    sys.unraisablehook = prev
  assert seen == ["something else", "Encountered error while reading array index"]
  f = ckpt_lib._AbandonedReadLog()
  rec = lambda msg: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)
  assert not f.filter(rec("Task exception was never retrieved\nfuture: <Task coro=<_read_array_index_and_device_put()>"))
  assert f.filter(rec("Task exception was never retrieved\nfuture: <Task coro=<my_own_task()>"))


def test_preemption_notice_saves_at_the_next_step_boundary_and_stops(tmp_path, monkeypatch, caplog):
  cfg = fast_config()
  cfg.checkpoint.every = 10                # no regular save before step 10: the notice is the trigger
  tr = Trainer(cfg, str(tmp_path), reward_stage=latent_reward_stage())
  assert tr.ckpt.reached_preemption(1) is False    # one process: no preemption sync manager
  asked = []

  def notice(step):                        # jax.distributed's sync point: the notice lands at step 2
    asked.append(step)
    return step == 2

  monkeypatch.setattr(tr.ckpt, "reached_preemption", notice)
  with caplog.at_level(logging.WARNING, logger="wc_jax.train"):
    last = tr.run(5)
  assert asked == [1, 2] and last["step"] == 2 and tr.ckpt.latest_step() == 2
  assert "preemption notice: saving step 2, then exiting" in caplog.messages
  assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
