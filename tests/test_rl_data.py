"""The trainer's data sources: TFDS records and the synthetic world through the grain pipeline
into `Trajectory`s, each process reading its own shard, the step's [T, ...] arrays assembled
over the mesh, and the iterator state through Orbax checkpoints (resumable with another process
count)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from wc_jax.data import pipeline as pl
from wc_jax.data import synthetic_world as sw
from wc_jax.data import tfds_builder as tb
from wc_jax.data import trajectories as T
from wc_jax.models.worldplay.config import from_config
from wc_jax.rl import checkpoint as ckpt_lib
from wc_jax.rl import data_source as ds

N = 6            # records
LATENTS = 8      # micro config: 4 latents per clip x max_clip 2


def micro_config(source="synthetic_latents", path=""):
  cfg = load_config("tiny")
  cfg.rl.max_clip = 2
  cfg.checkpoint.async_save = False
  cfg.data.source = source
  cfg.data.path = path
  return cfg


def _record(i, spec):
  rng = np.random.default_rng(i)
  tr = T.random_trajectory(i, LATENTS + i % 2)           # some records are longer than needed
  return dict(id=f"rec{i:02d}", prompt=f"prompt {i}",
              text_states=rng.standard_normal((10, spec.text_dim)), text_mask=np.arange(10) < 7,
              byt5_states=rng.standard_normal((6, spec.byt5_dim)), byt5_mask=np.arange(6) < 2,
              vision_states=rng.standard_normal((3, spec.vision_dim)),       # fewer than text.vision_tokens=5
              first_latent=rng.standard_normal((spec.latent_channels, 4, 6)),
              actions=tr.actions, motions=tr.motions, w2c=tr.w2c, intrinsics=tr.intrinsics)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  spec = tb.RecordSpec.from_model_config(load_config("tiny").model)
  recs = {f"rec{i:02d}": _record(i, spec) for i in range(N)}
  path = tb.write_dataset(str(tmp_path_factory.mktemp("records")), "rl", spec,
                          {"train": lambda: iter(recs.values())})
  return path, recs


def _stream_ids(path, cfg, n):
  """The pipeline's global stream order (one process) for the config's seed."""
  d = pl.make_dataset(tb.open_split(path), batch_size=1, seed=cfg.data.seed, shuffle=cfg.data.shuffle,
                      shard_index=0, shard_count=1)
  it = pl.make_iterator(d)
  return [pl._as_str(next(it)["id"][0]) for _ in range(n)]


def _data(cfg):
  return ds.make_data(cfg, from_config(cfg.model))


# ----------------------------------------------------------------------------- records

def test_records_become_trajectories_in_stream_order(records):
  path, recs = records
  cfg = micro_config("records", path)
  src = _data(cfg)
  got = [next(src) for _ in range(N + 2)]                 # past one epoch: the stream repeats
  assert [t.id for t in got] == _stream_ids(path, cfg, N + 2)
  assert sorted(t.id for t in got[:N]) == sorted(recs)
  t, rec = got[0], recs[got[0].id]
  assert isinstance(t, ds.RecordExample)
  assert t.text_states.shape == (1, 12, 32) and t.text_mask.dtype == np.int32
  np.testing.assert_allclose(t.text_states[0, :10], rec["text_states"], rtol=1e-6)
  np.testing.assert_array_equal(t.text_mask[0], np.arange(12) < 7)
  assert t.byt5_states.shape == (1, 6, 24) and t.byt5_mask[0].tolist() == [1, 1, 0, 0, 0, 0]
  assert t.vision_states.shape == (1, 5, 40) and t.vision_mask[0].tolist() == [1, 1, 1, 0, 0]
  np.testing.assert_allclose(t.first_latent, rec["first_latent"], rtol=1e-6)
  np.testing.assert_array_equal(t.actions, rec["actions"][:LATENTS].astype(np.float32))
  assert t.actions.dtype == np.float32 and t.w2c.shape == (LATENTS, 4, 4) and t.w2c.dtype == np.float32
  np.testing.assert_allclose(t.w2c, rec["w2c"][:LATENTS], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(t.Ks, rec["intrinsics"][:LATENTS])


def test_padded_vision_tokens_are_invisible_to_the_model(records):
  """The trainer hands the records' vision mask to encode_text: a record padded from 3 to 5
  vision tokens gives the same valid conditioning tokens as its 3 tokens alone."""
  import dataclasses
  from flax import nnx
  from wc_jax.models.worldplay.model import WorldPlayDiT, functional
  from wc_jax.rl.trainer import Trainer
  cfg = micro_config("records", records[0])
  t = next(_data(cfg))
  assert t.vision_mask[0].tolist() == [1, 1, 1, 0, 0]
  tr = Trainer.__new__(Trainer)           # only its text encoding, no train state
  tr.apply, params = functional(WorldPlayDiT(from_config(cfg.model), rngs=nnx.Rngs(0)))
  padded = tr._encode_text(params, t)
  alone = tr._encode_text(params, dataclasses.replace(t, vision_states=t.vision_states[:, :3], vision_mask=None))
  valid = 3 + 2 + 7                       # vision + ByT5 + text tokens
  assert np.asarray(padded.mask).sum() == np.asarray(alone.mask).sum() == valid
  np.testing.assert_allclose(np.asarray(padded.tokens)[:, :valid], np.asarray(alone.tokens)[:, :valid],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(padded.tokens)[:, valid:], 0)
  unmasked = tr._encode_text(params, dataclasses.replace(t, vision_mask=None))
  assert np.asarray(unmasked.mask).sum() == valid + 2      # without the mask, padding would be attended


def test_state_goes_through_orbax_and_resumes_the_stream(records, tmp_path):
  path, _ = records
  cfg = micro_config("records", path)
  ids = _stream_ids(path, cfg, 5)
  src = _data(cfg)
  assert [next(src).id for _ in range(2)] == ids[:2]
  state = {"w": jnp.arange(3.0)}
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", cfg)
  ckpt.save(2, state, src)
  ckpt.wait()
  assert src.get_state()["consumed"] == 2 and src.get_state()["source"] == "records"
  fresh = _data(cfg)
  restored, next_step = ckpt_lib.Checkpointer(tmp_path / "ckpt", cfg).restore_latest(state, fresh)
  assert next_step == 3
  assert fresh.get_state() == src.get_state()              # restored, not yet read
  assert [next(fresh).id for _ in range(3)] == ids[2:5]
  # a process-count change keeps the global position (grain's plain {"next_index"} state)
  other = _data(cfg)
  other.set_state({"source": "records", "consumed": 3, "process_count": 2, "round_state": {"next_index": 1}})
  assert next(other).id == ids[3]


def _shards(path, cfg, count=2):
  spec = (int(cfg.model.latent_channels), 4, 6)
  out = []
  for p in range(count):
    d = pl.make_dataset(tb.open_split(path), batch_size=1, transform=pl.ExampleTransform(LATENTS, 12, 6, 5),
                        seed=cfg.data.seed, shard_index=p, shard_count=count)
    out.append(ds.PipelineTrajectories(d, source="records", latent_shape=spec, process_index=p, process_count=count))
  return out


def test_each_process_reads_only_its_own_shard(records):
  """Two 'processes' in one: with T = 2 each reads one trajectory per step from its own shard
  (positions p, p+2, ...); every step consumes global positions 2k, 2k+1 as one process would;
  the state is the same on both and resumes with 2 or with 1 process."""
  path, _ = records
  cfg = micro_config("records", path)
  ids = _stream_ids(path, cfg, 10)

  def steps(srcs, count):
    return [[s.local_examples(1)[0].id for s in srcs] for _ in range(count)]

  srcs = _shards(path, cfg)
  assert steps(srcs, 2) == [ids[0:2], ids[2:4]]           # process p: stream positions p, p + 2, ...
  assert [s._it.get_state() for s in srcs] == [{"next_index": 2}] * 2
  states = [s.get_state() for s in srcs]
  assert states[0] == states[1] == {"source": "records", "consumed": 4, "process_count": 2,
                                    "iterator": {"next_index": 2}}
  again = _shards(path, cfg)
  for s, st in zip(again, states):
    s.set_state(json.loads(json.dumps(st)))
  assert steps(again, 2) == [ids[4:6], ids[6:8]]
  one = _data(cfg)                                          # the same position on one process
  one.set_state(states[0])
  assert [t.id for t in one.local_examples(2)] == ids[4:6]
  assert one.get_state()["iterator"] == {"next_index": 6}
  odd = _shards(path, cfg)[0]                               # 3 positions cannot split over 2 processes
  with pytest.raises(ValueError, match="at global stream position 3, which 2 processes cannot split evenly"):
    odd.set_state({"source": "records", "consumed": 3, "process_count": 1, "iterator": {"next_index": 3}})


def test_a_finite_stream_leaves_the_state_of_the_last_whole_step(records):
  path, _ = records
  cfg = micro_config("records", path)
  cfg.data.num_epochs = 1
  src = _data(cfg)
  src.local_examples(4)
  with pytest.raises(StopIteration):
    src.local_examples(4)                                   # 2 left: the step is not taken
  assert src.get_state()["consumed"] == 4 and src.get_state()["iterator"] == {"next_index": 4}
  assert len(src.local_examples(2)) == 2


def test_step_arrays_are_assembled_over_the_data_axes(records):
  """The step's [T, ...] arrays from the rows a process reads: T = 2 on data=2 x fsdp=4 splits
  the trajectory axis over `data`; T = 8 over data and fsdp; T = 3 on 2 processes is refused."""
  import jax
  from wc_jax import sharding
  path, _ = records
  cfg = micro_config("records", path)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  shard, how = ds.trajectory_sharding(mesh, 2)
  assert how == "trajectory axis over the mesh axes ('data',) (2-way)"
  assert ds.process_rows(shard, 2) == {0: (0, 1)}
  local = _data(cfg).local_examples(2)
  arrays = ds.assemble(local, shard, 2)
  assert arrays["text_states"].shape == (2, 1, 12, 32) and arrays["first_latent"].sharding == shard
  assert {tuple(s.index[0].indices(2)) for s in arrays["w2c"].addressable_shards} == {(0, 1, 1), (1, 2, 1)}
  for t, ex in enumerate(local):
    np.testing.assert_array_equal(np.asarray(arrays["text_states"][t]), ex.text_states)
    np.testing.assert_array_equal(np.asarray(arrays["actions"][t]), ex.actions)
    assert ds._decode_id(np.asarray(arrays["id"][t])) == ex.id
  assert ds.trajectory_sharding(mesh, 8)[1] == "trajectory axis over the mesh axes ('data', 'fsdp') (8-way)"
  assert ds.trajectory_sharding(mesh, 1)[1] == "trajectory axis over the mesh axes () (1-way)"
  with pytest.raises(ValueError, match=r"rl.trajectories_per_step=3 must be a positive multiple of the process "
                                       r"count 2: .* \(set --config.rl.trajectories_per_step=4\)"):
    ds.trajectory_sharding(mesh, 3, process_count=2)
  # one process: the step's examples are the stream's, as read
  step = ds.next_trajectories(_data(cfg), 2, mesh)
  assert [e.id for e in step.examples] == step.local_ids == _stream_ids(path, cfg, 2) and step.arrays is None
  assert jax.process_count() == 1


def test_synthetic_stand_in_shards_by_position():
  cfg = micro_config()
  mcfg = from_config(cfg.model)
  one = ds.SyntheticTrajectories(cfg, mcfg, (4, 6), LATENTS, 0)
  stream = one.local_examples(4)
  two = [ds.SyntheticTrajectories(cfg, mcfg, (4, 6), LATENTS, 0, process_index=p, process_count=2) for p in range(2)]
  got = [[s.local_examples(1)[0] for s in two] for _ in range(2)]
  for k in range(2):
    for p in range(2):
      np.testing.assert_array_equal(got[k][p].text_states, stream[2 * k + p].text_states)
  assert two[0].get_state() == two[1].get_state() == one.get_state() == {"index": 4}


def test_a_finite_stream_ends_the_run_with_a_checkpoint(records, tmp_path):
  from wc_jax.rl.trainer import Trainer
  path, _ = records
  cfg = micro_config("records", path)
  cfg.data.num_epochs = 1
  cfg.checkpoint.every = 4
  cfg.logging.progress = False
  tr = Trainer(cfg, str(tmp_path))

  def fake_step(step):          # the data part of a step; the model part is tested in test_rl.py
    t = next(tr.data)
    return {"step": step, "clip": 1, "loss": 0.0, "trajectory": t.id}

  tr.step = fake_step
  last = tr.run(100)
  assert last["step"] == N
  assert tr.ckpt.latest_step() == N                          # saved on exhaustion (6 % 4 != 0)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert sorted(l["trajectory"] for l in lines) == sorted(f"rec{i:02d}" for i in range(N))


# ----------------------------------------------------------------------------- synthetic world

def test_synthetic_world_renders_trajectories_at_the_latent_grid():
  cfg = micro_config("synthetic_world")
  cfg.data.shuffle = False
  cfg.data.synthetic.num_examples = 3
  t = next(_data(cfg))
  spec = tb.RecordSpec.from_model_config(cfg.model, with_video=True)
  rec = sw.SyntheticRecords(sw.SyntheticConfig(num_examples=3, num_latents=LATENTS, height=64, width=96), spec)[0]
  assert t.id == rec["id"] == "scene0000_traj000000"
  assert t.first_latent.shape == (4, 4, 6)                    # 64x96 frames / 16 = the 4x6 latent grid
  np.testing.assert_allclose(t.first_latent, rec["first_latent"], rtol=1e-6)
  np.testing.assert_array_equal(t.actions, rec["actions"].astype(np.float32))
  np.testing.assert_allclose(t.w2c, rec["w2c"], rtol=1e-6, atol=1e-7)


def test_synthetic_world_first_latent_from_the_vae():
  from wc_jax.models.vae import encode, scale_latents
  from wc_jax.rl.components import build_vae
  cfg = micro_config("synthetic_world")
  cfg.data.shuffle = False
  cfg.data.synthetic.num_examples = 1
  cfg.data.first_latent = "vae"
  t = next(_data(cfg))
  spec = tb.RecordSpec.from_model_config(cfg.model, with_video=True)
  frame = sw.SyntheticRecords(sw.SyntheticConfig(num_examples=1, num_latents=LATENTS, height=64, width=96),
                              spec)[0]["frames"][0]
  vae = build_vae(cfg.vae, 4)
  video = (frame.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]
  want = np.asarray(scale_latents(vae.config, encode(vae, video).mode()))[0, :, 0]
  assert t.first_latent.shape == (4, 4, 6)
  np.testing.assert_allclose(t.first_latent, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- defaults and errors

def test_default_source_is_the_synthetic_stand_in():
  from wc_jax.rl.trainer import SyntheticTrajectories
  cfg = micro_config()
  assert isinstance(_data(cfg), SyntheticTrajectories)
  del cfg.data                                               # configs written before the section
  src = _data(cfg)
  assert isinstance(src, ds.SyntheticTrajectories) and next(src).actions.shape == (LATENTS,)


@pytest.mark.parametrize("change, error, message", [
    (dict(source="tfds"), ValueError,
     r"data.source must be one of \('synthetic_latents', 'records', 'synthetic_world'\), got 'tfds'"),
    (dict(source="records"), ValueError, r"data.source='records' needs data.path"),
    (dict(source="records", path="/nonexistent/wc"), FileNotFoundError, "open_split: no TFDS dataset at /nonexistent/wc"),
    (dict(source="synthetic_world", first_latent="clip"), ValueError,
     r"data.first_latent must be one of \('pooled', 'vae'\), got 'clip'"),
    (dict(source="synthetic_world", first_latent="vae", worker_count=2), ValueError,
     "data.first_latent='vae' runs the VAE in the trainer's process; set data.worker_count=0"),
    (dict(source="synthetic_world", synthetic=dict(height=48)), ValueError,
     r"data.synthetic.height=48 does not give the model's latent grid: sampling.latent_height=4 x VAE factor 16 = 64"),
])
def test_bad_data_settings_are_named(change, error, message):
  cfg = micro_config()
  for k, v in change.items():
    if isinstance(v, dict):
      cfg.data[k].update(v)
    else:
      cfg.data[k] = v
  with pytest.raises(error, match=message):
    _data(cfg)


def test_records_that_do_not_fit_the_model_are_refused(records):
  path, _ = records
  cfg = micro_config("records", path)
  cfg.model.text_dim = 16
  with pytest.raises(ValueError, match=r"the records at .* do not fit the model \(records vs model\): "
                                       r"\{'text_dim': \(32, 16\)\}"):
    _data(cfg)
  cfg = micro_config("records", path)
  cfg.sampling.latent_width = 5
  with pytest.raises(ValueError, match=r"record 'rec\d\d': first_latent has shape \(4, 4, 6\), the model needs "
                                       r"\[4, 4, 5\]"):
    next(_data(cfg))
  cfg = micro_config("records", path)
  cfg.rl.max_clip = 3
  with pytest.raises(ValueError, match=r"record 'rec\d\d' has (8|9) latents, the pipeline needs num_latents=12"):
    next(_data(cfg))


def test_a_state_from_another_source_is_refused(records):
  path, _ = records
  cfg = micro_config("records", path)
  src = _data(cfg)
  with pytest.raises(ValueError, match=r"data state \{'index': 3\} was not written by a pipeline source "
                                       r"\(data.source is now 'records'; was it changed\?\)"):
    src.set_state({"index": 3})
  with pytest.raises(ValueError, match="data state was written for data.source='synthetic_world', this run reads "
                                       "data.source='records'"):
    src.set_state({"source": "synthetic_world", "consumed": 1, "process_count": 1, "round_state": {"next_index": 1}})
  workers = {"next_index_in_cycle": 0, "iterators_in_use_states": [{"next_index": 1}]}
  with pytest.raises(ValueError, match="written by 2 processes with grain worker processes .* it can only resume "
                                       "with 2 processes, this run has 1"):
    src.set_state({"source": "records", "consumed": 1, "process_count": 2, "round_state": workers})
  with pytest.raises(ValueError, match=r"was not written by data.source='synthetic_latents' \(was data.source "
                                       r"changed\?\)"):
    _data(micro_config()).set_state(src.get_state())
