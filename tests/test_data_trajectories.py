"""Commanded trajectories: reference parity (RNG, poses, per-frame poses, labels), pose strings."""
import json
import random

import numpy as np
import pytest

from wc_jax.data import trajectories as T


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  d = fixtures_dir / "rewards" / "labels"
  return np.load(d / "trajectories.npz"), json.loads((d / "trajectories.json").read_text())


def test_random_trajectories_match_reference_fixture_exactly(fixture):
  arrays, meta = fixture
  assert meta["seeds"]
  for s in meta["seeds"]:
    tr = T.random_trajectory(s, meta["window_latents"], meta["generator_num"])
    np.testing.assert_array_equal(tr.c2w, arrays[f"seed{s}_c2w"])
    np.testing.assert_array_equal(tr.frame_c2w, arrays[f"seed{s}_frame_c2w"])
    np.testing.assert_array_equal(tr.actions, arrays[f"seed{s}_gt_action"])
    np.testing.assert_array_equal(tr.trans_labels, arrays[f"seed{s}_gt_trans_label"])
    np.testing.assert_array_equal(tr.rot_labels, arrays[f"seed{s}_gt_rot_label"])
    assert tr.actions.tolist() == meta["trajectories"][str(s)]["gt_action"]
    # The dataset's w2c is LAPACK's inverse; its last bits depend on the LAPACK build.
    np.testing.assert_allclose(tr.w2c, arrays[f"seed{s}_w2c"], rtol=0, atol=2e-15)
    assert tr.frame_c2w.shape == (4 * 64 - 3, 4, 4) and tr.num_frames == 253


def test_rng_stream_matches_reference_call_order(fixture):
  _, meta = fixture
  for s in meta["seeds"]:
    want = meta["trajectories"][str(s)]["motions"]
    random.seed(s)     # the reference seeds the global generator
    assert T.random_motions(meta["generator_num"])[:len(want)] == want
    assert T.random_motions(meta["generator_num"], random.Random(s))[:len(want)] == want


def test_poses_from_fixture_motions_without_the_rng(fixture):
  arrays, meta = fixture
  for s in meta["seeds"]:
    tr = T.trajectory_from_motions(meta["trajectories"][str(s)]["motions"])
    np.testing.assert_array_equal(tr.c2w, arrays[f"seed{s}_c2w"])
    np.testing.assert_array_equal(tr.frame_c2w, arrays[f"seed{s}_frame_c2w"])
    np.testing.assert_array_equal(tr.actions, arrays[f"seed{s}_gt_action"])


def test_generator_draws_segments_of_weighted_primitives():
  assert len(T.PRIMITIVES) == len(T.PRIMITIVE_WEIGHTS) == 32
  motions = T.random_motions(4000, random.Random(123))
  assert len(motions) == 4000
  # split into runs of identical motions: every complete run is 2..16 latents long
  runs, start = [], 0
  for i in range(1, len(motions) + 1):
    if i == len(motions) or motions[i] != motions[start]:
      runs.append((motions[start], i - start))
      start = i
  assert all(m in T.PRIMITIVES for m, _ in runs)
  assert max(n for _, n in runs[:-1]) <= 16 * 2  # two equal draws in a row may merge
  assert {n for _, n in runs[:-1]} >= {2, 16}
  steps = {abs(v) for m in motions for k, v in m.items() if k not in ("yaw", "pitch")}
  angles = {abs(v) for m in motions for k, v in m.items() if k in ("yaw", "pitch")}
  assert steps == {0.1} and angles == {np.deg2rad(2)}
  compound = sum(len(m) == 2 for m in motions) / len(motions)
  assert 0.5 < compound < 0.8   # weights: 76 of 116 on compound primitives


def test_quarter_motions_split_every_latent_into_four_frames():
  tr = T.trajectory_from_motions([{"forward": 0.1}] * 3)
  z = tr.frame_c2w[:, 2, 3]
  np.testing.assert_allclose(z, 0.1 + 0.025 * np.arange(9), atol=1e-15)
  np.testing.assert_allclose(tr.frame_c2w[::4], tr.c2w, atol=1e-15)
  assert tr.frame_actions.tolist() == [0] + [9] * 8


def test_yaw_then_translate_order_and_label_conventions():
  a = np.deg2rad(2)
  tr = T.trajectory_from_motions([{}, {"yaw": a, "forward": 0.1}, {"pitch": a, "left": 0.1}])
  # yaw is applied before the translation, so the step follows the turned axis
  np.testing.assert_allclose(tr.c2w[1, :3, 3], [0.1 * np.sin(a), 0, 0.1 * np.cos(a)], atol=1e-15)
  assert tr.describe() == ["none / none", "forward / yaw_right", "left / pitch_up"]


def test_window_keeps_latents_and_their_frames():
  tr = T.random_trajectory(5, 12)
  w = tr.window(4, 4)
  np.testing.assert_array_equal(w.c2w, tr.c2w[4:8])
  np.testing.assert_array_equal(w.frame_c2w, tr.frame_c2w[16:29])
  assert w.frame_c2w.shape[0] == w.num_frames == 13
  np.testing.assert_array_equal(tr.window(0, 4).frame_c2w, tr.frame_c2w[:13])
  with pytest.raises(ValueError, match=r"window \[10, 14\) is outside the trajectory's 12 latents"):
    tr.window(10, 4)


def test_normalized_intrinsics_like_the_reference():
  k = T.normalized_intrinsics(num=3)
  assert k.shape == (3, 3, 3)
  np.testing.assert_allclose(k[0], [[969.6969696969696 / 1920, 0, 0.5],
                                    [0, 969.6969696969696 / 1080, 0.5], [0, 0, 1]])
  with pytest.raises(ValueError, match="intrinsics must be a 3x3 matrix, got shape"):
    T.normalized_intrinsics(np.eye(4))
  with pytest.raises(ValueError, match="positive principal point"):
    T.normalized_intrinsics(np.eye(3))


# ----------------------------------------------------------------------------- pose strings

def _reference_cli_poses(moves):
  """The reference CLI's pose chain written out: identity, then one pose per motion."""
  pose = np.eye(4)
  out = [pose.copy()]
  for kind, v in moves:
    if kind == "yaw":
      c, s = np.cos(v), np.sin(v)
      pose[:3, :3] = pose[:3, :3] @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    elif kind == "pitch":
      c, s = np.cos(v), np.sin(v)
      pose[:3, :3] = pose[:3, :3] @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    elif kind == "forward":
      pose[:3, 3] += pose[:3, :3] @ np.array([0, 0, v])
    else:
      pose[:3, 3] += pose[:3, :3] @ np.array([v, 0, 0])
    out.append(pose.copy())
  return np.stack(out)


def test_pose_string_matches_reference_cli_semantics():
  s, a = 0.08, np.deg2rad(3)
  tr = T.trajectory_from_string("w-3, right-2, a-1, s-1, down-2, d-1, left-1, up-1")
  moves = ([("forward", s)] * 3 + [("yaw", a)] * 2 + [("right", -s)] + [("forward", -s)]
           + [("pitch", -a)] * 2 + [("right", s)] + [("yaw", -a)] + [("pitch", a)])
  np.testing.assert_array_equal(tr.c2w, _reference_cli_poses(moves))
  assert tr.num_latents == 13 and tr.num_frames == 49
  names = tr.describe()
  assert names[1] == "forward / none" and names[4] == "none / yaw_right"
  assert names[6] == "left / none" and names[7] == "backward / none"
  assert names[8] == "none / pitch_down" and names[11] == "none / yaw_left"


def test_pose_string_compound_commands_and_options():
  tr = T.trajectory_from_string("w+right-4, s+a-2", step=0.1, angle_deg=2.0)
  assert tr.actions.tolist() == [0] + [1 * 9 + 1] * 4 + [8 * 9 + 0] * 2
  assert T.parse_action_string(" w-2 ,, up-1 ") == [{"forward": 0.08}] * 2 + [{"pitch": np.deg2rad(3)}]


@pytest.mark.parametrize("text, message", [
    ("", "holds no commands"),
    (" , ", "holds no commands"),
    ("w3", r"invalid pose command 'w3': expected 'key-latents'"),
    ("-3", r"invalid pose command '-3'"),
    ("w-0.5", r"invalid duration in pose command 'w-0.5': durations are whole latents >= 1"),
    ("w-0", "durations are whole latents >= 1"),
    ("w--2", r"invalid pose command 'w--2': expected 'key-latents'"),
    ("jump-2", r"unknown action 'jump' in pose command 'jump-2'; supported: w, s, d, a"),
    ("w+s-2", r"pose command 'w\+s-2' repeats a key or combines opposite keys"),
    ("left+right-1", "repeats a key or combines opposite keys"),
    ("w+w-1", "repeats a key or combines opposite keys"),
])
def test_pose_string_errors(text, message):
  with pytest.raises(ValueError, match=message):
    T.parse_action_string(text)


def test_pose_string_latent_count_check_and_type():
  with pytest.raises(ValueError, match=r"gives 4 latents \(13 frames\), expected 5 latents \(17 frames\)"):
    T.trajectory_from_string("w-3", num_latents=5)
  assert T.trajectory_from_string("w-4", num_latents=5).num_latents == 5
  with pytest.raises(ValueError, match="pose string must be a str, got int"):
    T.parse_action_string(3)


# ----------------------------------------------------------------------------- pose files, motions

def test_reference_pose_json_round_trip(tmp_path):
  tr = T.random_trajectory(7, 20)
  doc = [{str(i): {"extrinsic": p.tolist(), "K": T.REFERENCE_K.tolist()} for i, p in enumerate(tr.c2w)}]
  path = tmp_path / "poses.json"
  path.write_text(json.dumps(doc))
  (back,) = T.load_pose_json(str(path))
  np.testing.assert_array_equal(back.c2w, tr.c2w)
  np.testing.assert_array_equal(back.actions, tr.actions)
  np.testing.assert_array_equal(back.intrinsics, tr.intrinsics)
  assert back.frame_c2w is None and back.frame_w2c is None and np.isnan(back.motions).all()
  assert back.window(2, 3).frame_c2w is None


def test_pose_json_and_motion_errors():
  with pytest.raises(ValueError, match="pose JSON entry 0 must be a non-empty dict"):
    T.load_pose_json([{}])
  with pytest.raises(ValueError, match="pose JSON entry 1: every pose needs 'extrinsic'"):
    T.load_pose_json([{"0": {"extrinsic": np.eye(4).tolist(), "K": T.REFERENCE_K.tolist()}},
                      {"0": {"K": T.REFERENCE_K.tolist()}}])
  with pytest.raises(ValueError, match=r"trajectory_from_poses: c2w must be \[L,4,4\], got shape \(3, 4\)"):
    T.trajectory_from_poses(np.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"motion 1 has unknown keys \['roll'\]"):
    T.motions_to_array([{"yaw": 0.1}, {"roll": 0.1}])
  with pytest.raises(ValueError, match="motion 0 must be a dict"):
    T.motions_to_array([0.1])
  with pytest.raises(ValueError, match=r"motions must be \[N,6\]"):
    T.motions_to_array(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="random_motions: num must be an integer >= 1, got 0"):
    T.random_motions(0)
  with pytest.raises(ValueError, match=r"generator_num \(4\) must be >= num_latents \(8\)"):
    T.random_trajectory(0, 8, 4)
  with pytest.raises(ValueError, match="num_latents must be an integer >= 1"):
    T.random_trajectory(0, 0)
  with pytest.raises(ValueError, match="need at least one motion"):
    T.trajectory_from_motions([])
  with pytest.raises(ValueError, match=r"start must be a 4x4 c2w matrix, got shape \(3, 3\)"):
    T.motions_to_poses([{"yaw": 0.1}], start=np.eye(3))


def test_motion_array_round_trip_and_start_pose():
  motions = T.random_motions(30, random.Random(1))
  arr = T.motions_to_array(motions)
  assert arr.shape == (30, 6) and T.array_to_motions(arr) == motions
  start = T.motions_to_poses([{"yaw": 0.3, "forward": 2.0}])[0]
  cont = T.motions_to_poses(motions[10:], start=T.motions_to_poses(motions[:10], start)[-1])
  np.testing.assert_array_equal(cont, T.motions_to_poses(motions, start)[10:])
