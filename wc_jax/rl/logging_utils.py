"""Observability of the RL loop: JSONL + TensorBoard scalars, a console progress bar, and
rollout videos (first-frame context + candidates, best and worst labelled).

The workdir may be local or remote (gs://...; any `etils.epath` path). Object stores cannot
append, so for a remote workdir metrics.jsonl and the TensorBoard event files are written to a
local staging folder and uploaded whole (a rewrite of each small file) by `flush()`: every
`flush_secs`, before each checkpoint and at the end. A local workdir is written in place.
"""
from __future__ import annotations

import io
import json
import math
import pathlib
import shutil
import tempfile
import time

import numpy as np
from etils import epath


def _fresh_gcs_listings() -> None:
  """gcsfs caches folder listings per process; on a pod other hosts write the same folders
  (Orbax's step folders, metrics), so a cached listing can hide them. List afresh instead."""
  try:
    import fsspec
  except ImportError:   # pragma: no cover - etils[epath] brings fsspec
    return
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_fresh_gcs_listings()


def is_remote(path) -> bool:
  """gs://, s3://, ...: a path that `open()` and `os` cannot reach."""
  return "://" in str(path)


def as_path(path) -> epath.Path:
  """`path` as an etils.epath.Path: local paths made absolute, remote ones (gs://) kept as URIs."""
  p = epath.Path(path)
  return p if is_remote(path) else epath.Path(pathlib.Path(path).absolute())


def strict_json(metrics: dict) -> dict:
  """NaN and +-inf -> None, so that every line is JSON (json.dumps would write bare NaN)."""
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


class MetricsWriter:
  """Writes every step's scalars to metrics.jsonl and TensorBoard (tensorboardX)."""

  def __init__(self, workdir, total_steps: int, start: int = 1, progress: bool = True,
               nan_as_null: bool = True, flush_secs: float = 60.0):
    from tensorboardX import SummaryWriter
    self.workdir = as_path(workdir)
    self.remote = is_remote(workdir)
    self.flush_secs = flush_secs
    self._flushed = time.monotonic()
    self._stage = None
    if self.remote:                        # local staging, uploaded whole by flush()
      self._stage = pathlib.Path(tempfile.mkdtemp(prefix="wc_jax_metrics_"))
      remote_jsonl = self.workdir / "metrics.jsonl"
      if remote_jsonl.exists():            # a resumed run continues the file
        (self._stage / "metrics.jsonl").write_bytes(remote_jsonl.read_bytes())
      local = self._stage
    else:
      local = pathlib.Path(self.workdir)
    self.jsonl = local / "metrics.jsonl"
    self.nan_as_null = nan_as_null        # False: Python's json (bare NaN, not valid JSON)
    self.tb = SummaryWriter(str(local / "tensorboard"))
    self.bar = None
    if progress:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start - 1, desc="wc_jax RL", unit="step")

  def write(self, step: int, metrics: dict) -> None:
    with open(self.jsonl, "a", encoding="utf-8") as f:
      f.write(json.dumps(strict_json(metrics) if self.nan_as_null else metrics) + "\n")
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and np.isfinite(v):
        self.tb.add_scalar(k, v, step)
    if self.remote and time.monotonic() - self._flushed > self.flush_secs:
      self.flush()
    if self.bar is not None:
      self.bar.update(1)
      shown = {"clip": metrics.get("clip"), "loss": metrics.get("loss")}
      shown.update({k.split("/")[1]: v for k, v in metrics.items() if k.startswith("reward/") and k.endswith("/mean")})
      self.bar.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in shown.items()})

  def flush(self) -> None:
    """Makes everything written so far durable in the workdir (uploads it when remote)."""
    self.tb.flush()
    self._flushed = time.monotonic()
    if not self.remote:
      return
    for f in sorted(self._stage.rglob("*")):
      if f.is_file():
        dst = self.workdir / f.relative_to(self._stage).as_posix()
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(f.read_bytes())

  def close(self) -> None:
    self.tb.flush()
    self.tb.close()
    self.flush()
    if self._stage is not None:
      shutil.rmtree(self._stage, ignore_errors=True)
    if self.bar is not None:
      self.bar.close()


def write_rollout_video(path, first_frame, frames, combined, fps: int = 8, max_candidates: int = 6):
  """GIF: the video's first frame, then candidates side by side (sorted best -> worst, captioned).

  first_frame [H,W,3] and frames [G,F,H,W,3] in [0,1]; combined [G] selection scores.
  """
  from PIL import Image, ImageDraw
  frames = np.asarray(frames)
  order = np.argsort(-np.asarray(combined))
  pick = list(order[: max_candidates // 2]) + list(order[-(max_candidates - max_candidates // 2):])
  pick = list(dict.fromkeys(int(i) for i in pick))
  g, f, h, w, _ = frames.shape
  scale = max(1, 128 // max(h, w))
  out = []
  for t in range(f):
    tiles = [np.asarray(first_frame)] + [frames[i, t] for i in pick]
    row = np.concatenate([np.pad(x, ((14, 0), (0, 2), (0, 0))) for x in tiles], axis=1)
    img = Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8)).resize(
        (row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    draw.text((2, 0), "first", fill=(255, 255, 0))
    for j, i in enumerate(pick):
      tag = "best" if i == order[0] else ("worst" if i == order[-1] else f"#{i}")
      draw.text(((j + 1) * (w + 2) * scale + 2, 0), f"{tag} {float(combined[i]):+.2f}", fill=(255, 255, 0))
    out.append(img)
  buf = io.BytesIO()                    # one write: local or gs:// alike
  out[0].save(buf, format="GIF", save_all=True, append_images=out[1:], duration=int(1000 / fps), loop=0)
  path = as_path(path)
  path.write_bytes(buf.getvalue())
  return path


class StepProfiler:
  """A jax.profiler trace of steps k..k+n-1 (`logging.profile_steps=(k, n)`; n=0: off) in
  workdir/profile, the layout TensorBoard's profile plugin reads (plugins/profile/<run>/). A
  remote workdir gets the trace through a local folder, uploaded once the trace stops."""

  def __init__(self, workdir, steps=(0, 0), lead: bool = True):
    k, n = (tuple(steps) + (0, 0))[:2] if steps else (0, 0)
    self.first, self.last = int(k), int(k) + int(n) - 1
    self.dest = as_path(workdir) / "profile"
    self.lead = lead
    self.active = False
    self._local = None

  def before(self, step: int) -> None:
    if self.last >= self.first and step == self.first and not self.active:
      import jax
      if is_remote(self.dest):
        self._local = pathlib.Path(tempfile.mkdtemp(prefix="wc_jax_profile_"))
        where = self._local
      else:
        self.dest.mkdir(parents=True, exist_ok=True)
        where = self.dest
      jax.profiler.start_trace(str(where))
      self.active = True

  def after(self, step: int, wait_on=None) -> None:
    if self.active and step >= self.last:
      self.stop(wait_on)

  def stop(self, wait_on=None) -> None:
    if not self.active:
      return
    import jax
    if wait_on is not None:
      jax.block_until_ready(wait_on)   # the traced steps' device work ends inside the trace
    jax.profiler.stop_trace()
    self.active = False
    if self._local is not None:
      for f in sorted(self._local.rglob("*")):
        if f.is_file():
          dst = self.dest / f.relative_to(self._local).as_posix()
          dst.parent.mkdir(parents=True, exist_ok=True)
          dst.write_bytes(f.read_bytes())
      shutil.rmtree(self._local, ignore_errors=True)
      self._local = None
