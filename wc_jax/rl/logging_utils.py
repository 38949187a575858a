"""Observability of the RL loop: JSONL + TensorBoard scalars, a console progress bar, and
rollout videos (first-frame context + candidates, best and worst labelled)."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np


def strict_json(metrics: dict) -> dict:
  """NaN and +-inf -> None, so that every line is JSON (json.dumps would write bare NaN)."""
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


class MetricsWriter:
  """Writes every step's scalars to metrics.jsonl and TensorBoard (tensorboardX)."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, start: int = 1, progress: bool = True,
               nan_as_null: bool = True):
    from tensorboardX import SummaryWriter
    self.jsonl = workdir / "metrics.jsonl"
    self.nan_as_null = nan_as_null        # False: Python's json (bare NaN, not valid JSON)
    self.tb = SummaryWriter(str(workdir / "tensorboard"))
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
    if self.bar is not None:
      self.bar.update(1)
      shown = {"clip": metrics.get("clip"), "loss": metrics.get("loss")}
      shown.update({k.split("/")[1]: v for k, v in metrics.items() if k.startswith("reward/") and k.endswith("/mean")})
      self.bar.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in shown.items()})

  def close(self) -> None:
    self.tb.flush()
    self.tb.close()
    if self.bar is not None:
      self.bar.close()


def write_rollout_video(path: pathlib.Path, first_frame, frames, combined, fps: int = 8, max_candidates: int = 6):
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
  out[0].save(path, save_all=True, append_images=out[1:], duration=int(1000 / fps), loop=0)
  return path
