"""Trajectory records: TFDS array_record write/read without TensorFlow, validation, the
write_records tool (synthetic world, images + encoder, reference .pt)."""
import json
import os

import numpy as np
import pytest

from wc_jax.data import synthetic_world as sw
from wc_jax.data import tfds_builder as tb
from wc_jax.data import trajectories as T
from wc_jax.data import write_records as wr

SPEC = tb.RecordSpec(text_dim=8, byt5_dim=6, vision_dim=5, latent_channels=4)


def _record(i, spec=SPEC, latents=6):
  rng = np.random.default_rng(i)
  tr = T.random_trajectory(i, latents)
  return dict(id=f"ex{i:03d}", prompt=f"prompt {i}",
              text_states=rng.standard_normal((3 + i % 4, spec.text_dim)),
              text_mask=np.arange(3 + i % 4) < 2 + i % 4,
              byt5_states=rng.standard_normal((2, spec.byt5_dim)), byt5_mask=np.array([1, 0]),
              vision_states=rng.standard_normal((4, spec.vision_dim)),
              first_latent=rng.standard_normal((spec.latent_channels, 2, 3)),
              actions=tr.actions, motions=tr.motions, w2c=tr.w2c, intrinsics=tr.intrinsics)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("records"))
  recs = {i: _record(i) for i in range(7)}
  path = tb.write_dataset(out, "unit", SPEC, {"train": lambda: (recs[i] for i in range(5)),
                                              "test": lambda: (recs[i] for i in range(5, 7))})
  return out, path, recs


def test_round_trip_is_lossless_without_tensorflow(written):
  import importlib.util
  assert importlib.util.find_spec("tensorflow") is None     # TFDS works without TF here
  out, path, recs = written
  assert path == tb.dataset_dir(out, "unit")
  assert any(f.endswith("-of-00001") and ".array_record-" in f for f in os.listdir(path))
  src = tb.open_split(path)
  assert len(src) == 5 and len(tb.open_split(path, "test")) == 2
  got = {src[i]["id"].decode(): src[i] for i in range(len(src))}
  assert sorted(got) == [f"ex{i:03d}" for i in range(5)]
  for i in range(5):
    g, r = got[f"ex{i:03d}"], recs[i]
    assert g["prompt"].decode() == r["prompt"]
    np.testing.assert_array_equal(g["w2c"], r["w2c"])            # float64, bit exact
    np.testing.assert_array_equal(g["motions"], r["motions"])
    np.testing.assert_array_equal(g["actions"], r["actions"])
    np.testing.assert_array_equal(g["text_states"], r["text_states"].astype(np.float32))
    np.testing.assert_array_equal(g["text_mask"], r["text_mask"])
    assert g["text_mask"].dtype == bool and g["actions"].dtype == np.int32
  assert tb.spec_of(path) == SPEC


def test_bfloat16_states_and_video_fields(tmp_path):
  import ml_dtypes
  spec = tb.RecordSpec(8, 6, 5, 4, state_dtype="bfloat16", with_video=True)
  cfg = sw.SyntheticConfig(num_examples=2, num_latents=2, height=16, width=16, text_tokens=3,
                           byt5_tokens=2, vision_tokens=2)
  source = sw.SyntheticRecords(cfg, spec)
  path = tb.write_dataset(str(tmp_path), "vid", spec, {"train": lambda: (source[i] for i in range(2))})
  assert tb.spec_of(path) == spec
  src = tb.open_split(path)
  rec = {src[i]["id"].decode(): src[i] for i in range(2)}["scene0001_traj000001"]
  want = source[1]
  assert rec["text_states"].dtype == np.uint16
  np.testing.assert_array_equal(rec["text_states"].view(ml_dtypes.bfloat16),
                                want["text_states"].astype(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(rec["frames"], want["frames"])
  np.testing.assert_array_equal(rec["depth"], want["depth"])     # +inf (sky) survives
  np.testing.assert_array_equal(rec["frame_w2c"], want["frame_w2c"])


def _broken(**changes):
  r = _record(1)
  r.update(changes)
  return {k: v for k, v in r.items() if v is not None}


@pytest.mark.parametrize("example, message", [
    (_broken(depth=np.zeros(3)), r"record 'ex001': missing fields \[\], unexpected fields \['depth'\] \(with_video=False\)"),
    (_broken(w2c=None), r"missing fields \['w2c'\]"),
    (_broken(id=""), "id must be a non-empty str"),
    (_broken(prompt=3), "prompt must be a str, got 'int'"),
    (_broken(text_states=np.zeros((3, 7))), r"text_states must be \[\?,8\] numeric, got shape \(3, 7\)"),
    (_broken(text_states=np.zeros((0, 8)), text_mask=np.zeros(0, bool)), r"text_states must be \[L>=1,8\]"),
    (_broken(text_mask=np.ones(9, bool)), r"text_mask must be \[4\] \(one per text_states token\), got shape \(9,\)"),
    (_broken(byt5_mask=np.ones(2, np.float32)), r"byt5_mask must be \[\?\] integer"),
    (_broken(first_latent=np.zeros((3, 2, 2))), r"first_latent must be \[4,h,w\], got shape \(3, 2, 2\)"),
    (_broken(actions=np.array([0, 81, 3])), r"actions must lie in \[0, 81\), got min 0 max 81"),
    (_broken(actions=np.zeros(5, np.int32)), r"motions must be \[5,6\] \(one per action\), got shape \(6, 6\)"),
    (_broken(intrinsics=np.zeros((6, 3, 4))), r"intrinsics must be \[\?,3,3\] numeric"),
    (_broken(actions=np.array(["a"])), r"actions must be \[\?\] integer"),
])
def test_prepare_example_errors(example, message):
  with pytest.raises(ValueError, match=message):
    tb.prepare_example(example, SPEC)


def test_video_field_errors():
  spec = tb.RecordSpec(8, 6, 5, 4, with_video=True)
  r = _record(2, latents=2)
  r.update(frames=np.zeros((5, 4, 4, 3), np.uint8), depth=np.zeros((5, 4, 4)),
           frame_w2c=np.zeros((5, 4, 4)))
  tb.prepare_example(r, spec)
  with pytest.raises(ValueError, match=r"frames must be \[5,H,W,3\] uint8 \(4T-3 frames for T=2 latents\), got shape \(4, 4, 4, 3\)"):
    tb.prepare_example(dict(r, frames=np.zeros((4, 4, 4, 3), np.uint8)), spec)
  with pytest.raises(ValueError, match="frames must be .* uint8"):
    tb.prepare_example(dict(r, frames=np.zeros((5, 4, 4, 3), np.float32)), spec)
  with pytest.raises(ValueError, match=r"depth must be \[5,4,4\] like frames, got shape \(5, 4, 3\)"):
    tb.prepare_example(dict(r, depth=np.zeros((5, 4, 3))), spec)
  with pytest.raises(ValueError, match=r"frame_w2c must be \[5,4,4\]"):
    tb.prepare_example(dict(r, frame_w2c=np.zeros((4, 4, 4))), spec)
  with pytest.raises(ValueError, match="an example must be a dict, got list"):
    tb.prepare_example([], spec)


def test_spec_and_dataset_errors(written, tmp_path):
  out, path, _ = written
  with pytest.raises(ValueError, match="RecordSpec.text_dim must be a positive integer, got 0"):
    tb.RecordSpec(0, 1, 1, 1)
  with pytest.raises(ValueError, match=r"RecordSpec.state_dtype must be one of \('float32', 'bfloat16'\)"):
    tb.RecordSpec(1, 1, 1, 1, state_dtype="float16")
  with pytest.raises(ValueError, match="already exists; remove it or pick another name"):
    tb.write_dataset(out, "unit", SPEC, {"train": lambda: iter([])})
  with pytest.raises(ValueError, match="name must be letters, digits and '_', got 'a-b'"):
    tb.write_dataset(out, "a-b", SPEC, {"train": lambda: iter([])})
  with pytest.raises(FileNotFoundError, match="open_split: no TFDS dataset at"):
    tb.open_split(str(tmp_path))
  with pytest.raises(ValueError, match=r"open_split: split 'validation' not in \['test', 'train'\]"):
    tb.open_split(path, "validation")
  with pytest.raises(ValueError, match="record id 'ex001' appears twice; ids must be unique"):
    tb.write_dataset(str(tmp_path), "dup", SPEC, {"train": lambda: iter([_record(1), _record(1)])})
  with pytest.raises(ValueError, match=r"record 'ex000': text_states must be \[\?,9\]"):
    tb.write_dataset(str(tmp_path), "bad", tb.RecordSpec(9, 6, 5, 4), {"train": lambda: iter([_record(0)])})


# ----------------------------------------------------------------------------- write_records

def test_write_records_synthetic_cli(tmp_path):
  path = wr.main(["synthetic", "--out", str(tmp_path), "--name", "syn", "--num_examples", "3",
                  "--test_examples", "1", "--num_latents", "2", "--height", "16", "--width", "32",
                  "--config", os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")])
  spec = tb.spec_of(path)
  assert spec.with_video and spec.text_dim == 32 and spec.latent_channels == 4
  train, test = tb.open_split(path), tb.open_split(path, "test")
  assert len(train) == 2 and len(test) == 1
  assert test[0]["id"].decode() == "scene0002_traj000002"
  assert train[0]["frames"].shape == (5, 16, 32, 3) and train[0]["text_states"].shape == (12, 32)


def _image_folder(tmp_path, captions="json"):
  from PIL import Image
  folder = tmp_path / "imgs"
  folder.mkdir()
  for n in range(2):
    Image.fromarray(np.full((40, 70, 3), 60 * n, np.uint8)).save(folder / f"im{n}.png")
  if captions == "json":
    (folder / "captions.json").write_text(json.dumps(
        [{"image_path": f"im{n}.png", "caption": f"a grey wall {n}"} for n in range(2)]))
  elif captions == "txt":
    for n in range(2):
      (folder / f"im{n}.txt").write_text(f"a grey wall {n}\n")
  return folder


@pytest.mark.parametrize("captions", ["json", "txt"])
def test_write_records_images_with_an_encoder(tmp_path, captions):
  folder = _image_folder(tmp_path, captions)
  args = ["images", "--images", str(folder), "--out", str(tmp_path / "out"), "--name", "img",
          "--encoder", "wc_jax.data.write_records:random_encoder", "--num_latents", "5",
          "--encoder_arg", "text_dim=8", "--encoder_arg", "byt5_dim=6",
          "--encoder_arg", "vision_dim=5", "--encoder_arg", "latent_channels=4",
          "--per_image", "2", "--trajectory", "w-2, right-2"]
  path = wr.main(args)
  src = tb.open_split(path)
  assert len(src) == 4
  recs = {src[i]["id"].decode(): src[i] for i in range(4)}
  assert sorted(recs) == ["000000_im0_t0", "000000_im0_t1", "000001_im1_t0", "000001_im1_t1"]
  r = recs["000001_im1_t1"]
  assert r["prompt"].decode() == "a grey wall 1"
  np.testing.assert_array_equal(r["actions"], T.trajectory_from_string("w-2, right-2").actions)
  assert r["first_latent"].shape == (4, 2, 4)
  np.testing.assert_allclose(r["first_latent"][0], 60 / 255 * 2 - 1, atol=1e-6)


def test_write_records_random_trajectories_and_pose_files(tmp_path):
  tr = T.random_trajectory(4, 8)
  doc = [{str(i): {"extrinsic": p.tolist(), "K": T.REFERENCE_K.tolist()} for i, p in enumerate(tr.c2w)}]
  (tmp_path / "poses.json").write_text(json.dumps(doc))
  fn = wr.trajectory_source("random", 6, seed=10, poses=str(tmp_path / "poses.json"))
  np.testing.assert_array_equal(fn(3).c2w, tr.c2w[:6])
  fn = wr.trajectory_source("random", 6, seed=10)
  np.testing.assert_array_equal(fn(3).c2w, T.random_trajectory(13, 6).c2w)
  with pytest.raises(ValueError, match=r"--poses: trajectories of 8 latents are shorter than --num_latents 9"):
    wr.trajectory_source("random", 9, poses=str(tmp_path / "poses.json"))
  with pytest.raises(ValueError, match=r"gives 3 latents \(9 frames\), expected 6 latents"):
    wr.trajectory_source("w-2", 6)


def test_reference_pt_records_with_a_stand_in_loader(tmp_path):
  def fake_pt(path):
    n = int(os.path.basename(path)[0])
    return {"latent": np.zeros((1, 4, 1, 2, 3)), "image_cond": np.full((1, 4, 1, 2, 3), n, np.float32),
            "prompt_embeds": np.ones((1, 7, 8)), "prompt_mask": np.ones((1, 7), np.int64),
            "byt5_text_states": np.ones((1, 3, 6)), "byt5_text_mask": np.array([[1, 1, 0]]),
            "vision_states": np.ones((1, 4, 5))}
  items = [{"latent_path": f"/prep/{n}_x.pt", "caption": f"c{n}"} for n in range(2)]
  (tmp_path / "latents.json").write_text(json.dumps(items))
  recs = list(wr.reference_records(str(tmp_path / "latents.json"), wr.trajectory_source("random", 4),
                                   load_fn=fake_pt))
  assert [r["id"] for r in recs] == ["000000_0_x", "000001_1_x"]
  assert recs[1]["first_latent"].shape == (4, 2, 3) and (recs[1]["first_latent"] == 1).all()
  assert recs[1]["text_states"].shape == (7, 8) and recs[1]["byt5_mask"].tolist() == [1, 1, 0]
  tb.prepare_example(recs[0], SPEC)
  with pytest.raises(ValueError, match=r"reference .pt misses fields \['vision_states', 'image_cond'\]"):
    wr.reference_states({k: v for k, v in fake_pt("0").items()
                         if k not in ("vision_states", "image_cond", "latent")})
  bad = dict(fake_pt("0"), prompt_embeds=np.ones((2, 7, 8)))
  with pytest.raises(ValueError, match=r"expected a 2-D array \(after dropping batch axes\), got shape \(2, 7, 8\)"):
    wr.reference_states(bad)


def test_tool_errors(tmp_path):
  import importlib.util
  if importlib.util.find_spec("torch") is None:
    with pytest.raises(ImportError, match="reading the reference's .pt files needs PyTorch"):
      wr.torch_load("/nonexistent.pt")
  with pytest.raises(ValueError, match="--encoder must be 'module:factory', got 'x'"):
    wr.load_encoder("x", {})
  with pytest.raises(ValueError, match="--encoder 'wc_jax.data:nope' cannot be loaded"):
    wr.load_encoder("wc_jax.data:nope", {})
  with pytest.raises(ValueError, match="--encoder_arg must be key=value, got 'a'"):
    wr._parse_kv(["a"])
  assert wr._parse_kv(["a=3", "b=x", "c=[1, 2]"]) == {"a": 3, "b": "x", "c": [1, 2]}
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    wr.list_images(str(tmp_path / "none"))
  with pytest.raises(ValueError, match="list_images: no images"):
    wr.list_images(str(tmp_path))
  folder = _image_folder(tmp_path, captions=None)
  with pytest.raises(FileNotFoundError, match="no caption for im0.png"):
    wr.list_images(str(folder))
  (folder / "captions.jsonl").write_text('{"image_path": "gone.png", "caption": "x"}\n')
  with pytest.raises(FileNotFoundError, match="captions entry 0: image .*gone.png not found"):
    wr.list_images(str(folder))
  (folder / "captions.jsonl").write_text('{"caption": "x"}\n')
  with pytest.raises(ValueError, match="captions entry 0 must have 'image_path' and 'caption'"):
    wr.list_images(str(folder))
  enc = lambda image, prompt: {"text_states": np.zeros((1, 8))}  # noqa: E731
  with pytest.raises(ValueError, match=r"the encoder's output for .* misses \['text_mask'"):
    next(wr.image_records([(str(folder / "im0.png"), "x")], enc, lambda i: None))
  with pytest.raises(ValueError, match=r"--test_examples \(3\) must be in \[0, num_examples=3\)"):
    wr._split_counts(3, 3)
  with pytest.raises(SystemExit):
    wr.main(["synthetic", "--name", "x"])            # --out is required
