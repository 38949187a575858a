"""The grain pipeline: determinism, resumable iterator state, disjoint covering per-process
shards, fixed-shape examples, and the path from TFDS records to batches."""
import numpy as np
import pytest

from wc_jax.data import pipeline as pl
from wc_jax.data import synthetic_world as sw
from wc_jax.data import tfds_builder as tb
from wc_jax.data import trajectories as T

N = 10


def _record(i, latents=6, text=5):
  return dict(id=f"r{i}", prompt=f"p{i}", text_states=np.full((text, 3), i, np.float32),
              text_mask=np.arange(text) < 3, byt5_states=np.full((2, 2), i, np.float32),
              byt5_mask=np.array([True, False]), vision_states=np.full((4, 2), i, np.float32),
              first_latent=np.full((2, 1, 1), i, np.float32),
              actions=np.arange(latents, dtype=np.int32) + i, w2c=np.tile(np.eye(4), (latents, 1, 1)),
              intrinsics=np.tile(np.eye(3), (latents, 1, 1)))


SOURCE = [_record(i) for i in range(N)]
TRANSFORM = pl.ExampleTransform(num_latents=4, text_tokens=6, byt5_tokens=2, vision_tokens=3)


def _ids(batches):
  return [i for b in batches for i in b["id"]]


def _dataset(**kw):
  kw = {"batch_size": 2, "transform": TRANSFORM, "shard_index": 0, "shard_count": 1, **kw}
  return pl.make_dataset(SOURCE, **kw)


def test_same_seed_same_order_new_epoch_new_order():
  a = _ids(pl.make_iterator(_dataset(seed=3, num_epochs=2)))
  b = _ids(pl.make_iterator(_dataset(seed=3, num_epochs=2)))
  c = _ids(pl.make_iterator(_dataset(seed=4, num_epochs=2)))
  assert a == b and a != c
  assert sorted(a[:N]) == sorted(a[N:]) == sorted(f"r{i}" for i in range(N))   # whole epochs
  assert a[:N] != a[N:]                                                        # reshuffled
  assert _ids(pl.make_iterator(_dataset(shuffle=False, num_epochs=1))) == [f"r{i}" for i in range(N)]


def test_resume_from_iterator_state_gives_the_same_next_batches(tmp_path):
  ds = _dataset(seed=7)                                   # infinite stream
  it = pl.make_iterator(ds)
  for _ in range(3):
    next(it)
  pl.save_state(it, str(tmp_path / "state" / "data_p0.json"))
  want = [next(it) for _ in range(8)]
  fresh = pl.make_iterator(_dataset(seed=7))
  pl.load_state(fresh, str(tmp_path / "state" / "data_p0.json"))
  got = [next(fresh) for _ in range(8)]
  assert _ids(got) == _ids(want)
  for g, w in zip(got, want):
    for key in g:
      if key not in ("id", "prompt"):
        np.testing.assert_array_equal(g[key], w[key])
  with pytest.raises(FileNotFoundError, match="load_state: no iterator state at"):
    pl.load_state(fresh, str(tmp_path / "missing.json"))


def test_resume_with_prefetch_threads():
  ds = _dataset(seed=1, num_epochs=3)
  it = pl.make_iterator(ds, read_threads=2)
  head = [next(it) for _ in range(4)]
  state = it.get_state()
  tail = _ids(it)
  again = pl.make_iterator(ds, read_threads=2)
  again.set_state(state)
  assert _ids(again) == tail
  assert _ids(head) + tail == _ids(pl.make_iterator(ds))


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_process_shards_are_disjoint_and_cover_the_stream(count):
  epochs = 3
  shards = [_ids(pl.make_iterator(_dataset(batch_size=1, seed=5, num_epochs=epochs,
                                           shard_index=p, shard_count=count, drop_remainder=False)))
            for p in range(count)]
  # stream positions p, p+P, ...: interleaving the shards rebuilds the single-process stream
  single = _ids(pl.make_iterator(_dataset(batch_size=1, seed=5, num_epochs=epochs,
                                          drop_remainder=False)))
  rebuilt = [shards[i % count][i // count] for i in range(len(single))]
  assert rebuilt == single
  assert sum(map(len, shards)) == N * epochs
  for e in range(epochs):
    assert sorted(single[e * N:(e + 1) * N]) == sorted(f"r{i}" for i in range(N))


def test_drop_remainder_gives_every_process_the_same_number_of_full_batches():
  lens = [len(_ids(pl.make_iterator(_dataset(batch_size=2, num_epochs=1, shard_index=p,
                                             shard_count=3)))) for p in range(3)]
  assert lens == [2, 2, 2]          # 10 examples -> 6 used, 2 per process
  all_ids = [i for p in range(3) for i in _ids(pl.make_iterator(
      _dataset(batch_size=2, num_epochs=1, shard_index=p, shard_count=3)))]
  assert len(set(all_ids)) == 6


def test_example_transform_pads_trims_and_windows():
  b = next(pl.make_iterator(_dataset(shuffle=False, num_epochs=1, batch_size=3)))
  assert b["id"] == ["r0", "r1", "r2"] and b["prompt"] == ["p0", "p1", "p2"]
  assert b["text_states"].shape == (3, 6, 3) and b["text_states"].dtype == np.float32
  np.testing.assert_array_equal(b["text_mask"][0], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(b["text_states"][2, :, 0], [2, 2, 2, 2, 2, 0])
  assert b["byt5_states"].shape == (3, 2, 2) and b["byt5_mask"][0].tolist() == [True, False]
  assert b["vision_states"].shape == (3, 3, 2) and b["vision_mask"].all()      # trimmed 4 -> 3
  np.testing.assert_array_equal(b["actions"][1], [1, 2, 3, 4])
  assert b["actions"].dtype == np.int32 and b["w2c"].shape == (3, 4, 4, 4)
  assert b["w2c"].dtype == np.float32 and b["intrinsics"].shape == (3, 4, 3, 3)
  assert "frames" not in b


def test_transform_bfloat16_states_and_video():
  import ml_dtypes
  rec = _record(0)
  rec["text_states"] = rec["text_states"].astype(ml_dtypes.bfloat16).view(np.uint16) + 0
  rec.update(frames=np.zeros((21, 2, 2, 3), np.uint8), depth=np.ones((21, 2, 2)),
             frame_w2c=np.tile(np.eye(4), (21, 1, 1)))
  out = TRANSFORM.map(rec)
  np.testing.assert_array_equal(out["text_states"][:5], 0.0)
  assert out["frames"].shape == (13, 2, 2, 3) and out["depth"].shape == (13, 2, 2)
  assert out["frame_w2c"].shape == (13, 4, 4) and out["frame_w2c"].dtype == np.float32


def test_tfds_records_to_batches(tmp_path):
  spec = tb.RecordSpec(8, 6, 5, 4, with_video=True)
  cfg = sw.SyntheticConfig(num_examples=4, num_latents=3, height=16, width=16, text_tokens=3,
                           byt5_tokens=2, vision_tokens=2)
  src_mem = sw.SyntheticRecords(cfg, spec)
  path = tb.write_dataset(str(tmp_path), "syn", spec,
                          {"train": lambda: (src_mem[i] for i in range(4))})
  tf = pl.ExampleTransform(num_latents=2, text_tokens=4, byt5_tokens=2, vision_tokens=2)
  disk = pl.make_iterator(pl.make_dataset(tb.open_split(path), batch_size=2, transform=tf,
                                          seed=0, num_epochs=1, shard_index=0, shard_count=1))
  batches = list(disk)
  assert len(batches) == 2
  b = batches[0]
  assert b["frames"].shape == (2, 5, 16, 16, 3) and b["first_latent"].shape == (2, 4, 1, 1)
  rec = {r["id"]: r for r in (src_mem[i] for i in range(4))}[b["id"][0]]
  np.testing.assert_array_equal(b["frames"][0], rec["frames"][:5])
  np.testing.assert_allclose(b["w2c"][0], T.random_trajectory(int(b["id"][0][-6:]), 3).w2c[:2],
                             rtol=1e-6, atol=1e-7)
  # the default shard is this JAX process (one process here)
  assert pl.process_shard() == (0, 1)


def test_from_config():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(batch_size=4, num_latents=4, text_tokens=6, byt5_tokens=2,
                                       vision_tokens=3, seed=0, shuffle=True, num_epochs=1))
  ds = pl.from_config(cfg, SOURCE, shard_index=1, shard_count=2)
  batches = list(pl.make_iterator(ds))
  assert len(batches) == 2 and batches[0]["text_states"].shape == (2, 6, 3)
  with pytest.raises(ValueError, match=r"data.batch_size \(4\) is global and must divide over 3 processes"):
    pl.from_config(cfg, SOURCE, shard_index=0, shard_count=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "make_dataset: batch_size must be a positive integer, got 0"),
    (dict(num_epochs=0), "make_dataset: num_epochs must be None or a positive integer, got 0"),
    (dict(shard_index=0, shard_count=None), "pass both shard_index and shard_count, or neither"),
    (dict(shard_index=2, shard_count=2), "need 0 <= shard_index < shard_count, got shard_index=2, shard_count=2"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*32\), got -1"),
    (dict(batch_size=4, num_epochs=1, shard_count=3), r"10 examples x 1 epochs do not fill one batch of 4 on each of 3 processes"),
])
def test_make_dataset_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _dataset(**kwargs)


def test_element_errors():
  with pytest.raises(ValueError, match="make_dataset: the source is empty"):
    pl.make_dataset([], batch_size=1, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="ExampleTransform: num_latents must be a positive integer, got 0"):
    pl.ExampleTransform(num_latents=0, text_tokens=1, byt5_tokens=1, vision_tokens=1)
  long = pl.ExampleTransform(num_latents=7, text_tokens=6, byt5_tokens=2, vision_tokens=3)
  with pytest.raises(ValueError, match="record 'r0' has 6 latents, the pipeline needs num_latents=7"):
    long.map(SOURCE[0])
  mixed = [_record(0), dict(_record(1), first_latent=np.zeros((2, 2, 2), np.float32))]
  it = pl.make_iterator(pl.make_dataset(mixed, batch_size=2, transform=TRANSFORM, shuffle=False,
                                        shard_index=0, shard_count=1))
  with pytest.raises(ValueError, match=r"cannot batch 'first_latent': examples have shapes \[\(2, 1, 1\), \(2, 2, 2\)\]"):
    next(it)


def test_worker_processes_keep_the_order_and_the_state():
  """Synthetic records rendered (and labelled with JAX, on CPU) in two worker processes."""
  spec = tb.RecordSpec(8, 6, 5, 4, with_video=True)
  src = sw.SyntheticRecords(sw.SyntheticConfig(num_examples=4, num_latents=2, height=16,
                                               width=16, text_tokens=3, byt5_tokens=2,
                                               vision_tokens=2), spec)
  tf = pl.ExampleTransform(num_latents=2, text_tokens=3, byt5_tokens=2, vision_tokens=2)
  ds = pl.make_dataset(src, batch_size=1, transform=tf, seed=2, num_epochs=2, shard_index=0,
                       shard_count=1)
  want = list(pl.make_iterator(ds))
  it = pl.make_iterator(ds, worker_count=2)
  head = [next(it) for _ in range(3)]
  state = it.get_state()
  assert _ids(head) == _ids(want[:3])
  np.testing.assert_array_equal(head[2]["frames"], want[2]["frames"])
  np.testing.assert_array_equal(head[2]["actions"], want[2]["actions"])
  again = pl.make_iterator(ds, worker_count=2)
  again.set_state(state)
  assert _ids(again) == _ids(want[3:])


def _data_config(**over):
  import ml_collections
  from conftest import load_config
  cfg = load_config("tiny")
  d = dict(source="synthetic", data_dir="", name="", split="train", batch_size=2, num_latents=2,
           text_tokens=cfg.text.text_tokens, byt5_tokens=cfg.text.byt5_tokens,
           vision_tokens=cfg.text.vision_tokens, seed=0, shuffle=True, num_epochs=0,
           worker_count=0, read_threads=0,
           synthetic=dict(num_examples=3, num_scenes=2, scene_seed=0, trajectory_seed=0,
                          height=16, width=32, supersample=1))
  d.update(over)
  return ml_collections.ConfigDict(d), cfg


def test_config_section_builds_a_synthetic_pipeline():
  data, cfg = _data_config()
  src = pl.make_source(data, cfg.model)
  b = next(pl.make_iterator(pl.from_config(data, src, shard_index=0, shard_count=1)))
  assert b["text_states"].shape == (2, cfg.text.text_tokens, cfg.model.text_dim)
  assert b["first_latent"].shape == (2, cfg.model.latent_channels, 1, 2)
  assert b["frames"].shape == (2, 5, 16, 32, 3) and b["actions"].shape == (2, 2)
  with pytest.raises(ValueError, match=r"data.source must be one of \('synthetic', 'tfds'\), got 'web'"):
    pl.make_source(_data_config(source="web")[0], cfg.model)
  with pytest.raises(ValueError, match="data.source='tfds' needs data.data_dir and data.name"):
    pl.make_source(_data_config(source="tfds")[0], cfg.model)
