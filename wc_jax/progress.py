"""Long set-up phases that say what they are doing, how long they took, and stop on Ctrl-C.

Building an 8B model on a CPU, restoring a checkpoint or AOT-compiling for a pod runs for
minutes inside C++ (XLA, TensorStore) without returning to Python, so Python's
KeyboardInterrupt would wait for it. Inside a `phase` Ctrl-C therefore ends the process at
once (the default SIGINT action): nothing is lost, a set-up phase has nothing to save.

    with phase("building the DiT", detail="8.56 B parameters, 31.9 GiB float32"):
      model = WorldPlayDiT(...)
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

log = logging.getLogger("wc_jax")


@contextlib.contextmanager
def phase(name: str, detail: str = "", logger: logging.Logger | None = None, interruptible: bool = True):
  """Logs `name (detail) ...` before and `name: 12.3 s` after; Ctrl-C ends the process meanwhile."""
  logger = logger or log
  logger.info("%s%s ...", name, f" ({detail})" if detail else "")
  previous = None
  if interruptible and threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
  start = time.perf_counter()
  try:
    yield
  finally:
    if previous is not None:
      signal.signal(signal.SIGINT, previous)
  logger.info("%s: %.1f s", name, time.perf_counter() - start)


def human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} TiB"  # pragma: no cover


def size_note(n_params: int, dtype_bytes: int, platform: str) -> str:
  """'8.56 B parameters, 31.9 GiB float32 (expect minutes on a CPU)' for the log line."""
  count = f"{n_params / 1e9:.2f} B" if n_params >= 1e8 else f"{n_params / 1e6:.2f} M"
  note = f"{count} parameters, {human_bytes(n_params * dtype_bytes)}"
  if platform == "cpu" and n_params >= 1e9:
    note += "; full size on a CPU: expect minutes"
  return note
