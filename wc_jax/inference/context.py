"""Choosing the context (memory) latents of an autoregressive chunk, as the reference does.

For a chunk starting at latent `start`: all earlier latents while start <= memory_frames;
otherwise the `recent` (12) latents before it, the first chunk (0..3), and the earlier
4-latent clips ranked by field-of-view overlap with the chunk's cameras (Monte-Carlo over
`points_local`), up to `memory_frames` (20) in all. Pure NumPy on camera poses: the choice
depends only on the commanded trajectory, so it is made on the host before the jitted passes.
"""
from __future__ import annotations

import numpy as np


def _angles(fwd):
  x, y, z = fwd[..., 0], fwd[..., 1], fwd[..., 2]
  return np.degrees(np.arctan2(y, np.sqrt(x * x + z * z))), np.degrees(np.arctan2(x, z))


def _in_fov(vectors, pitch, yaw, half_h, half_v):
  x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
  az = np.degrees(np.arctan2(x, z)).astype(np.float32)
  el = np.degrees(np.arctan2(y, np.sqrt(x * x + z * z))).astype(np.float32)
  d_az = np.remainder(az - yaw + 180, 360) - 180
  d_el = np.remainder(el - pitch + 180, 360) - 180
  return (np.abs(d_az) < half_h) & (np.abs(d_el) < half_v)


def fov_overlap(w2c_curr, w2c_hist, points_local, fov_h_deg=60.0, fov_v_deg=35.0, max_dist=8.0) -> float:
  """Fraction of points seen by the current camera that the historical camera also sees
  (within `max_dist` of it), both expressed in the current camera's frame."""
  w2c_curr = np.asarray(w2c_curr, np.float32)
  hist_in_curr = np.linalg.inv(w2c_curr @ np.linalg.inv(np.asarray(w2c_hist, np.float32))).astype(np.float32)
  r_h, t_h = hist_in_curr[:3, :3], hist_in_curr[:3, 3]
  p_hist = -r_h.T @ t_h
  pitch_h, yaw_h = _angles(r_h.T[:, 2])
  pts = np.asarray(points_local, np.float32)
  half_h, half_v = np.float32(fov_h_deg / 2.0), np.float32(fov_v_deg / 2.0)
  in_curr = _in_fov(pts, np.float32(0.0), np.float32(0.0), half_h, half_v)
  in_hist = _in_fov(pts - p_hist[None], np.float32(pitch_h), np.float32(yaw_h), half_h, half_v)
  in_hist &= np.linalg.norm(pts - p_hist[None], axis=1) < max_dist
  n = int(in_curr.sum())
  return 0.0 if n == 0 else float(np.float32(np.sum(in_curr & in_hist)) / np.float32(n))


def select_context(w2c, start: int, points_local, memory_frames: int = 20, recent: int = 12,
                   chunk: int = 4) -> list[int]:
  """Sorted context latent indices for the chunk [start, start+chunk). w2c: [T, 4, 4]."""
  w2c = np.asarray(w2c)
  if start <= memory_frames:
    return list(range(start))
  total = len(w2c)
  if start >= total:
    raise ValueError(f"chunk start {start} is past the trajectory ({total} latents)")
  selected = set(range(max(0, start - recent), start))
  query = range(start, min(start + chunk, total))
  memory = list(range(chunk))
  budget = memory_frames - recent
  scored = []
  for hist in range(chunk, start - recent, chunk):
    dist = 0.0
    for q in query:
      d1 = 1.0 - fov_overlap(w2c[q], w2c[hist], points_local)
      d2 = 1.0 - fov_overlap(w2c[q], w2c[hist + 2], points_local)
      dist += (d1 + d2) / 2.0
    scored.append((hist, dist / len(query)))
  scored.sort(key=lambda x: x[1])
  for hist, _ in scored:
    if len(memory) >= budget:
      break
    if hist not in memory:
      memory.extend(range(hist, hist + chunk))
  selected.update(memory)
  return sorted(selected - set(range(start, start + chunk)))


def sphere_points(n: int, radius: float, seed: int = 0) -> np.ndarray:
  """Uniform points in a ball (the reference samples 50000 in radius 8 for the overlap test;
  `wc_jax.inference.engine.RETRIEVAL_POINTS`)."""
  rng = np.random.default_rng(seed)
  r = radius * rng.random(n) ** (1 / 3)
  phi = 2 * np.pi * rng.random(n)
  theta = np.arccos(1 - 2 * rng.random(n))
  return np.stack([r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), r * np.cos(theta)],
                  axis=1).astype(np.float32)
