"""Timing helpers shared by the benchmarks: repeated, interleaved arms and robust summaries.

Each arm is a zero-argument callable that runs one rep to completion (block on its outputs).
Arms run interleaved (a, b, a, b, ...) so a load change on a shared machine hits every arm alike;
compile / warm-up happens before and is reported apart.
"""
from __future__ import annotations

import os
import statistics
import time


def load() -> float:
  """1-minute load average (0 where the OS has none)."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return 0.0


def summary(times: list[float]) -> dict:
  med = statistics.median(times)
  return {"median_ms": round(med * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
          "max_ms": round(max(times) * 1e3, 3), "spread": round((max(times) - min(times)) / med, 3) if med else 0.0,
          "reps": len(times)}


def interleaved(arms: dict, reps: int) -> dict:
  """{name: summary} of `reps` timed calls of every arm, taken round-robin."""
  times = {k: [] for k in arms}
  for _ in range(reps):
    for k, fn in arms.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  return {k: summary(v) for k, v in times.items()}


def timed(fn):
  """(result, seconds) of one call (compile / first-call time)."""
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t
