"""LingBot-World generation pipeline (wc_jax.inference.lingbot) at the fixtures' tiny config: the
reference fixtures' experts (tests/fixtures/lingbot/dit) and VAE (tests/fixtures/lingbot/vae),
configs/lingbot_tiny.py's sampler (UniPC 4 steps across the expert switch). The denoising part
replays the recorded rollout from the recorded inputs; the end to end run (image -> video) has no
recorded counterpart (the DiT fixture's image latent is random, its noise torch's), so it is
checked for determinism, seed and camera sensitivity, shapes, sharding and input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from wc_jax import sharding
from wc_jax.data import trajectories
from wc_jax.fixtures import lingbot_dit
from wc_jax.fixtures import wan_vae as fixture_vae
from wc_jax.inference import lingbot

FRAMES, H, W = 9, 32, 64            # the DiT fixture's video: latents [4, 3, 4, 8]


@pytest.fixture(scope="module")
def dit_dir(fixtures_dir):
  return fixtures_dir / "lingbot" / "dit"


@pytest.fixture(scope="module")
def inputs(dit_dir):
  return dict(np.load(dit_dir / "inputs.npz"))


@pytest.fixture(scope="module")
def experts(dit_dir):
  return (lingbot_dit.load_expert(dit_dir, "weights.safetensors"),
          lingbot_dit.load_expert(dit_dir, "weights_high_noise.safetensors"))


@pytest.fixture(scope="module")
def pipe(experts, fixtures_dir):
  low, high = experts
  return lingbot.build_pipeline(load_config("lingbot_tiny"), low=low, high=high,
                                vae=fixture_vae.load(fixtures_dir / "lingbot" / "vae"))


@pytest.fixture(scope="module")
def image():
  """A smooth synthetic first frame (a colour ramp with a disc)."""
  yy, xx = np.mgrid[0:H, 0:W] / np.asarray([H, W])[:, None, None]
  img = np.stack([xx, yy, 0.5 * (1 - xx)], -1)
  img[(yy - 0.5) ** 2 + (xx - 0.3) ** 2 < 0.05] = (0.9, 0.2, 0.1)
  return np.round(img * 255).astype(np.uint8)


def _path(actions: str):
  return lingbot.poses_from_trajectory(trajectories.trajectory_from_string(actions), FRAMES)


@pytest.fixture(scope="module")
def run(pipe, image, inputs):
  """The end-to-end generation (seed 0, 'w-1, right-1'), done once and twice."""
  poses, k = _path("w-1, right-1")
  args = (image, inputs["context"], inputs["context_null"], poses, k, FRAMES)
  return pipe.generate(*args, seed=0), pipe.generate(*args, seed=0, decode=False), args


# ----------------------------------------------------------------------------- parity

def test_denoising_replays_the_recorded_rollout(pipe, inputs, dit_dir):
  """The recorded camera path (poses.npy / intrinsics.npy format) through the pipeline's camera
  stage, its i2v mask, then the recorded noise, y and prompts through its sampler: every step's
  latent and the final latent of rollout.npz (4 UniPC + CFG steps, high expert for 999, 967)."""
  r = np.load(dit_dir / "rollout.npz")
  assert (pipe.sampler.steps, pipe.sampler.shift, pipe.sampler.guide_scale) == (4, 10.0, (5.0, 5.0))
  cam = pipe.camera(inputs["cam_poses"], inputs["cam_intrinsics"], H, W, FRAMES)
  assert np.abs(np.asarray(cam) - inputs["c2ws_plucker_emb"]).max() < 1e-5     # camera README: ~1e-6
  np.testing.assert_array_equal(np.asarray(lingbot.i2v_mask(3, 4, 8)), inputs["mask"])
  np.testing.assert_array_equal(inputs["y"], np.concatenate([inputs["mask"], inputs["image_latent"]]))
  final, tr = pipe.denoise(jnp.asarray(r["noise"])[None], jnp.asarray(inputs["y"])[None],
                           jnp.asarray(inputs["context"])[None], jnp.asarray(inputs["context_null"])[None], cam,
                           trace=True)
  errs = {f"step{i}_latent_out": float(np.abs(np.asarray(tr.latent_out[i, 0]) - r[f"step{i}_latent_out"]).max())
          for i in range(4)}
  errs["final_latent"] = float(np.abs(np.asarray(final[0]) - r["final_latent"]).max())
  # README: a float32 port matches to ~1e-5 abs; the DiT fixture replay's tolerance is 5e-5.
  assert max(errs.values()) < lingbot_dit.TOL_ABS, errs


# ----------------------------------------------------------------------------- generation

def test_generate_shapes_determinism_and_first_frame(run, image):
  out, again, _ = run
  assert out.video.shape == (FRAMES, H, W, 3) and out.video.dtype == np.uint8
  assert out.latents.shape == (1, 4, 3, H // 8, W // 8) and out.trace is None
  assert again.video is None
  np.testing.assert_array_equal(np.asarray(out.latents), np.asarray(again.latents))
  assert out.video.std() > 5            # not a flat or saturated clip


def test_seed_and_camera_change_the_latents(pipe, run):
  out, _, args = run
  other_seed = pipe.generate(*args, seed=1, decode=False)
  assert np.abs(np.asarray(other_seed.latents) - np.asarray(out.latents)).max() > 0.1
  poses, k = _path("s-1, left-1")
  other_cam = pipe.generate(*args[:3], poses, k, FRAMES, seed=0, decode=False)
  # the tiny fixture's camera branch is live (README: camera off moves the DiT output by 3.0)
  assert np.abs(np.asarray(other_cam.latents) - np.asarray(out.latents)).max() > 0.1
  no_cam = pipe.generate(*args[:3], None, None, FRAMES, seed=0, decode=False)
  assert np.abs(np.asarray(no_cam.latents) - np.asarray(out.latents)).max() > 0.1


def test_candidates_on_a_mesh_match_single_seed_runs(experts, pipe, run, inputs, fixtures_dir):
  """G=2 seeds as one batch, split over a (data 2, fsdp 4) mesh with the weights placed by
  their logical axes: candidate i is the single-seed run of seed i."""
  out, _, args = run
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
  sharded = lingbot.LingBotPipeline(*experts, fixture_vae.load(fixtures_dir / "lingbot" / "vae"), pipe.sampler,
                                    mesh=mesh)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded.low_state)}
  assert any("fsdp" in s for s in specs), specs                 # weights split, not replicated
  y = pipe.condition(pipe.image(args[0]), FRAMES)
  cam = pipe.camera(*args[3:5], H, W, FRAMES)
  noise = pipe.noise([0, 1], out.latents.shape[1:])
  ctx, ctx_null = jnp.asarray(inputs["context"])[None], jnp.asarray(inputs["context_null"])[None]
  both = sharded.denoise(noise, y, ctx, ctx_null, cam)            # enters its mesh itself
  assert both.shape == (2,) + out.latents.shape[1:]
  assert "data" in str(both.sharding.spec)                     # candidates split over the batch axes
  np.testing.assert_allclose(np.asarray(both[:1]), np.asarray(out.latents), atol=1e-4)
  assert np.abs(np.asarray(both[1]) - np.asarray(both[0])).max() > 0.1


def test_poses_from_an_action_string(pipe):
  poses, k = _path("w-1")                      # 2 latents = 5 frames, then held for 4 more
  assert poses.shape == (FRAMES, 4, 4) and k.shape == (FRAMES, 4)
  np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-7)
  assert poses[4, 2, 3] == pytest.approx(trajectories.CLI_STEP)            # forward = +z (OpenCV)
  np.testing.assert_array_equal(poses[4:], np.repeat(poses[4:5], 5, axis=0))
  kn = trajectories.normalized_intrinsics()[0]
  np.testing.assert_allclose(k[0], [kn[0, 0] * 832, kn[1, 1] * 480, 416, 240], rtol=1e-6)
  cam = np.asarray(pipe.camera(poses, k, H, W, FRAMES))
  cam_w2c = pipe.camera(np.linalg.inv(poses), k, H, W, FRAMES, pose_convention="w2c")
  assert np.abs(np.asarray(cam_w2c) - cam).max() < 1e-5 and np.abs(cam).max() > 0
  with pytest.raises(ValueError, match="more than num_frames=9"):
    _path("w-3")
  with pytest.raises(ValueError, match="1\\+4k"):
    lingbot.poses_from_trajectory(trajectories.trajectory_from_string("w-1"), 6)


def test_build_pipeline_from_the_tiny_config_alone():
  """No checkpoints: random experts (different seeds) and VAE of the config's shapes, the
  config's sampler; ready for `python -m wc_jax.generate --config=configs/lingbot_tiny.py`."""
  cfg = load_config("lingbot_tiny")
  p = lingbot.build_pipeline(cfg)
  assert p.sampler == lingbot.SamplerSettings(steps=4, shift=10.0, guide_scale=(5.0, 5.0), boundary=0.947)
  assert (p.cfg.dim, p.cfg.in_dim, p.vae.config.z_dim, p.area) == (64, 12, 4, 32 * 64)
  assert not p.single_expert
  a, b = jax.tree.leaves(p.low_state), jax.tree.leaves(p.high_state)
  assert any(np.abs(np.asarray(x) - np.asarray(y)).max() > 0 for x, y in zip(a, b))
  assert lingbot.frames_from_config(cfg) == FRAMES


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_are_named(pipe, image, inputs):
  poses, k = _path("w-1")
  ctx, neg = inputs["context"], inputs["context_null"]
  with pytest.raises(ValueError, match="uint8 RGB image .* got dtype float32"):
    pipe.generate(image.astype(np.float32) / 255, ctx, neg, poses, k, FRAMES)
  with pytest.raises(ValueError, match="uint8 RGB image .* got shape \\(32, 64, 4\\)"):
    pipe.generate(np.zeros((H, W, 4), np.uint8), ctx, neg, poses, k, FRAMES)
  with pytest.raises(ValueError, match="num_frames must be 1\\+4k .* got 8"):
    pipe.generate(image, ctx, neg, poses, k, 8)
  with pytest.raises(ValueError, match="5 poses for num_frames=9"):
    pipe.generate(image, ctx, neg, poses[:5], k[:5], FRAMES)
  with pytest.raises(ValueError, match="intrinsics must be \\[N=9 or 1, 4\\]"):
    pipe.generate(image, ctx, neg, poses, k[:3], FRAMES)
  with pytest.raises(ValueError, match="poses must be \\[N, 4, 4\\]"):
    pipe.generate(image, ctx, neg, poses[:, :3], k, FRAMES)
  with pytest.raises(ValueError, match="text_states must be umT5 states \\[L <= 16, 32\\]"):
    pipe.generate(image, np.zeros((7, 33), np.float32), neg, poses, k, FRAMES)


def test_video_size_follows_the_reference_area_rule(experts, pipe, inputs):
  """lat = round(sqrt(area * H/W) // 8 // 2 * 2) (image2video.py), float64 as the reference: a
  480x832 image at area 480*832 gets 58 latent rows, since sqrt(399360 * (480/832)) evaluates to
  479.99999999999994 (the fixture README's "60x104" is the exact-arithmetic value)."""
  assert lingbot.latent_size(480, 832, 480 * 832) == (58, 104)
  assert lingbot.latent_size(720, 1280, 720 * 1280) == (90, 160)
  assert pipe.area == H * W and pipe.frame_size(H, W) == (H, W)       # at the config's size: no resize
  assert pipe.frame_size(24, 64) == (16, 64) and pipe.frame_size(480, 832) == (32, 48)
  bare = lingbot.LingBotPipeline(*experts, pipe.vae, pipe.sampler)    # no area: the image's own size
  poses, k = _path("w-1")
  with pytest.raises(ValueError, match="multiples of 16x16"):
    bare.generate(np.zeros((24, 64, 3), np.uint8), inputs["context"], inputs["context_null"], poses, k, FRAMES)
