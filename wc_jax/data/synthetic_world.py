"""A procedural 3-D world with exact ground truth: every camera trajectory gets a video,
its poses and its depth.

Why: the rewards (pose/interaction, IDM/SWIRL, sim-to-real/RWML) need videos whose
camera motion is known exactly. Rendering a seeded scene along a commanded
trajectory gives that at any length and at small resolution, on a CPU, with no
downloads.

The scene (OpenCV world axes, +y down, the camera starts at the origin looking
along +z): a textured ground plane below the camera, four brick walls around
it, boxes and spheres on the ground, and a sky whose pattern depends on the
view direction only (a rotation cue without parallax). Surfaces are coloured
by solid textures of the world position, so a point looks the same from every
view. Rendering is vectorised NumPy ray casting in float64: primary rays
only, Lambert shading, no shadows. `depth` is the z-depth in the camera frame
(what Depth Anything 3 predicts), +inf for the sky.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from wc_jax.data import trajectories as traj

SKY_ID = -1
GROUND_ID = 0
_EPS = 1e-6
_RAYS_PER_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class Scene:
  """A seeded scene; build one with `make_scene(seed)`.

  Boxes are axis-aligned [lo, hi] corners (walls are boxes too); spheres are
  (centre, radius). Object ids: 0 ground, 1..B boxes, B+1.. spheres, -1 sky.
  """
  seed: int
  ground_y: float                 # ground plane height (+y is down, so below the camera)
  box_lo: np.ndarray              # [B,3]
  box_hi: np.ndarray              # [B,3]
  box_color: np.ndarray           # [B,3] in [0,1]
  box_is_wall: np.ndarray         # [B] bool (brick texture)
  sphere_center: np.ndarray       # [S,3]
  sphere_radius: np.ndarray       # [S]
  sphere_color: np.ndarray        # [S,3]
  ground_colors: np.ndarray       # [2,3] checker colours
  ground_cell: float              # checker cell size
  texture_freq: np.ndarray        # [B+S] solid-texture frequency per object
  sun: np.ndarray                 # [3] unit vector towards the light
  sky_colors: np.ndarray          # [2,3] horizon, zenith
  sky_bands: int                  # azimuthal bands of the sky pattern
  detail: float = 1.0             # surface-texture contrast in [0, 1] (grain, noise, bricks)
  wall_panel: float = 0.0         # > 0: walls are vertical panels this wide, each its own brightness
  sky_contrast: float = 0.15      # amplitude of the sky's azimuthal bands

  @property
  def num_boxes(self) -> int:
    return int(self.box_lo.shape[0])

  @property
  def num_spheres(self) -> int:
    return int(self.sphere_radius.shape[0])

  def describe(self) -> str:
    objects = self.num_boxes - int(self.box_is_wall.sum())
    return (f"a walled courtyard (scene {self.seed}) with {objects} boxes and "
            f"{self.num_spheres} spheres on a checkered floor")


def make_scene(seed: int, *, num_boxes: int | None = None, num_spheres: int | None = None,
               room_half: float | None = None, clear_radius: float = 1.5, detail: float = 1.0,
               wall_panel: float = 0.0, sky_contrast: float = 0.15) -> Scene:
  """A random scene; the same seed always gives the same scene.

  Args:
    seed: scene seed (any non-negative int).
    num_boxes, num_spheres: object counts (default 4..8 and 2..5).
    room_half: half-width of the walled square (default 7..10).
    clear_radius: no object closer than this to the start camera (the origin,
      measured in the ground plane), so the first frames see the scene.
    detail: surface-texture strength in [0, 1]. 1 is the full world; lower values fade
      the grain, object noise and bricks towards their mean and widen the floor
      checkers by up to 3x (same layout and colours), a world of large, smooth regions
      for models too small to generate fine texture. Same seed, same random draws.
    wall_panel: > 0 splits the walls into vertical panels this wide (world units), each
      with its own brightness: structure that moves sideways under a turn (a smooth wall
      does not change when the camera yaws; a small model then cannot see, nor learn, yaw).
    sky_contrast: amplitude of the sky's azimuthal bands. The sky is at infinity, so it
      shifts under a turn and not under a sideways step: the cue that tells yaw from strafe.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"make_scene: seed must be a non-negative integer, got {seed!r}")
  if not 0.0 <= float(detail) <= 1.0:
    raise ValueError(f"make_scene: detail must be in [0, 1], got {detail!r}")
  if float(wall_panel) < 0.0:
    raise ValueError(f"make_scene: wall_panel must be >= 0 (0: plain walls), got {wall_panel!r}")
  if not 0.0 <= float(sky_contrast) <= 1.0:
    raise ValueError(f"make_scene: sky_contrast must be in [0, 1], got {sky_contrast!r}")
  rng = np.random.default_rng([int(seed), 0x5CE4E])
  nb = int(rng.integers(4, 9)) if num_boxes is None else int(num_boxes)
  ns = int(rng.integers(2, 6)) if num_spheres is None else int(num_spheres)
  if nb < 0 or ns < 0:
    raise ValueError(f"make_scene: object counts must be >= 0, got {nb} boxes, {ns} spheres")
  half = float(rng.uniform(7.0, 10.0)) if room_half is None else float(room_half)
  if half <= clear_radius + 1.0:
    raise ValueError(f"make_scene: room_half ({half}) must exceed clear_radius + 1 "
                     f"({clear_radius + 1.0})")
  ground = float(rng.uniform(1.2, 1.8))
  wall_h, thick = float(rng.uniform(2.5, 4.0)), 0.3
  top = ground - wall_h

  lo, hi, col, wall = [], [], [], []
  for axis in (0, 2):
    for sign in (-1.0, 1.0):
      a = np.array([-half - thick, top, -half - thick])
      b = np.array([half + thick, ground, half + thick])
      if sign < 0:
        b[axis] = -half
      else:
        a[axis] = half
      lo.append(a), hi.append(b), wall.append(True)
      col.append(rng.uniform(0.45, 0.85, 3) * np.array([1.0, 0.75, 0.6]))

  def place(radius):
    for _ in range(100):
      xz = rng.uniform(-half + radius + 0.2, half - radius - 0.2, 2)
      if np.hypot(*xz) > clear_radius + radius:
        return xz
    raise ValueError("make_scene: could not place an object; use a larger room_half")

  for _ in range(nb):
    size = rng.uniform([0.4, 0.4, 0.4], [1.6, 2.2, 1.6])
    xz = place(0.5 * np.hypot(size[0], size[2]))
    lo.append(np.array([xz[0] - size[0] / 2, ground - size[1], xz[1] - size[2] / 2]))
    hi.append(np.array([xz[0] + size[0] / 2, ground, xz[1] + size[2] / 2]))
    col.append(_random_color(rng))
    wall.append(False)
  centers, radii, scol = [], [], []
  for _ in range(ns):
    r = float(rng.uniform(0.25, 0.8))
    xz = place(r)
    lift = float(rng.choice([0.0, rng.uniform(0.3, 1.0)]))
    centers.append(np.array([xz[0], ground - r - lift, xz[1]]))
    radii.append(r)
    scol.append(_random_color(rng))

  sun = np.array([rng.uniform(-0.6, 0.6), -1.0, rng.uniform(-0.6, 0.6)])
  return Scene(
      seed=int(seed), ground_y=ground,
      box_lo=np.asarray(lo, np.float64).reshape(-1, 3),
      box_hi=np.asarray(hi, np.float64).reshape(-1, 3),
      box_color=np.asarray(col, np.float64).reshape(-1, 3), box_is_wall=np.asarray(wall, bool),
      sphere_center=np.asarray(centers, np.float64).reshape(-1, 3),
      sphere_radius=np.asarray(radii, np.float64),
      sphere_color=np.asarray(scol, np.float64).reshape(-1, 3),
      ground_colors=np.stack([_random_color(rng) * 0.5 + 0.35, _random_color(rng) * 0.4 + 0.1]),
      ground_cell=float(rng.uniform(0.4, 0.8)) * (3.0 - 2.0 * float(detail)),
      texture_freq=rng.uniform(2.0, 5.0, len(lo) + ns),
      sun=sun / np.linalg.norm(sun),
      sky_colors=np.array([[0.85, 0.9, 1.0], rng.uniform([0.2, 0.35, 0.7], [0.4, 0.55, 0.95])]),
      sky_bands=int(rng.integers(5, 11)), detail=float(detail), wall_panel=float(wall_panel),
      sky_contrast=float(sky_contrast))


def plane_scene(ground_y: float = 1.5) -> Scene:
  """Only the ground plane (and sky): analytic depth, for tests and calibration."""
  e3, e1 = np.zeros((0, 3)), np.zeros((0,))
  return Scene(seed=-1, ground_y=float(ground_y), box_lo=e3, box_hi=e3, box_color=e3,
               box_is_wall=np.zeros((0,), bool), sphere_center=e3, sphere_radius=e1,
               sphere_color=e3, ground_colors=np.array([[0.8, 0.8, 0.8], [0.2, 0.2, 0.2]]),
               ground_cell=0.5, texture_freq=e1, sun=np.array([0.0, -1.0, 0.0]),
               sky_colors=np.array([[0.85, 0.9, 1.0], [0.3, 0.45, 0.8]]), sky_bands=8)


def with_boxes(scene: Scene, lo, hi, color=(0.7, 0.3, 0.3)) -> Scene:
  """The scene with extra axis-aligned boxes (e.g. a wall at a known distance)."""
  lo = np.asarray(lo, np.float64).reshape(-1, 3)
  hi = np.asarray(hi, np.float64).reshape(-1, 3)
  if lo.shape != hi.shape or np.any(hi <= lo):
    raise ValueError(f"with_boxes: need lo < hi elementwise with equal shapes, got {lo.shape} "
                     f"and {hi.shape}")
  n = len(lo)
  return dataclasses.replace(
      scene, box_lo=np.concatenate([scene.box_lo, lo]), box_hi=np.concatenate([scene.box_hi, hi]),
      box_color=np.concatenate([scene.box_color, np.tile(np.asarray(color, np.float64), (n, 1))]),
      box_is_wall=np.concatenate([scene.box_is_wall, np.zeros(n, bool)]),
      texture_freq=np.concatenate([scene.texture_freq[:scene.num_boxes], np.full(n, 3.0),
                                   scene.texture_freq[scene.num_boxes:]]))


def _random_color(rng) -> np.ndarray:
  h = rng.uniform()
  s, v = rng.uniform(0.45, 0.9), rng.uniform(0.55, 0.95)
  k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
  return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


# ----------------------------------------------------------------------------- camera

def pixel_intrinsics(height: int, width: int, intrinsics=None) -> np.ndarray:
  """Pixel K [3,3] for an image size from normalised intrinsics (fx/W, fy/H, cx/W, cy/H).

  Default: the reference's normalised intrinsics (about 89 x 58 degrees field
  of view at 16:9), so synthetic clips see what the model was trained to see.
  """
  if intrinsics is None:
    k = traj.normalized_intrinsics(num=1)[0]
  else:
    k = np.asarray(intrinsics, np.float64)
  if k.shape != (3, 3):
    raise ValueError(f"intrinsics must be a normalised 3x3 matrix, got shape {k.shape}")
  return np.array([[k[0, 0] * width, 0.0, k[0, 2] * width],
                   [0.0, k[1, 1] * height, k[1, 2] * height],
                   [0.0, 0.0, 1.0]])


def camera_rays(height: int, width: int, k_pixel: np.ndarray) -> np.ndarray:
  """Ray directions [H,W,3] in the camera frame with z = 1 (pixel centres), so the
  ray parameter of a hit is its z-depth."""
  v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  x = (u - k_pixel[0, 2]) / k_pixel[0, 0]
  y = (v - k_pixel[1, 2]) / k_pixel[1, 1]
  return np.stack([x, y, np.ones_like(x)], axis=-1)


# ----------------------------------------------------------------------------- ray casting

def _hash01(*ints) -> np.ndarray:
  """Deterministic hash of integer lattice coordinates -> [0,1)."""
  h = np.uint32(0x9E3779B9)
  with np.errstate(over="ignore"):
    for i, x in enumerate(ints):
      x = np.asarray(x).astype(np.int64).astype(np.uint32)
      h = h ^ (x * np.uint32(0x85EBCA6B + 0x1000193 * i))
      h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
      h = h ^ (h >> np.uint32(16))
  return h.astype(np.float64) / 4294967296.0


def _value_noise(p: np.ndarray, seed: int) -> np.ndarray:
  """Smooth 3-D value noise in [0,1) at points [N,3] (trilinear, smoothstep)."""
  base = np.floor(p)
  f = p - base
  f = f * f * (3 - 2 * f)
  b = base.astype(np.int64)
  out = np.zeros(len(p))
  for dx in (0, 1):
    wx = f[:, 0] if dx else 1 - f[:, 0]
    for dy in (0, 1):
      wy = f[:, 1] if dy else 1 - f[:, 1]
      for dz in (0, 1):
        wz = f[:, 2] if dz else 1 - f[:, 2]
        out += wx * wy * wz * _hash01(b[:, 0] + dx, b[:, 1] + dy, b[:, 2] + dz, seed)
  return out


def _intersect(scene: Scene, o: np.ndarray, d: np.ndarray):
  """Closest hit of rays o + t d (o, d [N,3]): t [N] (inf if none), id [N], normal [N,3].

  Normals face the viewer (a camera inside a box or sphere sees its inner side).
  """
  n = len(d)
  rows_all = np.arange(n)
  ids = np.full(n, SKY_ID, np.int64)
  normal = np.zeros((n, 3))
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    # ground plane y = ground_y, seen from above (normal -y, i.e. up)
    tg = (scene.ground_y - o[:, 1]) / d[:, 1]
    ok = (tg > _EPS) & np.isfinite(tg)
    best = np.where(ok, tg, np.inf)
    ids[ok] = GROUND_ID
    normal[ok] = (0.0, -1.0, 0.0)
    if scene.num_boxes:
      # Zero direction components are nudged to a tiny value: the slab then spans
      # (-huge, huge) or lies beyond any hit, which is the parallel-ray answer.
      inv = 1.0 / np.where(d == 0, 1e-300, d)                     # [N,3]
      tmin, tmax = [], []
      for ax in range(3):                                          # per axis [N,B]
        t1 = (scene.box_lo[None, :, ax] - o[:, ax, None]) * inv[:, ax, None]
        t2 = (scene.box_hi[None, :, ax] - o[:, ax, None]) * inv[:, ax, None]
        tmin.append(np.minimum(t1, t2))
        tmax.append(np.maximum(t1, t2))
      near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])      # [N,B]
      far = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
      t_box = np.where(near > _EPS, near, far)
      t_box = np.where((near <= far) & (far > _EPS), t_box, np.inf)
      j = np.argmin(t_box, axis=1)
      tb = t_box[rows_all, j]
      rows = np.nonzero(tb < best)[0]
      jb = j[rows]
      entering = near[rows, jb] > _EPS
      tmin_hit = np.stack([x[rows, jb] for x in tmin], -1)
      tmax_hit = np.stack([x[rows, jb] for x in tmax], -1)
      axis = np.where(entering, tmin_hit.argmax(-1), tmax_hit.argmin(-1))
      nb = np.zeros((len(rows), 3))
      nb[np.arange(len(rows)), axis] = -np.sign(d[rows, axis])
      best[rows] = tb[rows]
      ids[rows] = 1 + jb
      normal[rows] = nb
    if scene.num_spheres:
      cen = scene.sphere_center
      ocx, ocy, ocz = (o[:, ax, None] - cen[None, :, ax] for ax in range(3))   # [N,S]
      a = (d[:, 0] ** 2 + d[:, 1] ** 2 + d[:, 2] ** 2)[:, None]
      b = 2 * (d[:, 0, None] * ocx + d[:, 1, None] * ocy + d[:, 2, None] * ocz)
      c = ocx * ocx + ocy * ocy + ocz * ocz - scene.sphere_radius[None] ** 2
      disc = b * b - 4 * a * c
      sq = np.sqrt(np.maximum(disc, 0))
      t0, t1s = (-b - sq) / (2 * a), (-b + sq) / (2 * a)
      ts = np.where(t0 > _EPS, t0, t1s)
      ts = np.where((disc >= 0) & (ts > _EPS), ts, np.inf)
      j = np.argmin(ts, axis=1)
      tsb = ts[rows_all, j]
      rows = np.nonzero(tsb < best)[0]
      js = j[rows]
      p = o[rows] + tsb[rows, None] * d[rows]
      ns = (p - cen[js]) / scene.sphere_radius[js, None]
      ns = np.where((t0[rows, js] > _EPS)[:, None], ns, -ns)
      best[rows] = tsb[rows]
      ids[rows] = 1 + scene.num_boxes + js
      normal[rows] = ns
  return best, ids, normal


def _shade(scene: Scene, o, d, t, ids, normal):
  """Colours [N,3] in [0,1] of the hits (solid textures x Lambert), sky where nothing is hit."""
  rgb = np.zeros((len(d), 3))
  sky = ids == SKY_ID
  if sky.any():
    dn = d[sky] / np.linalg.norm(d[sky], axis=-1, keepdims=True)
    elev = np.clip(-dn[:, 1], -1, 1)                               # up is -y
    az = np.arctan2(dn[:, 0], dn[:, 2])
    mix = np.clip(elev, 0, 1)[:, None]
    base = (1 - mix) * scene.sky_colors[0] + mix * scene.sky_colors[1]
    bands = 0.5 + 0.5 * np.sin(scene.sky_bands * az + 3 * elev)
    rgb[sky] = base * (1.0 - scene.sky_contrast + scene.sky_contrast * bands[:, None])
  hit = ~sky
  if not hit.any():
    return rgb
  p = o[hit] + t[hit, None] * d[hit]
  idh, nh = ids[hit], normal[hit]
  col = np.zeros((len(p), 3))
  g = idh == GROUND_ID
  if g.any():
    cell = np.floor(p[g][:, [0, 2]] / scene.ground_cell).astype(np.int64)
    check = (cell[:, 0] + cell[:, 1]) % 2
    grain = _value_noise(p[g] * 4.0, scene.seed)
    col[g] = scene.ground_colors[check] * (0.925 + 0.35 * scene.detail * (grain[:, None] - 0.5))
  ob = ~g
  if ob.any():
    k = idh[ob] - 1
    pb = p[ob]
    colors = np.concatenate([scene.box_color, scene.sphere_color])
    walls = np.concatenate([scene.box_is_wall, np.zeros(scene.num_spheres, bool)])
    q = np.floor(pb * scene.texture_freq[k][:, None]).astype(np.int64)
    check3 = ((q[:, 0] + q[:, 1] + q[:, 2]) % 2).astype(np.float64)
    noise = _value_noise(pb * 3.0 + 17.0 * k[:, None], scene.seed + 1)
    shade = 0.9 + scene.detail * (0.15 * (check3 - 0.5) + 0.25 * (noise - 0.5))
    wall = walls[k]
    if wall.any():
      pw, nw = pb[wall], nh[ob][wall]
      u = np.where(np.abs(nw[:, 0]) > 0.5, pw[:, 2], pw[:, 0]) / 0.5
      row = np.floor(pw[:, 1] / 0.25)
      u = u + 0.5 * (row % 2)
      col_i = np.floor(u)
      mortar = (np.abs(pw[:, 1] / 0.25 - row - 0.5) > 0.42) | (np.abs(u - col_i - 0.5) > 0.45)
      brick = 0.75 + 0.35 * _hash01(row, col_i, k[wall])
      shade[wall] = 0.85 + scene.detail * (np.where(mortar, 0.55, brick) - 0.85)
      if scene.wall_panel > 0:
        along = np.where(np.abs(nw[:, 0]) > 0.5, pw[:, 2], pw[:, 0])
        panel = np.floor(along / scene.wall_panel)
        shade[wall] *= 0.45 + 0.9 * _hash01(panel, k[wall], np.full_like(panel, 7))
    col[ob] = colors[k] * shade[:, None]
  lambert = np.clip(np.sum(nh * scene.sun, -1), 0, 1)
  rgb[hit] = np.clip(col * (0.45 + 0.6 * lambert[:, None]), 0, 1)
  return rgb


def _cast(scene: Scene, origins: np.ndarray, dirs: np.ndarray, shade: bool):
  """Casts [N] rays in chunks: (t, ids, rgb or None)."""
  n = len(dirs)
  t = np.empty(n)
  ids = np.empty(n, np.int64)
  rgb = np.empty((n, 3)) if shade else None
  for a in range(0, n, _RAYS_PER_CHUNK):
    o, d = origins[a:a + _RAYS_PER_CHUNK], dirs[a:a + _RAYS_PER_CHUNK]
    tc, ic, nc = _intersect(scene, o, d)
    t[a:a + len(d)], ids[a:a + len(d)] = tc, ic
    if shade:
      rgb[a:a + len(d)] = _shade(scene, o, d, tc, ic, nc)
  return t, ids, rgb


class Render(NamedTuple):
  """A rendered clip.

  frames: [F,H,W,3] float32 in [0,1]; depth: [F,H,W] float32 z-depth (+inf = sky);
  object_id: [F,H,W] int32 (0 ground, -1 sky); c2w: [F,4,4] float64 (as given);
  intrinsics: [F,3,3] normalised; k_pixel: [3,3] pixel intrinsics.
  """
  frames: np.ndarray
  depth: np.ndarray
  object_id: np.ndarray
  c2w: np.ndarray
  intrinsics: np.ndarray
  k_pixel: np.ndarray

  @property
  def w2c(self) -> np.ndarray:
    return traj.invert_poses(self.c2w)

  def frames_uint8(self) -> np.ndarray:
    return np.round(self.frames * 255).astype(np.uint8)


def render(scene: Scene, c2w, height: int = 64, width: int = 64, *, intrinsics=None,
           supersample: int = 1) -> Render:
  """Renders the scene from every camera of `c2w`.

  Args:
    scene: from `make_scene` / `plane_scene`.
    c2w: [F,4,4] (or [4,4]) camera-to-world poses, OpenCV axes.
    height, width: image size in pixels.
    intrinsics: normalised 3x3 (fx/W, fy/H, cx/W, cy/H); default the reference's.
    supersample: s x s rays per pixel averaged for the colour (anti-aliasing);
      depth and ids come from the pixel centre ray.
  """
  c2w = np.asarray(c2w, np.float64)
  if c2w.ndim == 2:
    c2w = c2w[None]
  if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] < 1:
    raise ValueError(f"render: c2w must be [F,4,4] camera-to-world poses, got shape {c2w.shape}")
  if not np.all(np.isfinite(c2w)):
    raise ValueError("render: c2w holds non-finite values")
  for name, v in (("height", height), ("width", width), ("supersample", supersample)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"render: {name} must be a positive integer, got {v!r}")
  k_pix = pixel_intrinsics(height, width, intrinsics)
  centre = camera_rays(height, width, k_pix).reshape(-1, 3)
  if supersample > 1:
    s = supersample
    fine = camera_rays(height * s, width * s, pixel_intrinsics(height * s, width * s, intrinsics))
    # The fine grid's intrinsics scale with the image, so the same field of view.
    sub = fine.reshape(height, s, width, s, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 3)
  f = c2w.shape[0]
  rot, org = c2w[:, :3, :3], c2w[:, :3, 3]

  def world(rays):  # camera rays [M,3] -> per-frame world rays [F*M,3] and origins
    dirs = np.einsum("fij,mj->fmi", rot, rays).reshape(-1, 3)
    return np.repeat(org, len(rays), axis=0), dirs

  o, d = world(centre)
  depth, ids, rgb = _cast(scene, o, d, shade=supersample == 1)
  if supersample > 1:
    o, d = world(sub)
    rgb = _cast(scene, o, d, shade=True)[2].reshape(-1, supersample * supersample, 3).mean(1)
  frames = rgb.astype(np.float32).reshape(f, height * width, 3)
  depth = depth.astype(np.float32).reshape(f, height * width)
  ids = ids.astype(np.int32).reshape(f, height * width)
  k_norm = np.array([[k_pix[0, 0] / width, 0, k_pix[0, 2] / width],
                     [0, k_pix[1, 1] / height, k_pix[1, 2] / height], [0, 0, 1.0]])
  return Render(frames=frames.reshape(f, height, width, 3), depth=depth.reshape(f, height, width),
                object_id=ids.reshape(f, height, width), c2w=c2w,
                intrinsics=np.repeat(k_norm[None], f, axis=0), k_pixel=k_pix)


def render_trajectory(scene: Scene, trajectory: traj.Trajectory, height: int = 64,
                      width: int = 64, *, per_frame: bool = True, supersample: int = 1) -> Render:
  """Renders a commanded trajectory: every video frame (4L-3) or only the latents (L)."""
  poses = trajectory.frame_c2w if per_frame else trajectory.c2w
  return render(scene, poses, height, width, intrinsics=trajectory.intrinsics[0],
                supersample=supersample)


def unproject(depth: np.ndarray, c2w: np.ndarray, k_pixel: np.ndarray) -> np.ndarray:
  """World points [H,W,3] of a depth map (inf depth gives inf/nan points)."""
  h, w = depth.shape
  rays = camera_rays(h, w, k_pixel)
  with np.errstate(invalid="ignore"):
    pc = rays * depth[..., None]
    return pc @ np.asarray(c2w)[:3, :3].T + np.asarray(c2w)[:3, 3]


def project(points: np.ndarray, w2c: np.ndarray, k_pixel: np.ndarray):
  """Pixel coordinates (u, v) [...,2] (continuous, pixel centres at +0.5) and z-depth."""
  pc = points @ np.asarray(w2c)[:3, :3].T + np.asarray(w2c)[:3, 3]
  z = pc[..., 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    u = k_pixel[0, 0] * pc[..., 0] / z + k_pixel[0, 2]
    v = k_pixel[1, 1] * pc[..., 1] / z + k_pixel[1, 2]
  return np.stack([u, v], -1), z


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What the synthetic world writes: example i renders scene `i % num_scenes`
  along the random trajectory of seed `trajectory_seed + i`."""
  num_examples: int = 64
  num_scenes: int = 4
  scene_seed: int = 0
  trajectory_seed: int = 0
  num_latents: int = 16
  height: int = 64
  width: int = 96
  supersample: int = 1
  text_tokens: int = 12
  byt5_tokens: int = 6
  vision_tokens: int = 5
  vae_factor: int = 16

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      low = 0 if f.name in ("scene_seed", "trajectory_seed") else 1
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
        raise ValueError(f"SyntheticConfig.{f.name} must be an integer >= {low}, got {v!r}")
    if self.height % self.vae_factor or self.width % self.vae_factor:
      raise ValueError(f"SyntheticConfig: height and width ({self.height}x{self.width}) must be "
                       f"multiples of vae_factor ({self.vae_factor})")


def pooled_latent(frame: np.ndarray, channels: int, factor: int) -> np.ndarray:
  """A stand-in first-frame latent [C, H/f, W/f] when no VAE encoder is at hand.

  The frame is average-pooled by the VAE's spatial factor, mapped to [-1, 1],
  and mixed into `channels` channels by a fixed matrix (the first three are
  the pooled RGB itself), so the latent carries the first frame's layout.
  """
  frame = np.asarray(frame)
  if frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"pooled_latent: frame must be [H,W,3], got shape {frame.shape}")
  x = frame.astype(np.float32)
  if frame.dtype == np.uint8:   # else floats in [0,1]
    x = x / 255.0
  h, w = x.shape[0] // factor, x.shape[1] // factor
  if h < 1 or w < 1:
    raise ValueError(f"pooled_latent: frame {x.shape[:2]} is smaller than factor {factor}")
  pooled = x[:h * factor, :w * factor].reshape(h, factor, w, factor, 3).mean((1, 3)) * 2 - 1
  mix = np.random.default_rng(0).standard_normal((channels, 3)).astype(np.float32) / np.sqrt(3)
  mix[:min(3, channels)] = np.eye(3, dtype=np.float32)[:min(3, channels)]
  return np.einsum("cj,hwj->chw", mix, pooled).astype(np.float32)


class SyntheticRecords:
  """A random-access source of synthetic-world records (`len`, `[i]`), rendered on demand.

  Feed it to `pipeline.make_dataset` directly, or write it to disk with
  `tfds_builder.write_dataset` (`python -m wc_jax.data.write_records synthetic`).
  Conditioning states are seeded stand-ins (no text/vision encoders at this
  scale), fixed per scene so that the prompt identifies the scene; the first
  latent is `pooled_latent` of the first frame unless `latent_fn` is given
  (e.g. a VAE encoder: uint8 frame [H,W,3] -> [C,h,w]).
  """

  def __init__(self, config: SyntheticConfig, spec, latent_fn=None):
    if not spec.with_video:
      raise ValueError("SyntheticRecords: the spec must have with_video=True (the synthetic "
                       "world records its ground-truth video)")
    self.config, self.spec, self.latent_fn = config, spec, latent_fn
    self._scenes: dict[int, Scene] = {}

  def __len__(self) -> int:
    return self.config.num_examples

  def scene(self, index: int) -> Scene:
    seed = self.config.scene_seed + index % self.config.num_scenes
    if seed not in self._scenes:
      self._scenes[seed] = make_scene(seed)
    return self._scenes[seed]

  def trajectory(self, index: int) -> traj.Trajectory:
    return traj.random_trajectory(self.config.trajectory_seed + index, self.config.num_latents)

  def __getitem__(self, index: int) -> dict:
    c, spec = self.config, self.spec
    if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
      raise IndexError(f"SyntheticRecords: index {index!r} out of range [0, {len(self)})")
    index = int(index)
    scene = self.scene(index)
    tr = self.trajectory(index)
    clip = render_trajectory(scene, tr, c.height, c.width, supersample=c.supersample)
    frames = clip.frames_uint8()
    rng = np.random.default_rng([scene.seed, 7])
    text_valid = max(1, (3 * c.text_tokens) // 4)
    byt5_valid = max(1, c.byt5_tokens // 2)
    latent = (self.latent_fn(frames[0]) if self.latent_fn is not None
              else pooled_latent(frames[0], spec.latent_channels, c.vae_factor))
    return {
        "id": f"scene{scene.seed:04d}_traj{c.trajectory_seed + index:06d}",
        "prompt": scene.describe(),
        "text_states": rng.standard_normal((c.text_tokens, spec.text_dim)).astype(np.float32),
        "text_mask": np.arange(c.text_tokens) < text_valid,
        "byt5_states": rng.standard_normal((c.byt5_tokens, spec.byt5_dim)).astype(np.float32),
        "byt5_mask": np.arange(c.byt5_tokens) < byt5_valid,
        "vision_states": rng.standard_normal((c.vision_tokens, spec.vision_dim)).astype(np.float32),
        "first_latent": np.asarray(latent, np.float32),
        "actions": tr.actions.astype(np.int32),
        "motions": tr.motions,
        "w2c": tr.w2c,
        "intrinsics": tr.intrinsics.astype(np.float32),
        "frames": frames,
        "depth": clip.depth,
        "frame_w2c": tr.frame_w2c,
    }
