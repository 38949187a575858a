"""Action labels, frame/latent alignment, accuracies and the interaction reward."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wc_jax.rewards import (action_accuracy, action_labels, bind_model, gt_action_labels,
                            interaction_reward,
                            interaction_scores, latent_to_frame_labels, reward_action_labels,
                            split_action, step_labels)
from wc_jax.tools import check_fixture


@pytest.fixture(scope="module")
def labels_dir(fixtures_dir):
  return fixtures_dir / "rewards" / "labels"


def test_check_fixture_labels_all_exact(labels_dir):
  kind, results, ok = check_fixture.run(labels_dir, out=None)
  assert kind == "labels"
  bad = [(r.name, r.note) for r in results if not r.ok]
  assert ok and not bad, bad
  names = {r.name for r in results}
  assert {"unit/dataset_label(c2w)", "unit/reward_label_per_threshold",
          "traj/seed0/gt_action(c2w)", "estimated/pred_action_full_0.002",
          "estimated/fine_action_acc", "estimated/hpsv3_quality_drift_score"} <= names


def test_check_fixture_cli_only(labels_dir):
  assert check_fixture.main([str(labels_dir), "--only", "unit003"]) == 0


def _rot_y(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _c2w(rot=np.eye(3), t=(0, 0, 0)):
  m = np.eye(4)
  m[:3, :3], m[:3, 3] = rot, t
  return m


def test_generator_conventions():
  """rot_y(+) is yaw right, rot_x(+) pitch up, +z forward, +x right; c2w and w2c agree."""
  a = np.deg2rad(2.0)
  r = _rot_y(a) @ _rot_x(a)
  t3 = r @ np.array([0, 0, 0.1])
  steps = [_c2w(), _c2w(_rot_y(a)), _c2w(r), _c2w(r, t3),
           _c2w(r, t3 + r @ np.array([-0.1, 0, 0.1]))]
  c2w = np.stack(steps).astype(np.float32)
  want_trans = [0, 0, 0, 1, 6]    # none, none, none, forward, forward+left
  want_rot = [0, 1, 3, 0, 0]      # none, yaw right, pitch up, none, none
  trans, rot = step_labels(c2w, 1e-4, 0.05, convention="c2w")
  assert trans.tolist() == want_trans and rot.tolist() == want_rot
  w2c = np.linalg.inv(np.stack(steps)).astype(np.float32)
  np.testing.assert_array_equal(action_labels(w2c[:, :3], 1e-4, 0.05),
                                np.array(want_trans) * 9 + np.array(want_rot))
  np.testing.assert_array_equal(gt_action_labels(c2w), action_labels(c2w, 1e-4, 0.05, convention="c2w"))
  t, r = split_action(jnp.asarray([0, 80, 14]))
  assert t.tolist() == [0, 8, 1] and r.tolist() == [0, 8, 5]


def test_labels_jit_vmap_over_candidates_and_thresholds(labels_dir):
  z = np.load(labels_dir / "trajectories.npz")
  c2w = np.stack([z[f"seed{s}_c2w"] for s in range(3)]).astype(np.float32)
  got = jax.vmap(gt_action_labels)(c2w)
  np.testing.assert_array_equal(got, np.stack([z[f"seed{s}_gt_action"] for s in range(3)]))
  assert got.dtype == jnp.int32
  k = reward_action_labels(z["seed0_frame_c2w"][:17].astype(np.float32), (0.002, 0.5),
                           convention="c2w")
  assert k.shape == (2, 17) and int(k[1, 1:].max() // 9) == 0  # nothing moves 0.5 per frame


def test_alignment_later_and_first_chunk():
  lat = jnp.asarray([10, 20, 30, 40], jnp.int32)
  np.testing.assert_array_equal(latent_to_frame_labels(lat, 17), np.repeat([10, 20, 30, 40], 4))
  np.testing.assert_array_equal(latent_to_frame_labels(lat, 13), np.repeat([20, 30, 40], 4))
  with pytest.raises(ValueError, match="must hold 17 frames .* or 13 frames .* got 16"):
    latent_to_frame_labels(lat, 16)


def test_action_accuracy_max_over_thresholds_ties_to_smallest():
  lat = jnp.asarray([1, 10, 9, 0], jnp.int32)
  gt = np.repeat(np.asarray(lat), 4)
  good = np.concatenate([[0], gt])
  half = good.copy()
  half[1:9] = 0                                    # 8 of 16 wrong
  fine = good.copy()
  fine[1:5] = 2                                    # 1 -> 2: translation right, rotation wrong
  pred = jnp.asarray(np.stack([half, good, good]), jnp.int32)
  acc = action_accuracy(pred, lat)
  np.testing.assert_allclose(acc.acc_per_threshold, [0.5, 1.0, 1.0])
  assert int(acc.best_index) == 1 and float(acc.action_acc) == 1.0
  acc = action_accuracy(jnp.asarray(np.stack([fine, half, fine]), jnp.int32), lat)
  assert int(acc.best_index) == 0
  # 1 -> 2: trans 0 == 0, rot 1 != 2 on 4 frames: rot acc 12/16, trans acc 16/16
  np.testing.assert_allclose(acc.fine_action_acc, (1.0 + 12 / 16) / 2)
  single = action_accuracy(jnp.asarray(good[4:], jnp.int32), lat)  # 13 frames: first chunk
  assert single.gt_action.shape == (12,) and float(single.action_acc) == 1.0


def test_label_functions_reject_bad_inputs():
  with pytest.raises(ValueError, match=r"action_labels: poses must be \[F,3,4\] or \[F,4,4\] .* got shape \(5, 3, 3\)"):
    action_labels(np.zeros((5, 3, 3), np.float32), 0.1, 0.1)
  with pytest.raises(ValueError, match=r"poses must be .* got shape \(3, 4\)"):
    action_labels(np.zeros((3, 4), np.float32), 0.1, 0.1)
  with pytest.raises(ValueError, match="move_threshold must be a scalar"):
    action_labels(np.zeros((2, 3, 4), np.float32), np.zeros(2), 0.1)
  with pytest.raises(ValueError, match="convention must be 'w2c' or 'c2w'"):
    action_labels(np.zeros((2, 3, 4), np.float32), 0.1, 0.1, convention="cam")
  with pytest.raises(ValueError, match="move_thresholds must be a non-empty 1-D sequence"):
    reward_action_labels(np.zeros((2, 3, 4), np.float32), 0.1)
  with pytest.raises(ValueError, match=r"latent_actions must be \[L\] integer action labels"):
    action_accuracy(jnp.zeros((3, 17), jnp.int32), jnp.zeros(4, jnp.float32))
  with pytest.raises(ValueError, match=r"pred_labels must be \[K,F\] or \[F\] integer frame labels"):
    action_accuracy(jnp.zeros((3, 17), jnp.float32), jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="action_accuracy: a window over 4 latents must hold 17"):
    action_accuracy(jnp.zeros((3, 15), jnp.int32), jnp.zeros(4, jnp.int32))


def _pose_from_pixels(frames):
  """Toy pose model: each frame carries its w2c [3,4] in its first 12 values."""
  return frames.reshape(frames.shape[0], -1)[:, :12].reshape(-1, 3, 4)


class _PixelPoseNet(nnx.Module):
  """The same as an NNX module with a (unit) parameter, to exercise the traced-weights path."""

  def __init__(self):
    self.scale = nnx.Param(jnp.ones(()))

  def __call__(self, frames):
    return _pose_from_pixels(frames) * self.scale[...]


def _case_frames(z, key):
  w2c = z[f"{key}_w2c"]
  return w2c.reshape(len(w2c), 2, 2, 3)


def test_interaction_reward_on_fixture_cases(labels_dir):
  z = np.load(labels_dir / "estimated_cases.npz")
  cases = json.loads((labels_dir / "estimated_cases.json").read_text())["cases"]
  picked = [c for c in cases if c["num_frames"] == 17][:6]
  frames = np.stack([_case_frames(z, c["key"]) for c in picked])
  acts = np.stack([z[f"{c['key']}_gt_action_latent"] for c in picked]).astype(np.int32)
  fine = jax.vmap(lambda f, a: interaction_reward(f, a, _pose_from_pixels))(frames, acts)
  np.testing.assert_allclose(fine, [c["fine_action_acc"] for c in picked], atol=1e-6)
  net = _PixelPoseNet()
  coarse = jax.vmap(lambda f, a: interaction_reward(f, a, net, kind="action"))(frames, acts)
  np.testing.assert_allclose(coarse, [c["action_acc"] for c in picked], atol=1e-6)
  # a module whose forward returns a dict, adapted with bind_model (weights stay traced)
  bound = bind_model(net, lambda m, f: {"extrinsics": m(f)}["extrinsics"])
  np.testing.assert_allclose(interaction_reward(frames[0], acts[0], bound), fine[0], atol=1e-6)
  c13 = next(c for c in cases if c["num_frames"] == 13)
  r = interaction_reward(_case_frames(z, c13["key"]), z[f"{c13['key']}_gt_action_latent"], net)
  np.testing.assert_allclose(r, c13["fine_action_acc"], atol=1e-6)
  sc = interaction_scores(z[f"{c13['key']}_w2c"], z[f"{c13['key']}_gt_action_latent"])
  assert int(sc.best_index) == c13["best_threshold_index"]


def test_interaction_reward_rejects_bad_inputs():
  frames = np.zeros((17, 2, 2, 3), np.float32)
  acts = np.zeros(4, np.int32)
  with pytest.raises(ValueError, match=r"pose_model must map \[F,H,W,3\] frames to \[F,3,4\] w2c poses \(F=17\), got shape \(17, 12\)"):
    interaction_reward(frames, acts, lambda f: f.reshape(17, -1))
  with pytest.raises(ValueError, match=r"frames must be \[N,H,W,3\] RGB images"):
    interaction_reward(frames[..., :1], acts, _pose_from_pixels)
  with pytest.raises(ValueError, match=r"commanded_actions must be \[L\] integer action labels"):
    interaction_reward(frames, acts.astype(np.float32), _pose_from_pixels)
  with pytest.raises(ValueError, match="kind must be one of"):
    interaction_reward(frames, acts, _pose_from_pixels, kind="coarse")
  with pytest.raises(ValueError, match="must hold 17 frames"):
    interaction_reward(frames[:15], acts, _pose_from_pixels)
  with pytest.raises(TypeError, match="model argument must be callable"):
    interaction_reward(frames, acts, 3)
  with pytest.raises(TypeError, match="bind_model: module must be an nnx.Module"):
    bind_model(_pose_from_pixels, lambda m, f: m(f))


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: action_labels(np.zeros((0, 3, 4), np.float32), 0.1, 0.1), ValueError,
     r"poses must be \[F,3,4\] or \[F,4,4\] camera poses \(F >= 1\), got shape \(0, 3, 4\)"),
    (lambda: action_labels(np.zeros((2, 3, 4), bool), 0.1, 0.1), ValueError,
     r"poses must be .* dtype bool"),
    (lambda: action_labels(np.zeros((2, 3, 4), np.float32), 0.1, np.ones(3)), ValueError,
     "rot_threshold_deg must be a scalar"),
    (lambda: reward_action_labels(np.zeros((2, 3, 4), np.float32), (0.1,), np.ones(2)), ValueError,
     "reward_action_labels: rot_threshold_deg must be a scalar"),
    (lambda: latent_to_frame_labels(jnp.zeros((1,), jnp.int32), 1), ValueError,
     r"first chunk, needs >= 2 latents\), got 1"),
    (lambda: latent_to_frame_labels(jnp.zeros((2, 4), jnp.int32), 17), ValueError,
     r"latent_actions must be \[L\] integer action labels, got shape \(2, 4\)"),
    (lambda: interaction_scores(np.zeros((17, 3, 4), np.float32), np.zeros((1, 4), np.int32)),
     ValueError, r"interaction_scores: commanded_actions must be \[L\] integer action labels"),
])
def test_more_bad_inputs(call, exc, msg):
  with pytest.raises(exc, match=msg):
    call()
