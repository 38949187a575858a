"""A judge with no learned weights: render-and-compare, plus image-quality metrics.

Why: an IDM judge is itself trained on the world, so it shares the reward IDM's blind
spots (and some reward hacking can transfer to it). The synthetic world can render any
pose exactly, so for every generated step k the judge renders the frame each candidate
motion would have produced from the previous *commanded* pose c2w[k-1] (every primitive
of `data.PRIMITIVES` and a standstill) and takes the candidate whose render matches the
generated frame best (PSNR, or SSIM). The step is correct when that candidate's 81-way
label is the commanded label. A ground-truth video is judged correct at every step (its
frame is one of the renders); a frozen video reads as the standstill, which no commanded
step is.

Candidate renders depend only on the evaluation set (scenes and commanded poses), not on
the model, so they are computed once per set (`candidate_renders`) and reused.

Judged from commanded poses, one wrong step shifts the content of every later frame away from
all of its candidates, so a video that turns the wrong way once and then follows every command
is failed at every later step. `judge_chained` is the per-step view (what a relative pose
error measures): step k's candidates are rendered from the pose the judge picked at step k-1,
starting from the ground-truth first pose. It renders per video, so it runs per evaluation.

    renders = candidate_renders(clips, wcfg)     # [N, L-1, M, H, W, 3], labels [N, L-1, M]
    pred, best = judge(frames, renders)          # label and candidate index per step
"""
from __future__ import annotations

import dataclasses

import numpy as np

from wc_jax.data import trajectories as T
from wc_jax.world import data as D

STILL = "still"


def candidate_motions(cfg: D.WorldConfig) -> tuple[tuple[str, ...], np.ndarray]:
  """(names, motion rows [M, 6]): every primitive of the world at its step size, and the standstill."""
  ang = np.deg2rad(cfg.angle_deg)
  names, rows = [], []
  for name, (sign, _) in D.PRIMITIVES.items():
    s = np.asarray(sign, np.float64)
    names.append(name)
    rows.append(np.concatenate([s[:4] * cfg.step, s[4:] * ang]))
  names.append(STILL)
  rows.append(np.zeros(6))
  return tuple(names), np.stack(rows)


@dataclasses.dataclass
class CandidateRenders:
  """Per step k = 1..L-1 of every clip: the M candidate frames and their labels."""
  frames: np.ndarray      # [N, L-1, M, H, W, 3] uint8
  labels: np.ndarray      # [N, L-1, M] int32 81-way labels of the candidate motions
  names: tuple            # [M] candidate names (data.PRIMITIVES order, then "still")
  commanded: np.ndarray   # [N, L-1] index of the candidate that is the commanded motion (-1: none)


def candidate_renders(clips: D.Clips, cfg: D.WorldConfig, steps: int | None = None) -> CandidateRenders:
  """Renders every candidate motion from each commanded pose c2w[k-1], k = 1..steps (default L-1)."""
  names, rows = candidate_motions(cfg)
  n, length = clips.actions.shape
  steps = length - 1 if steps is None else int(steps)
  if not 1 <= steps <= length - 1:
    raise ValueError(f"candidate_renders: steps must be in [1, {length - 1}], got {steps}")
  c2w = np.linalg.inv(np.asarray(clips.w2c, np.float64))                   # [N, L, 4, 4]
  m = len(names)
  frames = np.empty((n, steps, m, cfg.height, cfg.width, 3), np.uint8)
  labels = np.empty((n, steps, m), np.int32)
  commanded = np.full((n, steps), -1, np.int32)
  # a candidate's label depends only on its motion relative to the previous pose
  labels[:] = _candidate_labels(rows)
  scenes = {}
  for i in range(n):
    s = int(clips.scenes[i])
    if s not in scenes:
      scenes[s] = D.scene(s, cfg)
    poses = np.stack([T.motions_to_poses(rows[j:j + 1], start=c2w[i, k])[0]
                      for k in range(steps) for j in range(m)])               # [steps*M, 4, 4]
    img = D.render_poses(scenes[s], poses, cfg).reshape(steps, m, cfg.height, cfg.width, 3)
    frames[i] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    for k in range(steps):
      # the commanded candidate: the one whose pose is the commanded pose k+1
      err = np.abs(poses[k * m:(k + 1) * m] - c2w[i, k + 1][None]).max((1, 2))
      if err.min() < 1e-3:
        commanded[i, k] = int(err.argmin())
  return CandidateRenders(frames, labels, names, commanded)


def _candidate_labels(rows: np.ndarray) -> np.ndarray:
  """[M] 81-way labels of motion rows from the identity pose (labels are relative motions)."""
  seq = np.concatenate([np.stack([np.eye(4), T.motions_to_poses(r[None])[0]]) for r in rows])   # [2M, 4, 4]
  return T.gt_labels(seq)[1::2]


def psnr(a, b, axis=(-3, -2, -1)) -> np.ndarray:
  """PSNR (dB) of images in [0, 1] over `axis` (capped at 100 dB for identical images)."""
  mse = np.mean(np.square(np.asarray(a, np.float32) - np.asarray(b, np.float32)), axis=axis)
  return -10.0 * np.log10(np.maximum(mse, 1e-10))


def _gauss(size: int = 7, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-0.5 * (x / sigma) ** 2)
  return g / g.sum()


def _blur(x: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable 'valid' filter over the H, W axes of [..., H, W, C]."""
  k = len(g)
  h, w = x.shape[-3], x.shape[-2]
  y = sum(g[i] * x[..., i:h - k + 1 + i, :, :] for i in range(k))
  return sum(g[i] * y[..., :, i:w - k + 1 + i, :] for i in range(k))


def ssim(a, b) -> np.ndarray:
  """SSIM of images [..., H, W, 3] in [0, 1] (Gaussian window 7, sigma 1.5, per channel, mean) -> [...]."""
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  g = _gauss()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  ma, mb = _blur(a, g), _blur(b, g)
  va = _blur(a * a, g) - ma * ma
  vb = _blur(b * b, g) - mb * mb
  cov = _blur(a * b, g) - ma * mb
  s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
  return s.mean((-3, -2, -1))


def judge(frames: np.ndarray, renders: CandidateRenders, metric: str = "psnr") -> tuple[np.ndarray, np.ndarray]:
  """Judged labels [N, S] and best candidate [N, S] of generated frames [N, L, H, W, 3]
  (steps k = 1..S, S = min(L - 1, the renders' steps): a prefix of the rendered clips may be judged)."""
  if metric not in ("psnr", "ssim"):
    raise ValueError(f"judge: metric must be 'psnr' or 'ssim', got {metric!r}")
  n, s, m = renders.labels.shape
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 5 or frames.shape[0] != n or frames.shape[1] < 2 or \
      frames.shape[2:] != renders.frames.shape[3:]:
    raise ValueError(f"judge: frames must be [{n}, L >= 2, {', '.join(map(str, renders.frames.shape[3:]))}], "
                     f"got {frames.shape}")
  s = min(s, frames.shape[1] - 1)
  gen = frames[:, 1:s + 1, None]                                              # [N, S, 1, H, W, 3]
  cand = renders.frames[:, :s].astype(np.float32) / 255.0
  score = psnr(gen, cand) if metric == "psnr" else ssim(gen, cand)          # [N, S, M]
  best = score.argmax(-1)
  return np.take_along_axis(renders.labels[:, :s], best[..., None], -1)[..., 0], best


def judge_chained(frames: np.ndarray, clips: D.Clips, cfg: D.WorldConfig, steps: int | None = None,
                  metric: str = "psnr") -> tuple[np.ndarray, np.ndarray]:
  """Judged labels [N, S] and best candidate [N, S] of generated frames [N, L, H, W, 3], each step
  judged from the previous step's judged pose (ground truth's first pose at step 1); S = `steps`
  (default L - 1). A ground-truth video is judged exactly like `judge` does."""
  if metric not in ("psnr", "ssim"):
    raise ValueError(f"judge_chained: metric must be 'psnr' or 'ssim', got {metric!r}")
  n, length = clips.actions.shape
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 5 or frames.shape[0] != n or frames.shape[2:] != (cfg.height, cfg.width, 3):
    raise ValueError(f"judge_chained: frames must be [{n}, L, {cfg.height}, {cfg.width}, 3], got {frames.shape}")
  s = min(frames.shape[1], length) - 1 if steps is None else int(steps)
  if not 1 <= s <= min(frames.shape[1], length) - 1:
    raise ValueError(f"judge_chained: steps must be in [1, {min(frames.shape[1], length) - 1}], got {s}")
  _, rows = candidate_motions(cfg)
  labels = _candidate_labels(rows)
  c2w = np.linalg.inv(np.asarray(clips.w2c, np.float64))
  pred = np.empty((n, s), np.int32)
  best = np.empty((n, s), np.int64)
  scenes = {}
  for i in range(n):
    sid = int(clips.scenes[i])
    if sid not in scenes:
      scenes[sid] = D.scene(sid, cfg)
    pose = c2w[i, 0]
    for k in range(s):
      poses = np.stack([T.motions_to_poses(r[None], start=pose)[0] for r in rows])
      # quantised like `candidate_renders`, so both judges see the same candidate images
      cand = np.round(np.clip(D.render_poses(scenes[sid], poses, cfg), 0, 1) * 255).astype(np.uint8)
      gen = frames[i, k + 1][None]
      score = psnr(gen, cand.astype(np.float32) / 255.0) if metric == "psnr" else ssim(gen, cand.astype(np.float32) / 255.0)
      best[i, k] = int(score.argmax())
      pred[i, k] = labels[best[i, k]]
      pose = poses[best[i, k]]
  return pred, best


def per_primitive(correct: np.ndarray, renders: CandidateRenders) -> dict:
  """Accuracy (%) of `correct` [N, S'] (S' <= S) grouped by the commanded primitive."""
  s = correct.shape[1]
  cmd = renders.commanded[:, :s]
  out = {}
  for j, name in enumerate(renders.names):
    mask = cmd == j
    if mask.any():
      out[name] = 100.0 * float(correct[mask].mean())
  return out
