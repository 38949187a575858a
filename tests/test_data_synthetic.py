"""Synthetic world: analytic depth, camera motion moves the image as it should, the rendered
cameras are the given ones (multi-view depth consistency), determinism, records."""
import time

import numpy as np
import pytest

from wc_jax.data import synthetic_world as sw
from wc_jax.data import tfds_builder as tb
from wc_jax.data import trajectories as T


def _pose(yaw=0.0, pitch=0.0, t=(0.0, 0.0, 0.0)):
  return T.motions_to_poses([{"yaw": yaw, "pitch": pitch}], start=_translation(t))[0]


def _translation(t):
  p = np.eye(4)
  p[:3, 3] = t
  return p


def test_ground_plane_depth_is_analytic():
  h, w, g = 24, 32, 1.5
  r = sw.render(sw.plane_scene(g), np.eye(4), h, w)
  k = r.k_pixel
  v = np.arange(h) + 0.5
  below = v > k[1, 2]
  want = np.where(below, g * k[1, 1] / np.where(below, v - k[1, 2], 1), np.inf)
  np.testing.assert_allclose(r.depth[0], np.repeat(want[:, None], w, 1), rtol=1e-6)
  assert (r.object_id[0][below] == sw.GROUND_ID).all() and (r.object_id[0][~below] == sw.SKY_ID).all()


def test_ground_plane_depth_from_a_moved_and_tilted_camera():
  h, w, g = 20, 28, 1.3
  c2w = _pose(yaw=0.4, pitch=-0.3, t=(0.7, 0.2, -1.1))    # pitched down, raised by 0.2
  r = sw.render(sw.plane_scene(g), c2w, h, w)
  rays = sw.camera_rays(h, w, r.k_pixel)
  dy = rays @ c2w[1, :3]                    # world y component of each ray (z_cam = 1)
  want = np.where(dy > 0, (g - c2w[1, 3]) / np.where(dy > 0, dy, 1), np.inf)
  np.testing.assert_allclose(r.depth[0], want, rtol=1e-6)


def test_walking_towards_a_wall_reduces_its_depth_by_the_step():
  scene = sw.with_boxes(sw.plane_scene(5.0), lo=(-50, -50, 5.0), hi=(50, 4.0, 6.0))
  tr = T.trajectory_from_motions([{}] + [{"forward": 0.1}] * 3)
  r = sw.render_trajectory(scene, tr, 16, 16, per_frame=False)
  wall = r.object_id == 1
  assert wall[0].mean() > 0.5
  for i in range(4):
    np.testing.assert_allclose(r.depth[i][wall[i]], 5.0 - 0.1 * i, rtol=1e-6)


def _best_shift(a, b, axis, max_shift=10):
  """Integer shift s minimising |b - roll(a, s)| on the central part."""
  errs = {}
  m = max_shift
  for s in range(-m, m + 1):
    rolled = np.roll(a, s, axis=axis)
    sl = [slice(None)] * 3
    sl[axis] = slice(m, a.shape[axis] - m)
    errs[s] = np.mean((rolled[tuple(sl)] - b[tuple(sl)]) ** 2)
  return min(errs, key=errs.get)


def test_yaw_right_moves_the_image_left_and_pitch_up_moves_it_down():
  scene = sw.make_scene(2)
  h = w = 48
  k = sw.pixel_intrinsics(h, w)
  yaw = np.arctan(4 / k[0, 0])           # 4 px at the image centre
  pitch = np.arctan(3 / k[1, 1])         # 3 px
  r = sw.render(scene, np.stack([np.eye(4), _pose(yaw=yaw), _pose(pitch=pitch)]), h, w)
  band = slice(h // 2 - 6, h // 2 + 6)
  f = r.frames
  assert _best_shift(f[0][band], f[1][band], axis=1) == -4
  cols = slice(w // 2 - 6, w // 2 + 6)
  assert _best_shift(f[0][:, cols], f[2][:, cols], axis=0) == 3
  # and the labeller agrees with the commanded directions
  assert T.trajectory_from_motions([{}, {"yaw": yaw}, {"pitch": pitch}]).describe()[1:] == [
      "none / yaw_right", "none / pitch_up"]


def _surface_error(scene, r, frame, c2w):
  """Max distance from the surfaces they hit of frame's ground and sphere pixels, lifted
  to 3-D with pose c2w."""
  pts = sw.unproject(r.depth[frame], c2w, r.k_pixel)
  ids = r.object_id[frame]
  err = [np.abs(pts[ids == sw.GROUND_ID][:, 1] - scene.ground_y)]
  for j in range(scene.num_spheres):
    p = pts[ids == 1 + scene.num_boxes + j]
    err.append(np.abs(np.linalg.norm(p - scene.sphere_center[j], axis=-1) - scene.sphere_radius[j]))
  return np.concatenate(err).max()


def test_rendered_cameras_are_the_given_poses():
  """Every pixel lifted to 3-D with its frame's given pose lies on the surface it shows
  (exactly, for every frame); a neighbouring frame's pose does not fit. And frame 0's depth
  reprojects onto the last frame's depth with the given poses."""
  scene = sw.make_scene(1)
  a = np.deg2rad(2)
  tr = T.trajectory_from_motions([{}] + [{"forward": 0.1, "yaw": a}] * 3
                                 + [{"right": 0.1, "pitch": -a}] * 2)
  h, w = 32, 48
  r = sw.render_trajectory(scene, tr, h, w)
  assert np.array_equal(r.c2w, tr.frame_c2w)
  np.testing.assert_allclose(r.w2c, tr.frame_w2c, atol=1e-12)
  for f in range(tr.num_frames):
    assert _surface_error(scene, r, f, tr.frame_c2w[f]) < 1e-4
  for f in range(1, tr.num_frames):
    assert _surface_error(scene, r, f, tr.frame_c2w[f - 1]) > 5e-3

  pts = sw.unproject(r.depth[0], r.c2w[0], r.k_pixel)[np.isfinite(r.depth[0])]

  def agreement(frame, w2c):
    uv, z = sw.project(pts, w2c, r.k_pixel)
    ui, vi = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    d = r.depth[frame][vi[inside], ui[inside]]
    return np.mean(np.abs(d - z[inside]) < 0.02 * z[inside]), inside.mean()

  last = tr.num_frames - 1
  good, seen = agreement(last, r.w2c[last])
  assert seen > 0.5 and good > 0.7
  assert agreement(last, r.w2c[last - 8])[0] < good - 0.2
  assert agreement(last, r.w2c[0])[0] < 0.2


def test_scenes_are_deterministic_and_differ_by_seed():
  tr = T.random_trajectory(0, 2)
  a = sw.render_trajectory(sw.make_scene(3), tr, 16, 16)
  b = sw.render_trajectory(sw.make_scene(3), tr, 16, 16)
  c = sw.render_trajectory(sw.make_scene(4), tr, 16, 16)
  np.testing.assert_array_equal(a.frames, b.frames)
  np.testing.assert_array_equal(a.depth, b.depth)
  assert np.abs(a.frames - c.frames).mean() > 0.02
  assert 0.0 <= a.frames.min() and a.frames.max() <= 1.0 and a.frames.dtype == np.float32
  assert a.frames_uint8().dtype == np.uint8
  s = sw.make_scene(5)
  assert s.num_boxes >= 4 + 4 and s.num_spheres >= 2 and "scene 5" in s.describe()
  # the start camera is clear: nothing within clear_radius in the ground plane
  centres = np.concatenate([(s.box_lo + s.box_hi)[~s.box_is_wall] / 2, s.sphere_center])
  assert np.hypot(centres[:, 0], centres[:, 2]).min() > 1.5


def test_supersampling_keeps_depth_and_smooths_colour():
  scene, pose = sw.make_scene(0), np.eye(4)
  a = sw.render(scene, pose, 16, 16)
  b = sw.render(scene, pose, 16, 16, supersample=2)
  np.testing.assert_array_equal(a.depth, b.depth)
  assert 0 < np.abs(a.frames - b.frames).mean() < 0.1


def test_detail_fades_texture_but_keeps_the_layout():
  """detail < 1: same geometry (depth) and mean colours, less high-frequency texture."""
  tr = T.random_trajectory(0, 2)
  full = sw.render_trajectory(sw.make_scene(3), tr, 24, 24)
  default = sw.render_trajectory(sw.make_scene(3, detail=1.0), tr, 24, 24)
  smooth = sw.render_trajectory(sw.make_scene(3, detail=0.0), tr, 24, 24)
  np.testing.assert_allclose(default.frames, full.frames, atol=1e-6)
  np.testing.assert_array_equal(smooth.depth, full.depth)

  def grad(f):   # mean absolute image gradient: the texture energy
    return np.abs(np.diff(f, axis=1)).mean() + np.abs(np.diff(f, axis=2)).mean()

  assert grad(smooth.frames) < 0.8 * grad(full.frames)
  assert abs(smooth.frames.mean() - full.frames.mean()) < 0.03
  assert sw.make_scene(3, detail=0.0).ground_cell == pytest.approx(3 * sw.make_scene(3).ground_cell)


def test_panels_and_sky_bands_make_a_turn_visible_and_tell_it_from_a_step():
  """wall_panel / sky_contrast: a 15-degree turn changes the image more than on plain walls;
  the sky (at infinity) moves under a turn and not under a sideways step."""
  start = np.eye(4)
  turn = T.motions_to_poses([{"yaw": np.deg2rad(15.0)}], start=start)[0]
  step = _translation((0.5, 0.0, 0.0))
  poses = np.stack([start, turn, step])
  plain = sw.render(sw.make_scene(3, detail=0.0), poses, 24, 24)
  panelled = sw.render(sw.make_scene(3, detail=0.0, wall_panel=1.5, sky_contrast=0.5), poses, 24, 24)
  np.testing.assert_array_equal(plain.depth, panelled.depth)          # same geometry
  change = lambda r, i: np.square(r.frames[i] - r.frames[0]).mean()
  assert change(panelled, 1) > 1.3 * change(plain, 1)                 # the turn shows more
  sky = np.isinf(panelled.depth[0]) & np.isinf(panelled.depth[2])
  assert sky.sum() > 20
  np.testing.assert_allclose(panelled.frames[2][sky], panelled.frames[0][sky], atol=1e-6)   # a step: same sky
  sky_turn = np.isinf(panelled.depth[0]) & np.isinf(panelled.depth[1])
  assert np.abs(panelled.frames[1][sky_turn] - panelled.frames[0][sky_turn]).mean() > 0.02  # a turn: not
  # defaults are the old world
  np.testing.assert_array_equal(sw.render(sw.make_scene(3, wall_panel=0.0, sky_contrast=0.15), poses, 12, 12).frames,
                                sw.render(sw.make_scene(3), poses, 12, 12).frames)


def test_clip_renders_fast_on_cpu():
  tr = T.random_trajectory(2, 17)          # 65 frames
  t0 = time.perf_counter()
  r = sw.render_trajectory(sw.make_scene(1), tr, 64, 64)
  secs = time.perf_counter() - t0
  assert r.frames.shape == (65, 64, 64, 3)
  assert secs < 6.0, f"65 frames at 64x64 took {secs:.2f} s"


@pytest.mark.parametrize("call, message", [
    (lambda: sw.render(sw.plane_scene(), np.eye(3)), r"render: c2w must be \[F,4,4\] camera-to-world poses, got shape \(1, 3, 3\)"),
    (lambda: sw.render(sw.plane_scene(), np.full((4, 4), np.nan)), "render: c2w holds non-finite values"),
    (lambda: sw.render(sw.plane_scene(), np.eye(4), 0, 8), "render: height must be a positive integer, got 0"),
    (lambda: sw.render(sw.plane_scene(), np.eye(4), 8, 8, supersample=1.5), "render: supersample must be a positive integer"),
    (lambda: sw.render(sw.plane_scene(), np.eye(4), 8, 8, intrinsics=np.eye(2)), "intrinsics must be a normalised 3x3 matrix"),
    (lambda: sw.make_scene(-1), "make_scene: seed must be a non-negative integer, got -1"),
    (lambda: sw.make_scene(0, room_half=2.0), r"make_scene: room_half \(2.0\) must exceed clear_radius \+ 1"),
    (lambda: sw.make_scene(0, num_boxes=-1), "make_scene: object counts must be >= 0"),
    (lambda: sw.make_scene(0, detail=1.5), r"make_scene: detail must be in \[0, 1\], got 1.5"),
    (lambda: sw.make_scene(0, wall_panel=-1.0), r"make_scene: wall_panel must be >= 0 \(0: plain walls\), got -1.0"),
    (lambda: sw.make_scene(0, sky_contrast=2.0), r"make_scene: sky_contrast must be in \[0, 1\], got 2.0"),
    (lambda: sw.with_boxes(sw.plane_scene(), (0, 0, 0), (1, -1, 1)), "with_boxes: need lo < hi"),
    (lambda: sw.pooled_latent(np.zeros((8, 8)), 4, 4), r"pooled_latent: frame must be \[H,W,3\]"),
    (lambda: sw.pooled_latent(np.zeros((8, 8, 3)), 4, 16), "smaller than factor 16"),
    (lambda: sw.SyntheticConfig(height=40), r"multiples of vae_factor \(16\)"),
    (lambda: sw.SyntheticConfig(num_examples=0), "SyntheticConfig.num_examples must be an integer >= 1, got 0"),
])
def test_bad_inputs(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_pooled_latent_layout():
  frame = np.zeros((32, 48, 3), np.uint8)
  frame[:16, :, 0] = 255
  lat = sw.pooled_latent(frame, 5, 16)
  assert lat.shape == (5, 2, 3) and lat.dtype == np.float32
  np.testing.assert_allclose(lat[0], [[1, 1, 1], [-1, -1, -1]])
  np.testing.assert_allclose(lat[1], -1)


def test_synthetic_records():
  spec = tb.RecordSpec(text_dim=8, byt5_dim=6, vision_dim=5, latent_channels=4, with_video=True)
  cfg = sw.SyntheticConfig(num_examples=3, num_scenes=2, num_latents=3, height=16, width=32,
                           text_tokens=4, byt5_tokens=2, vision_tokens=3)
  src = sw.SyntheticRecords(cfg, spec)
  assert len(src) == 3
  rec = src[2]
  assert rec["id"] == "scene0000_traj000002" and "scene 0" in rec["prompt"]
  assert rec["frames"].shape == (9, 16, 32, 3) and rec["frames"].dtype == np.uint8
  assert rec["depth"].shape == (9, 16, 32) and rec["first_latent"].shape == (4, 1, 2)
  tr = T.random_trajectory(2, 3)
  np.testing.assert_array_equal(rec["actions"], tr.actions)
  np.testing.assert_array_equal(rec["w2c"], tr.w2c)
  np.testing.assert_array_equal(rec["frame_w2c"], tr.frame_w2c)
  again = sw.SyntheticRecords(cfg, spec)[2]
  for key in ("frames", "depth", "text_states", "first_latent"):
    np.testing.assert_array_equal(rec[key], again[key])
  # same scene -> same conditioning states; other scene -> other states
  np.testing.assert_array_equal(src[0]["text_states"], rec["text_states"])
  assert not np.array_equal(src[1]["text_states"], rec["text_states"])
  tb.prepare_example(rec, spec)            # a valid record
  with pytest.raises(IndexError, match=r"index 3 out of range \[0, 3\)"):
    src[3]
  with pytest.raises(ValueError, match="the spec must have with_video=True"):
    sw.SyntheticRecords(cfg, tb.RecordSpec(8, 6, 5, 4))
  custom = sw.SyntheticRecords(cfg, spec, latent_fn=lambda f: np.ones((4, 1, 2)))[0]
  np.testing.assert_array_equal(custom["first_latent"], 1.0)
