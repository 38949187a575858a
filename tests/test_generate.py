"""python -m wc_jax.generate at the tiny config: a playable mp4 of the requested frames from an
image, actions and precomputed states; the same video on 1 and on 8 devices; one-line errors
for bad input with nothing written."""
import json
import os
import shutil
import subprocess
import sys

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from conftest import REPO, load_config
from test_export import rl_checkpoint_from_torch
from wc_jax import generate, sharding
from wc_jax.convert import kinds
from wc_jax.convert.common import save_orbax

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")   # imageio-ffmpeg reading back

ACTIONS = "w-3, right-2, w+left-2"       # 8 latents = 2 chunks of 4 = 29 frames
FRAMES = 29
H, W = 64, 96                             # tiny: latent 4 x 6, VAE factor 16


def tiny():
  cfg = load_config("tiny")
  cfg.sampling.steps = 2
  return cfg


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, fixtures_dir):
  from PIL import Image
  d = tmp_path_factory.mktemp("inputs")
  x = np.zeros((120, 160, 3), np.uint8)
  x[:, :80] = (200, 60, 30)
  x[40:80, :, 1] = 255
  Image.fromarray(x).save(d / "first.png")
  cfg = tiny()
  rng = np.random.default_rng(5)
  m, t = cfg.model, cfg.text
  np.savez(d / "states.npz", text_states=rng.standard_normal((t.text_tokens, m.text_dim), np.float32),
           text_mask=np.arange(t.text_tokens) < 9, byt5_states=rng.standard_normal((t.byt5_tokens, m.byt5_in_dim)),
           byt5_mask=np.arange(t.byt5_tokens) < 3,
           vision_states=rng.standard_normal((t.vision_tokens, m.vision_dim)).astype(np.float32))
  torch = d / "torch"
  torch.mkdir()
  shutil.copy(fixtures_dir / "worldplay" / "dit" / "config.json", torch / "config.json")
  shutil.copy(fixtures_dir / "worldplay" / "dit" / "weights.safetensors", torch / "diffusion_pytorch_model.safetensors")
  rl = rl_checkpoint_from_torch(torch, d / "run")     # an RL run's checkpoint of the fixture DiT (tiny config)
  return dict(image=d / "first.png", states=d / "states.npz", rl=rl, dir=d)


def _generate(inputs, out, mesh=None, **kw):
  args = dict(out=str(out), image=str(inputs["image"]), actions=ACTIONS, states=str(inputs["states"]),
              checkpoint=str(inputs["rl"]), which="ema", seed=3, progress=False, mesh=mesh)
  args.update(kw)
  return generate.generate_video(tiny(), **args)


@pytest.fixture(scope="module")
def on_8(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp("gen8") / "video.mp4"
  return _generate(inputs, out), out


def test_writes_a_playable_mp4_of_the_requested_frames(on_8):
  summary, out = on_8
  frames = iio.imread(out, plugin="pyav") if _has_pyav() else np.stack(list(iio.imiter(out)))
  assert frames.shape == (FRAMES, H, W, 3) and summary["frames"] == FRAMES
  assert (summary["height"], summary["width"]) == (H, W) and summary["devices"] == 8
  lat = np.load(out.with_suffix(".npy"))
  assert lat.shape == (1, 4, 8, 4, 6) and np.isfinite(lat).all()
  saved = json.loads(out.with_suffix(".json").read_text())
  assert saved["context_indices"] == [[], [0, 1, 2, 3]] and saved["model_passes"] == 1 + 2 * 2 + 1
  assert saved["first_frame"].startswith("VAE encoding of") and "states.npz" in saved["conditioning"]
  # the commanded action is burned into the top-left corner: a dark box with bright text
  box = frames[:, : H // 5, : W // 2].astype(int)
  assert box.min() < 40 and box.max() > 200
  assert sorted(p.name for p in out.parent.iterdir()) == ["video.json", "video.mp4", "video.npy"]


def _has_pyav():
  try:
    import av  # noqa: F401
    return True
  except ImportError:
    return False


def test_same_video_on_1_and_8_devices(inputs, on_8, tmp_path):
  one = jax.devices()[:1]
  cfg = tiny()
  summary, out = _generate(inputs, tmp_path / "one.mp4", mesh=sharding.make_mesh(dict(cfg.mesh), devices=one)), \
      tmp_path / "one.mp4"
  assert summary["devices"] == 1
  lat1, lat8 = np.load(out.with_suffix(".npy")), np.load(on_8[1].with_suffix(".npy"))
  np.testing.assert_allclose(lat1, lat8, atol=2e-5, rtol=0)
  v1, v8 = (np.stack(list(iio.imiter(p))).astype(int) for p in (out, on_8[1]))
  # the latents agree to float32 rounding (FSDP-sharded reductions run in another order); the
  # decoded uint8 frames then differ by a level on a few pixels, which the lossy mp4 encoder
  # may spread a little (measured: 0.09 % of the values, mean |diff| 0.0015 levels, max 6)
  d = np.abs(v1 - v8)
  assert v1.shape == v8.shape and d.mean() < 0.05 and (d > 0).mean() < 0.01 and d.max() <= 32


def test_frame_labels_name_the_commanded_keys():
  traj, note = generate.make_trajectory(generate.from_config(tiny().model), actions=ACTIONS)
  labels = [generate.action_label(a) for a in traj.frame_actions]
  assert traj.num_latents == 8 and note == "" and len(labels) == FRAMES
  assert labels[0] == "still" and labels[1:5] == ["w"] * 4 and labels[13] == "right" and labels[-1] == "w+left"
  traj, note = generate.make_trajectory(generate.from_config(tiny().model), actions="w-8, right-4, d-8")
  assert traj.num_latents == 24 and "3 latents at rest" in note


def _error(inputs, tmp_path, **kw):
  with pytest.raises(generate.GenerateError) as e:
    _generate(inputs, tmp_path / "v.mp4", **kw)
  msg = str(e.value)
  assert "\n" not in msg
  assert not list(tmp_path.glob("v.*")) + list(tmp_path.glob(".v.*")), "nothing may be written"
  return msg


def test_bad_inputs_name_the_problem(inputs, tmp_path):
  (tmp_path / "not_an_image.png").write_bytes(b"this is text")
  assert "cannot read an image" in _error(inputs, tmp_path, image=str(tmp_path / "not_an_image.png"))
  msg = _error(inputs, tmp_path, actions="w-3, jump-2, d-2")
  assert "unknown action 'jump' in pose command 'jump-2'" in msg
  assert "invalid duration in pose command 'w-x'" in _error(inputs, tmp_path, actions="w-x")
  assert "frames must be 13, 29, ... (nearest: 13, 29, 45)" in _error(inputs, tmp_path, frames=30)
  assert "command 8 latents (29 frames), more than --frames=13" in _error(inputs, tmp_path, frames=13)
  pose = {str(i): {"extrinsic": np.eye(4).tolist(), "K": [[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]]}
          for i in range(9)}
  (tmp_path / "poses.json").write_text(json.dumps(pose))
  msg = _error(inputs, tmp_path, actions="", pose=str(tmp_path / "poses.json"), frames=45)
  assert "needs 12 camera poses (one per latent)" in msg and "has only 9" in msg and "at most 29 frames" in msg
  assert "no conditioning: pass --states" in _error(inputs, tmp_path, states="")
  np.savez(tmp_path / "short.npz", text_states=np.zeros((3, 32), np.float32))
  assert "lacks byt5_states, vision_states" in _error(inputs, tmp_path, states=str(tmp_path / "short.npz"))
  assert "no first frame: pass --image" in _error(inputs, tmp_path, image="")
  assert "needs --negative_states" in _error(inputs, tmp_path, guidance=4.0)
  save_orbax({"w": np.zeros(3, np.float32)}, tmp_path / "vae_ckpt", {"kind": kinds.VAE, "model_config": {}})
  assert "holds a 'vae' checkpoint, not a 'dit' one" in _error(inputs, tmp_path, checkpoint=str(tmp_path / "vae_ckpt"))
  cfg = tiny()
  cfg.model.mlp_ratio = 2.0
  with pytest.raises(generate.GenerateError, match=r"was trained with another model config; differences "
                                                   r"\(checkpoint vs --config\): \{'mlp_ratio': \(4.0, 2.0\)\}"):
    generate.generate_video(cfg, out=str(tmp_path / "v.mp4"), image=str(inputs["image"]), actions=ACTIONS,
                            states=str(inputs["states"]), checkpoint=str(inputs["rl"]), progress=False)
  (tmp_path / "v.mp4").write_bytes(b"old")
  with pytest.raises(generate.GenerateError, match="already exist.*pass --overwrite"):
    _generate(inputs, tmp_path / "v.mp4")
  assert (tmp_path / "v.mp4").read_bytes() == b"old"
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_reports_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-m", "wc_jax.generate", "--config=configs/tiny.py", "--actions=w-3, q-2",
                      "--random_conditioning", f"--out={tmp_path / 'v.mp4'}"], cwd=str(REPO), env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1] == ("error: --actions='w-3, q-2': unknown action 'q' in pose command "
                                               "'q-2'; supported: w, s, d, a, right, left, up, down (join with "
                                               "'+' to combine)")
  assert not list(tmp_path.iterdir())


def test_guidance(inputs):
  """CFG in `generate.sample`: against the prompt itself, or at scale 1, it is plain sampling; a
  real negative prompt at scale 3 moves the result."""
  import jax.numpy as jnp
  from wc_jax.inference import ChunkEngine, i2v_condition
  from wc_jax.models.worldplay.model import functional
  cfg = tiny()
  mcfg = generate.from_config(cfg.model)
  apply, state = functional(generate.build_model(cfg, mcfg, str(inputs["rl"])))
  engine = ChunkEngine.from_config(apply, cfg, retrieval_seed=0)
  keys = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states")

  def cache(conds):
    tokens = generate._encode_text_program(apply)(state, *(jnp.asarray(conds[k]) for k in keys), jnp.zeros((1,)))
    return engine.encode_text(state, tokens)

  pos = cache(generate.load_states(str(inputs["states"]), mcfg))
  neg = cache(generate.random_states(cfg, mcfg, np.random.default_rng(1)))
  traj, _ = generate.make_trajectory(mcfg, actions="w-3")
  rng = np.random.default_rng(0)
  kw = dict(noise=rng.standard_normal((1, 4, 4, 4, 6)).astype(np.float32),
            cond=i2v_condition(rng.standard_normal((1, 4, 4, 6)), 4), viewmats=traj.w2c[None],
            Ks=traj.intrinsics[None], action=traj.actions[None], text_cache=pos, w2c=traj.w2c, progress=False)
  plain, _, passes = generate.sample(engine, state, **kw)
  same, _, cfg_passes = generate.sample(engine, state, neg_cache=pos, guidance=3.0, **kw)
  one, _, _ = generate.sample(engine, state, neg_cache=neg, guidance=1.0, **kw)
  three, _, _ = generate.sample(engine, state, neg_cache=neg, guidance=3.0, **kw)
  assert cfg_passes == 2 * passes == 2 * cfg.sampling.steps
  np.testing.assert_allclose(np.asarray(same), np.asarray(plain), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(one), np.asarray(plain), atol=1e-4, rtol=0)
  assert np.abs(np.asarray(three) - np.asarray(plain)).max() > 1e-2


def test_states_and_first_latent_from_a_record_set(tmp_path):
  """--states reads a write_records record set: encoder states (bf16 bits or float32) and the
  record's first latent, which is the first frame when no --image is given."""
  from wc_jax.data import write_records
  path = write_records.main(["synthetic", "--out", str(tmp_path), "--name", "gen", "--config",
                             str(REPO / "configs" / "tiny.py"), "--num_examples", "2", "--num_latents", "4",
                             "--state_dtype", "bfloat16"])
  mcfg = generate.from_config(tiny().model)
  s = generate.load_states(path, mcfg, record=1)
  t = tiny().text
  assert s["text_states"].shape == (1, t.text_tokens, mcfg.text_dim) and s["text_states"].dtype == np.float32
  assert s["byt5_states"].shape[-1] == mcfg.byt5_in_dim and s["vision_states"].shape[-1] == mcfg.vision_dim
  assert s["first_latent"].shape == (1, 4, 4, 6) and s["text_mask"].dtype == np.int32
  assert s["source"].startswith("record 1 (") and np.isfinite(s["text_states"]).all()
  with pytest.raises(generate.GenerateError, match="has 2 records; --record=5 is out of range"):
    generate.load_states(path, mcfg, record=5)


def test_bidirectional_mode(inputs, on_8, tmp_path):
  """--mode=bidirectional (the reference's bi_rollout): a video of the requested frames,
  deterministic for a seed, not the AR video; chunks of --bi_chunk with retrieved context; a
  pass wider than the model's temporal positions is refused before any model is built."""
  one = jax.devices()[:1]
  mesh = sharding.make_mesh(dict(tiny().mesh), devices=one)
  cfg = tiny()
  model = generate.build_model(cfg, generate.from_config(cfg.model), str(inputs["rl"]))   # built once
  a = _generate(inputs, tmp_path / "bi.mp4", mesh=mesh, mode="bidirectional", model=model)
  b = _generate(inputs, tmp_path / "bi2.mp4", mesh=mesh, mode="bidirectional", model=model)
  frames = np.stack(list(iio.imiter(tmp_path / "bi.mp4")))
  assert frames.shape == (FRAMES, H, W, 3) and a["frames"] == FRAMES and a["mode"] == "bidirectional"
  assert b["context_indices"] == a["context_indices"]
  assert a["bi_chunk"] == 8 and a["context_indices"] == [[]] and a["model_passes"] == 2   # one pass per step
  la, lb = (np.load(tmp_path / f"{n}.npy") for n in ("bi", "bi2"))
  lar = np.load(on_8[1].with_suffix(".npy"))          # AR, same inputs and seed (8 devices: equal to 2e-5)
  assert np.isfinite(la).all() and np.array_equal(la, lb)                  # deterministic for a seed
  assert np.abs(la - lar).max() > 1e-2                                     # full attention is not the AR chunks
  # chunks of 4: the second chunk attends to the first as clean context
  c = _generate(inputs, tmp_path / "bi4.mp4", mesh=mesh, mode="bidirectional", bi_chunk=4, model=model)
  assert c["context_indices"] == [[], [0, 1, 2, 3]] and c["chunks"] == 2
  assert np.abs(np.load(tmp_path / "bi4.npy") - la).max() > 1e-3
  msg = _error(inputs, tmp_path, mode="bidirectional", bi_chunk=0, actions="w-67", frames=4 * 68 - 3)
  assert msg == ("--frames=269: the whole clip in one pass puts 68 latent frames in one bidirectional pass, more "
                 "than the model's 64 temporal positions (sampling.bi_max_latents); use --bi_chunk=16 (the "
                 "reference's chunked bi_rollout) or fewer frames")
  assert "--bi_chunk=6: a multiple of the model's 4-latent chunk" in _error(inputs, tmp_path, mode="bidirectional",
                                                                            bi_chunk=6)
  assert "--mode='sideways': expected one of ar, bidirectional" in _error(inputs, tmp_path, mode="sideways")


def test_bidirectional_context_is_the_union_of_the_pieces():
  """A 16-latent chunk's context: the AR retrieval of each 4-latent piece, merged, without the chunk."""
  from wc_jax.inference import bidirectional, select_context, sphere_points
  from wc_jax.data import trajectories as T
  traj = T.trajectory_from_string("w-10, right-20, w-20, left-13", 64)
  pts = sphere_points(2000, 8.0, seed=0)
  plan = bidirectional.plan(traj.w2c, 64, 16, pts)
  assert [(s, e) for s, e, _ in plan] == [(0, 16), (16, 32), (32, 48), (48, 64)]
  assert plan[0][2] == [] and plan[1][2] == list(range(16))
  want = set()
  for s in range(48, 64, 4):
    want |= set(select_context(traj.w2c, s, pts))
  assert plan[3][2] == sorted(want - set(range(48, 64))) and len(plan[3][2]) <= 48
  assert [(s, e) for s, e, _ in bidirectional.plan(traj.w2c, 64, 0, pts)] == [(0, 64)]
