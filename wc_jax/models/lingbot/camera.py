"""LingBot-World camera conditioning: poses.npy + intrinsics.npy -> the DiT's `cam` input.

Host-side maths in numpy (float64 inside, float32 out, as the reference: scipy in float64 for
the interpolation, then float32 torch), step by step:

1. `truncate`: keep 4k+1 poses, at most `frame_num`.
2. `transform_intrinsics`: fx, fy, cx, cy given for 480x832, rescaled to (h, w); row 0 is used.
3. `interpolate_poses`: one pose per latent frame (source frames 0, 4, 8, ...): translations
   linear, rotations by Slerp on unit quaternions (shortest arc).
4. `relative_poses`: relative to frame 0, then frame-to-frame deltas (frame i>0 becomes
   inv(rel[i-1]) @ rel[i]), translations divided by their largest norm (if the camera moves).
5. `ray_maps`: per pixel (centre +0.5) the ray origin (camera centre) and unit ray direction
   in the (relative) world frame -> [f, h, w, 6] (origin, direction; not the o x d moment).
6. `fold`: each 8x8 block of pixels into channels -> [1, 6*64, f, h/8, w/8], channel
   c*64 + row*8 + col.

Poses are camera-to-world 4x4 in OpenCV axes (x right, y down, z forward).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

HEIGHT_ORG, WIDTH_ORG = 480, 832     # the size the released intrinsics are given for
VAE_STRIDE = (4, 8, 8)


class CameraSteps(NamedTuple):
  """Every intermediate of `camera_conditioning` (the fixture's names)."""
  c2ws_truncated: np.ndarray       # [N', 4, 4]
  frame_num_effective: int
  Ks_transformed: np.ndarray       # [N, 4]
  c2ws_interp: np.ndarray          # [f, 4, 4]
  c2ws_relative: np.ndarray        # [f, 4, 4]
  Ks_repeated: np.ndarray          # [f, 4]
  plucker_pixel: np.ndarray        # [f, h, w, 6]
  c2ws_plucker_emb: np.ndarray     # [1, 384, f, lat_h, lat_w]


def _check_poses(poses, intrinsics=None):
  poses = np.asarray(poses)
  if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) < 1:
    raise ValueError(f"poses must be [N, 4, 4] camera-to-world matrices, got {poses.shape}")
  if not np.all(np.isfinite(poses)):
    raise ValueError("poses contain non-finite values")
  if intrinsics is not None:
    intrinsics = np.asarray(intrinsics)
    if intrinsics.ndim != 2 or intrinsics.shape[1] != 4 or len(intrinsics) < 1:
      raise ValueError(f"intrinsics must be [N, 4] = fx, fy, cx, cy, got {intrinsics.shape}")
  return poses


def truncate(poses: np.ndarray, frame_num: int) -> tuple[np.ndarray, int]:
  """(poses[:n], n) with n = min(frame_num, largest 4k+1 <= N)."""
  poses = _check_poses(poses)
  n = min(int(frame_num), ((len(poses) - 1) // 4) * 4 + 1)
  if n < 1:
    raise ValueError(f"frame_num must be >= 1, got {frame_num}")
  return poses[:n], n


def transform_intrinsics(Ks: np.ndarray, h: int, w: int, height_org: int = HEIGHT_ORG,
                         width_org: int = WIDTH_ORG) -> np.ndarray:
  """fx, cx scaled by w/width_org, fy, cy by h/height_org (resize to (h, w), no crop)."""
  Ks = np.asarray(Ks, np.float32)
  scale = np.asarray([w / width_org, h / height_org, w / width_org, h / height_org], np.float32)
  return (Ks * scale).astype(np.float32)


# ----------------------------------------------------------------------------- rotations

def matrix_to_quat(R: np.ndarray) -> np.ndarray:
  """[..., 3, 3] -> unit quaternions [..., 4] (x, y, z, w), from the largest of the four
  candidate components (Shepperd's choice; tolerant of slightly non-orthogonal input)."""
  R = np.asarray(R, np.float64)
  flat = R.reshape(-1, 3, 3)
  q = np.empty((len(flat), 4))
  diag = np.stack([flat[:, 0, 0], flat[:, 1, 1], flat[:, 2, 2]], axis=-1)
  tr = diag.sum(-1)
  choice = np.argmax(np.concatenate([diag, tr[:, None]], axis=-1), axis=-1)
  for n, m in enumerate(flat):
    c = choice[n]
    if c == 3:
      q[n] = [m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1], 1 + tr[n]]
    else:
      i, j, k = c, (c + 1) % 3, (c + 2) % 3
      q[n, i] = 1 - tr[n] + 2 * m[i, i]
      q[n, j] = m[j, i] + m[i, j]
      q[n, k] = m[k, i] + m[i, k]
      q[n, 3] = m[k, j] - m[j, k]
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  return q.reshape(R.shape[:-2] + (4,))


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
  q = np.asarray(q, np.float64)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  x, y, z, w = np.moveaxis(q, -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
      np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
      np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def _qmul(a, b):
  ax, ay, az, aw = np.moveaxis(a, -1, 0)
  bx, by, bz, bw = np.moveaxis(b, -1, 0)
  return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                   aw * by - ax * bz + ay * bw + az * bx,
                   aw * bz + ax * by - ay * bx + az * bw,
                   aw * bw - ax * bx - ay * by - az * bz], -1)


def _qinv(q):
  return q * np.asarray([-1.0, -1.0, -1.0, 1.0])


def _quat_to_rotvec(q):
  q = np.where(q[..., 3:] < 0, -q, q)           # angle in [0, pi]: the shortest arc
  v = q[..., :3]
  s = np.linalg.norm(v, axis=-1)
  angle = 2 * np.arctan2(s, q[..., 3])
  small = angle <= 1e-3
  a2 = angle * angle
  scale = np.where(small, 2 + a2 / 12 + 7 * a2 * a2 / 2880, angle / np.sin(np.where(small, 1.0, angle / 2)))
  return scale[..., None] * v


def _rotvec_to_quat(r):
  angle = np.linalg.norm(r, axis=-1)
  small = angle <= 1e-3
  a2 = angle * angle
  scale = np.where(small, 0.5 - a2 / 48 + a2 * a2 / 3840, np.sin(angle / 2) / np.where(small, 1.0, angle))
  return np.concatenate([scale[..., None] * r, np.cos(angle / 2)[..., None]], -1)


def slerp(times: np.ndarray, quats: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Piecewise Slerp of key rotations `quats` [N, 4] at increasing `times` [N] -> [T, 4]:
  q_i * exp(alpha * log(q_i^-1 q_{i+1})) on the segment holding each target."""
  times = np.asarray(times, np.float64)
  targets = np.asarray(targets, np.float64)
  if len(times) == 1:
    if np.any(targets != times[0]):
      raise ValueError("one key rotation can only be sampled at its own time")
    return np.repeat(quats[:1], len(targets), axis=0)
  if np.any(targets < times[0]) or np.any(targets > times[-1]):
    raise ValueError(f"Slerp targets must lie in [{times[0]}, {times[-1]}]")
  idx = np.clip(np.searchsorted(times, targets, side="right") - 1, 0, len(times) - 2)
  alpha = (targets - times[idx]) / (times[idx + 1] - times[idx])
  delta = _quat_to_rotvec(_qmul(_qinv(quats[:-1]), quats[1:]))
  return _qmul(quats[idx], _rotvec_to_quat(delta[idx] * alpha[:, None]))


def interpolate_poses(c2ws: np.ndarray, targets: np.ndarray | None = None) -> np.ndarray:
  """[N, 4, 4] at source times 0..N-1 -> [T, 4, 4] float32 at `targets` (default: one pose per
  latent frame, linspace(0, N-1, (N-1)//4 + 1)). Translation linear, rotation Slerp."""
  c2ws = _check_poses(c2ws).astype(np.float64)
  n = len(c2ws)
  src = np.linspace(0, n - 1, n)
  if targets is None:
    targets = np.linspace(0, n - 1, (n - 1) // 4 + 1)
  targets = np.asarray(targets, np.float64)
  trans = c2ws[:, :3, 3]
  if n == 1:
    t = np.repeat(trans, len(targets), axis=0)
  else:
    idx = np.clip(np.searchsorted(src, targets, side="right") - 1, 0, n - 2)
    slope = (trans[idx + 1] - trans[idx]) / (src[idx + 1] - src[idx])[:, None]
    t = slope * (targets - src[idx])[:, None] + trans[idx]
  quats = matrix_to_quat(c2ws[:, :3, :3])
  for i in range(1, n):                       # sign-continuous (the reference does this first)
    if np.dot(quats[i], quats[i - 1]) < 0:
      quats[i] = -quats[i]
  out = np.zeros((len(targets), 4, 4))
  out[:, :3, :3] = quat_to_matrix(slerp(src, quats, targets))
  out[:, :3, 3] = t
  out[:, 3, 3] = 1.0
  return out.astype(np.float32)


# ----------------------------------------------------------------------------- poses -> rays

def _between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """inv(a) @ b for rigid transforms, as (Ra^T Rb, Ra^T (tb - ta)): a camera that does not move
  gets an exactly zero translation (the reference's max_norm == 0 branch)."""
  ra = np.swapaxes(a[..., :3, :3], -1, -2)
  out = np.zeros(np.broadcast_shapes(a.shape, b.shape))
  out[..., :3, :3] = ra @ b[..., :3, :3]
  out[..., :3, 3] = np.einsum("...ij,...j->...i", ra, b[..., :3, 3] - a[..., :3, 3])
  out[..., 3, 3] = 1
  return out


def relative_poses(c2ws: np.ndarray, framewise: bool = True, normalize_trans: bool = True) -> np.ndarray:
  """Poses relative to frame 0 (frame 0 = I); framewise: frame i>0 -> inv(rel[i-1]) @ rel[i];
  translations divided by their max norm when that is > 0. float32 out."""
  c2ws = np.asarray(c2ws, np.float64)
  rel = _between(c2ws[:1], c2ws)
  rel[0] = np.eye(4)
  if framewise and len(rel) > 1:
    rel[1:] = _between(rel[:-1], rel[1:])
  if normalize_trans:
    max_norm = np.linalg.norm(rel[:, :3, 3], axis=-1).max()
    if max_norm > 0:
      rel[:, :3, 3] /= max_norm
  return rel.astype(np.float32)


def ray_maps(c2ws: np.ndarray, Ks: np.ndarray, h: int, w: int) -> np.ndarray:
  """[f, h, w, 6] = (ray origin, unit ray direction) per pixel centre, world frame of c2ws.
  Ks [f, 4] (fx, fy, cx, cy) at (h, w)."""
  c2ws = np.asarray(c2ws, np.float64)
  Ks = np.asarray(Ks, np.float64)
  if Ks.shape != (len(c2ws), 4):
    raise ValueError(f"Ks must be [f={len(c2ws)}, 4], got {Ks.shape}")
  u = np.arange(w, dtype=np.float64) + 0.5
  v = np.arange(h, dtype=np.float64) + 0.5
  fx, fy, cx, cy = (Ks[:, i, None, None] for i in range(4))
  xs = np.broadcast_to((u[None, None, :] - cx) / fx, (len(c2ws), h, w))
  ys = np.broadcast_to((v[None, :, None] - cy) / fy, (len(c2ws), h, w))
  d = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  rays_d = np.einsum("fhwj,fij->fhwi", d, c2ws[:, :3, :3])
  rays_o = np.broadcast_to(c2ws[:, None, None, :3, 3], rays_d.shape)
  return np.concatenate([rays_o, rays_d], axis=-1).astype(np.float32)


def fold(rays: np.ndarray, lat_h: int, lat_w: int) -> np.ndarray:
  """[f, h, w, C] -> [1, C*ph*pw, f, lat_h, lat_w] with ph = h/lat_h, pw = w/lat_w pixels of a
  latent cell moved into channels (channel = c*ph*pw + row*pw + col)."""
  f, h, w, c = rays.shape
  if h % lat_h or w % lat_w:
    raise ValueError(f"ray map {h}x{w} does not fold into a {lat_h}x{lat_w} latent grid")
  ph, pw = h // lat_h, w // lat_w
  x = rays.reshape(f, lat_h, ph, lat_w, pw, c).transpose(5, 2, 4, 0, 1, 3)
  return np.ascontiguousarray(x.reshape(1, c * ph * pw, f, lat_h, lat_w))


def camera_conditioning(poses: np.ndarray, intrinsics: np.ndarray, h: int, w: int, frame_num: int = 81, *,
                        vae_stride: tuple[int, int, int] = VAE_STRIDE) -> CameraSteps:
  """The whole pipeline (image2video.py's camera preparation). h, w: pixel size of the video
  (multiples of the VAE stride). Returns every step; `.c2ws_plucker_emb` is the DiT input
  (cast it to the compute dtype; the GPU reference uses bfloat16)."""
  poses = _check_poses(poses, intrinsics)
  if h % vae_stride[1] or w % vae_stride[2]:
    raise ValueError(f"video size {h}x{w} must be a multiple of the VAE stride {vae_stride[1:]}")
  c2ws, n = truncate(poses, frame_num)
  Ks = transform_intrinsics(intrinsics, h, w)
  interp = interpolate_poses(c2ws)
  rel = relative_poses(interp, framewise=True)
  Ks_rep = np.repeat(Ks[:1], len(rel), axis=0)
  rays = ray_maps(rel, Ks_rep, h, w)
  emb = fold(rays, h // vae_stride[1], w // vae_stride[2])
  return CameraSteps(c2ws.astype(np.float32), n, Ks, interp, rel, Ks_rep, rays, emb)
