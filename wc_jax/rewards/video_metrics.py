"""Whole-video metrics with the reward code: action accuracy (exact 81-way and fine) and quality.

A video of L latents (F = 4L-3 frames) is cut into the windows the rewards score during training:
chunk 0 is frames 0 .. 4c-4 (4c-3 frames), every later chunk k its 4c new frames plus the last
frame of chunk k-1 (4c+1 frames), so the pose model always sees the motion into the chunk.
Each window goes through the reward functions themselves:

* poses from the pose network -> `interaction.interaction_scores` (labels at every move
  threshold, the best threshold per window, as the `action` / `fine_action` rewards);
* `quality.quality_reward` (mean Q over window frames 3::4) and `quality.quality_drift_reward`
  against the score of the video's first frame.

Window frames 3::4 are the video's frames 3, 7, 11, ... (a later window starts at a frame
4k-4), so the window scores add up to whole-video numbers: accuracies are weighted by compared
frames, quality by scored frames. A horizon of H latents (H a multiple of the chunk) uses the
first H / c windows: an autoregressive video's prefix is the shorter video, so one long
generation serves every horizon.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from wc_jax.rewards import _checks, _model
from wc_jax.rewards.accuracy import FRAMES_PER_LATENT, compared_frames
from wc_jax.rewards.interaction import interaction_scores
from wc_jax.rewards.labels import NUM_ROT
from wc_jax.rewards.quality import quality_drift_reward, quality_reward, scored_frame_indices

METRICS = ("exact", "fine", "translation", "rotation", "drift", "quality")


def window_bounds(num_latents: int, chunk: int | None = None) -> list[tuple[int, int, int, int]]:
  """(first latent, end latent, first frame, end frame) of each scoring window; chunk None = one
  window over the whole video."""
  if num_latents < 2:
    raise ValueError(f"a scored video needs >= 2 latents ({4 * 2 - 3} frames), got {num_latents}")
  chunk = num_latents if chunk is None else int(chunk)
  if chunk < 2 or num_latents % chunk:
    raise ValueError(f"the window ({chunk} latents) must be >= 2 and divide the video's {num_latents} latents")
  out = []
  for s in range(0, num_latents, chunk):
    f0 = 0 if s == 0 else FRAMES_PER_LATENT * s - 4
    out.append((s, s + chunk, f0, FRAMES_PER_LATENT * (s + chunk) - 3))
  return out


def _poses_impl(pose_model, frames):
  return pose_model(frames)


def _score_impl(scorer, frames):
  return scorer(frames)


def score_windows(frames, commanded_actions, pose_model, scorer=None, *, chunk: int | None = None) -> list[dict]:
  """Reward-code scores of each window of one video (see the module docstring).

  Args:
    frames: [F,H,W,3] float decoded frames in [0, 1], F = 4L-3.
    commanded_actions: int [L] commanded 81-way labels per latent.
    pose_model: frames [N,H,W,3] -> w2c [N,3,4] or [N,4,4] (nnx.Module or hashable callable).
    scorer: images [N,H,W,3] -> [N] quality scores, or None (no quality numbers).
    chunk: window length in latents (the model's chunk: the reward's windows); None = one
      window over the whole video.
  Returns:
    per window: latents, frames, compared (frames compared for accuracy), exact, fine,
    translation, rotation (accuracies in [0, 1]), and with a scorer: scored (frames scored),
    quality (mean Q), drift (-mean |Q - Q(frame 0)|), first_quality (Q(frame 0)).
  """
  fn = "score_windows"
  _checks.check_images(fn, "frames", frames)
  actions = np.asarray(commanded_actions)
  if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer):
    _checks.fail(fn, "commanded_actions", "[L] integer action labels", commanded_actions)
  n_lat = len(actions)
  if frames.shape[0] != FRAMES_PER_LATENT * n_lat - 3:
    raise ValueError(f"{fn}: {n_lat} latents decode to {FRAMES_PER_LATENT * n_lat - 3} frames, got "
                     f"{frames.shape[0]} frames")
  try:
    bounds = window_bounds(n_lat, chunk)
  except ValueError as e:
    raise ValueError(f"{fn}: {e}") from None
  q0 = None
  if scorer is not None:
    q0 = _checks.as_scores(fn, "scorer", _model.call_with_model(_score_impl, scorer, (frames[:1],)), 1)[0]
  out = []
  for l0, l1, f0, f1 in bounds:
    win = frames[f0:f1]
    w2c = _model.call_with_model(_poses_impl, pose_model, (win,))
    s = _checks.shape_of(w2c)
    if s not in ((win.shape[0], 3, 4), (win.shape[0], 4, 4)):
      raise ValueError(f"{fn}: pose_model must map [F,H,W,3] frames to [F,3,4] w2c poses "
                       f"(F={win.shape[0]}), got shape {s}")
    acc = interaction_scores(w2c, actions[l0:l1].astype(np.int32))
    p, g = np.asarray(acc.pred_action), np.asarray(acc.gt_action)
    rec: dict[str, Any] = dict(
        latents=[l0, l1], frames=[f0, f1], compared=compared_frames(f1 - f0, l1 - l0),
        exact=float(acc.action_acc), fine=float(acc.fine_action_acc),
        translation=float(np.mean(p // NUM_ROT == g // NUM_ROT)), rotation=float(np.mean(p % NUM_ROT == g % NUM_ROT)))
    if scorer is not None:
      rec.update(scored=len(scored_frame_indices(f1 - f0)), quality=float(quality_reward(win, scorer)),
                 drift=float(quality_drift_reward(win, scorer, first_score=q0)), first_quality=float(q0))
    out.append(rec)
  return out


def aggregate(windows: Sequence[dict], num_latents: int | None = None) -> dict:
  """Whole-video metrics of the windows covering latents [0, num_latents) (default: all):
  accuracies weighted by compared frames, quality and drift by scored frames."""
  if num_latents is not None:
    ends = [w["latents"][1] for w in windows]
    if num_latents not in ends:
      raise ValueError(f"no window ends at latent {num_latents} (window ends: {ends})")
    windows = [w for w in windows if w["latents"][1] <= num_latents]
  if not windows:
    raise ValueError("aggregate: no windows")
  out: dict[str, Any] = {"latents": windows[-1]["latents"][1], "frames": windows[-1]["frames"][1]}
  n = np.asarray([w["compared"] for w in windows], np.float64)
  for k in ("exact", "fine", "translation", "rotation"):
    out[k] = float(np.sum(n * [w[k] for w in windows]) / n.sum())
  if all("quality" in w for w in windows):
    m = np.asarray([w["scored"] for w in windows], np.float64)
    for k in ("quality", "drift"):
      out[k] = float(np.sum(m * [w[k] for w in windows]) / m.sum())
  return out


def score_video(frames, commanded_actions, pose_model, scorer=None, *, chunk: int | None = None) -> dict:
  """Action accuracy (exact 81-way, fine = mean of translation and rotation accuracy) and, with a
  scorer, quality (mean Q over frames 3::4) and drift (-mean |Q_k - Q(frame 0)|) of one video,
  with the training rewards' code (see `score_windows` for the arguments)."""
  return aggregate(score_windows(frames, commanded_actions, pose_model, scorer, chunk=chunk))


def mean_ci(values, z: float | None = None) -> dict:
  """Mean and the half-width of its 95 % confidence interval (Student t over the videos, the
  normal quantile without scipy; None for one value)."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return {"mean": None, "ci95": None, "n": 0}
  if v.size == 1:
    return {"mean": float(v[0]), "ci95": None, "n": 1}
  if z is None:
    try:
      from scipy import stats
      z = float(stats.t.ppf(0.975, v.size - 1))
    except ImportError:   # scipy is optional: the normal quantile
      z = 1.959964
  return {"mean": float(v.mean()), "ci95": float(z * v.std(ddof=1) / np.sqrt(v.size)), "n": int(v.size)}
