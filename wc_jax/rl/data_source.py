"""Where the RL trainer's trajectories come from: a config's `data` section -> an iterator of
`TrainingExample` whose state is JSON, so that a resumed run continues the same stream.

`data.source`:
  synthetic_latents  seeded random conditioning and commanded camera paths; nothing is read
                     or rendered (the default; tests and the tiny demo)
  records            a TFDS array_record set (`python -m wc_jax.data.write_records`) at data.path
  synthetic_world    the procedural world of `wc_jax.data.synthetic_world`, rendered on demand;
                     the first latent is a pooled stand-in or the configured VAE's encoding

The last two run through the grain pipeline (`wc_jax.data.pipeline`). An RL step trains on
T = `rl.trajectories_per_step` trajectories. With P processes (T a multiple of P), process p
reads T/P of them from its own shard (stream positions p, p+P, ...: its own I/O, decoding and
rendering) and `next_trajectories` assembles the step's global [T, ...] arrays with
`jax.make_array_from_process_local_data`, the trajectory axis split over the processes (over
the mesh's data axes where they divide T). Every step consumes global positions kT .. kT+T-1
whatever P is; within a step the rows are in stream order when each process reads one
trajectory, and grouped by process otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from wc_jax.data.pipeline import json_default
from wc_jax.rl.rollout import TrainingExample

log = logging.getLogger("wc_jax.train")

SOURCES = ("synthetic_latents", "records", "synthetic_world")
FIRST_LATENTS = ("pooled", "vae")
_ID_BYTES = 256


@dataclasses.dataclass
class RecordExample(TrainingExample):
  """A trajectory read from records: also its vision-token mask and its record id."""
  vision_mask: np.ndarray | None = None   # [1, Lv] valid vision tokens (records may pad them)
  id: str = ""


class SyntheticTrajectories:
  """Deterministic stand-in data: random conditioning states + commanded trajectories.

  Example i is a function of (seed, i) alone. State is the global stream position (the same on
  every process), so it checkpoints as JSON and resumes with any process count; process p of P
  makes positions p, p+P, ... of it, as a pipeline shard would be read.
  """

  def __init__(self, cfg, mcfg, latent_hw: tuple[int, int], frames: int, seed: int, *, process_index: int = 0,
               process_count: int = 1):
    from wc_jax.rl.trajectories import random_trajectory
    self._cfg, self._mcfg, self._hw, self._frames, self._seed = cfg, mcfg, latent_hw, frames, seed
    self._random_trajectory = random_trajectory
    self._p, self._n = int(process_index), int(process_count)
    self.index = 0

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or "index" not in state:
      raise ValueError(f"the checkpoint's data state {state!r} was not written by data.source="
                       f"'synthetic_latents' (was data.source changed?)")
    self.index = int(state["index"])

  def local_examples(self, count: int) -> list[TrainingExample]:
    """This process's next `count` examples (positions index + j*P + p); index moves count*P."""
    out = [self._example(self.index + j * self._n + self._p) for j in range(count)]
    self.index += count * self._n
    return out

  def __iter__(self):
    return self

  def __next__(self) -> TrainingExample:
    return self.local_examples(1)[0]

  def _example(self, index: int) -> TrainingExample:
    rng = np.random.default_rng([self._seed, index])
    t, m = self._cfg.text, self._mcfg
    actions, w2c = self._random_trajectory(self._frames, rng)
    h, w = self._hw
    return TrainingExample(
        text_states=rng.standard_normal((1, t.text_tokens, m.text_dim), np.float32),
        text_mask=(np.arange(t.text_tokens) < max(1, t.text_tokens * 3 // 4))[None].astype(np.int32),
        byt5_states=rng.standard_normal((1, t.byt5_tokens, m.byt5_in_dim), np.float32),
        byt5_mask=(np.arange(t.byt5_tokens) < max(1, t.byt5_tokens // 2))[None].astype(np.int32),
        vision_states=rng.standard_normal((1, t.vision_tokens, m.vision_dim), np.float32),
        first_latent=rng.standard_normal((m.latent_channels, h, w)).astype(np.float32),
        actions=actions.astype(np.float32), w2c=w2c.astype(np.float32),
        Ks=np.tile(np.array([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]], np.float32), (self._frames, 1, 1)))


# ----------------------------------------------------------------------------- grain pipeline

def _encode_id(rid: str) -> np.ndarray:
  raw = rid.encode("utf-8")[:_ID_BYTES]
  return np.frombuffer(raw.ljust(_ID_BYTES, b"\0"), np.uint8).copy()


def _decode_id(arr: np.ndarray) -> str:
  return np.asarray(arr, np.uint8).tobytes().rstrip(b"\0").decode("utf-8", errors="ignore")


def _jsonable(state):
  """grain states are dicts of ints (NumPy ints included); Orbax stores them with json."""
  return json.loads(json.dumps(state, default=json_default))


class PipelineTrajectories:
  """Trajectories from a batch-1 grain dataset of `ExampleTransform` elements.

  The dataset must already be this process's shard (`make_dataset(shard_index=p,
  shard_count=P)`); `next()` and `local_examples` return this process's own elements only.
  The state is `{"source", "consumed", "process_count", "iterator"}`: the global stream
  position (P x the elements each process read) and grain's iterator state. The trainer reads
  in lockstep (T/P per process per step), so the state is the same on every process and Orbax
  writes it once. A run may resume with another process count when grain's state is the plain
  `{"next_index": n}` (no worker processes) and the position divides by the new count: each
  process then starts at element consumed / P' of its new shard.
  """

  def __init__(self, dataset, *, source: str, latent_shape: tuple[int, int, int], process_index: int,
               process_count: int, worker_count: int = 0, read_threads: int = 0):
    from wc_jax.data import pipeline as pl
    self._it = pl.make_iterator(dataset, worker_count=worker_count, read_threads=read_threads)
    self.source = source
    self._latent_shape = tuple(latent_shape)
    self._p, self._n = int(process_index), int(process_count)
    self.consumed = 0
    self._pending = None

  def get_state(self) -> dict:
    if self._pending is not None:          # restored, not read from yet
      return dict(self._pending)
    return {"source": self.source, "consumed": self.consumed, "process_count": self._n,
            "iterator": _jsonable(self._it.get_state())}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or not {"source", "consumed", "process_count"} <= set(state) or not (
        "iterator" in state or "round_state" in state):
      raise ValueError(f"the checkpoint's data state {state!r} was not written by a pipeline source "
                       f"(data.source is now {self.source!r}; was it changed?)")
    if state["source"] != self.source:
      raise ValueError(f"the checkpoint's data state was written for data.source={state['source']!r}, "
                       f"this run reads data.source={self.source!r}")
    k, saved_n = int(state["consumed"]), int(state["process_count"])
    # states written before the per-process feed hold "round_state": the iterator state at the
    # start of a round of P positions, exact only at a round boundary
    it_state = state.get("iterator", state.get("round_state"))
    exact = "iterator" in state or k % saved_n == 0
    plain = set(it_state) == {"next_index"}
    if not plain and (saved_n != self._n or not exact):
      raise ValueError(f"the checkpoint's data state was written by {saved_n} processes with grain "
                       f"worker processes (state {it_state}); it can only resume with "
                       f"{saved_n} processes, this run has {self._n}")
    if k % self._n:
      raise ValueError(f"the checkpoint's data state is at global stream position {k}, which {self._n} "
                       f"processes cannot split evenly (resume with a process count that divides {k})")
    self._pending = {"source": self.source, "consumed": k, "process_count": saved_n, "iterator": it_state}

  def _restore(self, state: dict) -> None:
    k, saved_n = int(state["consumed"]), int(state["process_count"])
    if saved_n == self._n and set(state["iterator"]) != {"next_index"}:
      self._it.set_state(state["iterator"])
    else:                                  # same global stream, this process's shard: recompute
      self._it.set_state({"next_index": k // self._n})
    self._pending = None
    self.consumed = k

  def local_examples(self, count: int) -> list[RecordExample]:
    """This process's next `count` elements; all or none (StopIteration at the end of a
    finite stream leaves the state where it was)."""
    if self._pending is not None:
      self._restore(self._pending)
    before = self._it.get_state()
    try:
      out = [self._example(self._arrays(next(self._it))) for _ in range(count)]
    except StopIteration:
      self._it.set_state(before)
      raise
    self.consumed += count * self._n
    return out

  @staticmethod
  def _example(arrays: dict) -> RecordExample:
    arrays = dict(arrays)
    rid = _decode_id(arrays.pop("id"))
    return RecordExample(**arrays, id=rid)

  def _arrays(self, batch: dict) -> dict:
    """One batch-1 pipeline element -> fixed-shape arrays (the id as bytes, as assembled)."""
    rid = batch["id"][0]
    first = np.asarray(batch["first_latent"][0], np.float32)
    if first.shape != self._latent_shape:
      c, h, w = self._latent_shape
      raise ValueError(f"record {rid!r}: first_latent has shape {first.shape}, the model needs "
                       f"[{c}, {h}, {w}] (model.latent_channels, sampling.latent_height, "
                       f"sampling.latent_width)")
    f32 = lambda k: np.asarray(batch[k], np.float32)
    i32 = lambda k: np.asarray(batch[k], np.int32)
    out = dict(text_states=f32("text_states"), text_mask=i32("text_mask"),
               byt5_states=f32("byt5_states"), byt5_mask=i32("byt5_mask"),
               vision_states=f32("vision_states"), vision_mask=i32("vision_mask"),
               first_latent=first, actions=f32("actions")[0], w2c=f32("w2c")[0],
               Ks=f32("intrinsics")[0], id=_encode_id(rid))
    if "frames" in batch:                  # the real continuation (records with video)
      out["real_frames"] = np.asarray(batch["frames"][0], np.uint8)
    return out

  def __iter__(self):
    return self

  def __next__(self) -> RecordExample:
    return self.local_examples(1)[0]


# ----------------------------------------------------------------------------- one step's trajectories

def check_trajectories(n_traj: int, process_count: int) -> None:
  if n_traj < 1 or n_traj % process_count:
    raise ValueError(f"rl.trajectories_per_step={n_traj} must be a positive multiple of the process count "
                     f"{process_count}: each process feeds trajectories_per_step / {process_count} of a step's "
                     f"trajectories from its own data shard (set --config.rl.trajectories_per_step="
                     f"{max(1, -(-n_traj // process_count)) * process_count})")


def process_rows(shard, n_traj: int) -> dict[int, tuple[int, ...]]:
  """process index -> the rows of a [n_traj, ...] array its devices hold under `shard`."""
  rows: dict[int, set] = {}
  for device, index in shard.devices_indices_map((n_traj,)).items():
    rows.setdefault(device.process_index, set()).update(range(n_traj)[index[0]])
  return {p: tuple(sorted(r)) for p, r in sorted(rows.items())}


def _splits_by_process(shard, n_traj: int, process_count: int) -> bool:
  """Each process holds its own n_traj / P rows, no row on two processes."""
  rows = process_rows(shard, n_traj)
  held = [r for p in range(process_count) for r in rows.get(p, ())]
  return len(rows) == process_count and sorted(held) == list(range(n_traj)) and all(
      len(r) == n_traj // process_count for r in rows.values())


def trajectory_sharding(mesh, n_traj: int, process_count: int | None = None):
  """(sharding of the step's [T, ...] arrays, how it was chosen): the leading axis over the
  mesh's ("data", "fsdp") axes as far as they divide T, if that gives each process its own
  T/P rows; otherwise over the processes alone (a mesh of the same devices grouped by process)."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  n_proc = jax.process_count() if process_count is None else process_count
  check_trajectories(n_traj, n_proc)
  axes, size = [], 1
  for a in ("data", "fsdp"):
    if mesh.shape.get(a, 1) > 1 and n_traj % (size * mesh.shape[a]) == 0:
      axes.append(a)
      size *= mesh.shape[a]
  shard = NamedSharding(mesh, PartitionSpec(tuple(axes) if axes else None))
  if _splits_by_process(shard, n_traj, n_proc):
    return shard, f"trajectory axis over the mesh axes {tuple(axes)} ({size}-way)"
  devices = sorted(mesh.devices.flat, key=lambda d: (d.process_index, d.id))
  by_process = Mesh(np.array(devices).reshape(n_proc, -1), ("process", "local"))
  return (NamedSharding(by_process, PartitionSpec("process")),
          f"trajectory axis over the {n_proc} processes (the mesh's data axes {dict(mesh.shape)} do not give "
          f"each process its own {n_traj // n_proc} of {n_traj} trajectories)")


_FIELDS = ("text_states", "text_mask", "byt5_states", "byt5_mask", "vision_states", "first_latent", "actions",
           "w2c", "Ks", "real_frames", "vision_mask")


def _fields(example: TrainingExample) -> dict:
  out = {k: np.asarray(getattr(example, k)) for k in _FIELDS if getattr(example, k, None) is not None}
  if isinstance(example, RecordExample):
    out["id"] = _encode_id(example.id)
  return out


def assemble(local: list[TrainingExample], shard, n_traj: int) -> dict:
  """This process's examples (its rows of `shard`, in row order) -> the step's global [T, ...]
  arrays (`jax.make_array_from_process_local_data`); every field, the record id as bytes."""
  import jax
  fields = [_fields(e) for e in local]
  keys = sorted(fields[0])
  if any(sorted(f) != keys for f in fields):
    raise ValueError(f"the examples of one step carry different fields: {[sorted(f) for f in fields]}")
  out = {}
  for k in keys:
    stacked = np.stack([f[k] for f in fields])
    out[k] = jax.make_array_from_process_local_data(shard, stacked, (n_traj,) + stacked.shape[1:])
  return out


@dataclasses.dataclass
class StepTrajectories:
  examples: list             # the T examples in row order, host arrays (what the trainer's rollouts read)
  local_rows: tuple          # the rows this process read from its own shard
  local_ids: list            # their record ids ("" for sources without ids)
  arrays: dict | None        # the global [T, ...] arrays (None on one process: `examples` are the data)


def _read(data, count: int) -> list:
  if hasattr(data, "local_examples"):
    return data.local_examples(count)
  return [next(data) for _ in range(count)]


def next_trajectories(data, n_traj: int, mesh=None, shard=None) -> StepTrajectories:
  """The next step's T trajectories. One process: T examples of the stream, as read. P
  processes: each reads its T/P from its own shard (`local_examples`), the global [T, ...]
  arrays are assembled over `shard` (default `trajectory_sharding(mesh, T)`), and each
  example is taken from them on device (until the rollout consumes the [T, ...] arrays
  itself, every process runs every trajectory's rollout on the whole mesh)."""
  import jax
  n_proc = jax.process_count()
  check_trajectories(n_traj, n_proc)
  if n_proc == 1:
    local = _read(data, n_traj)
    return StepTrajectories(local, tuple(range(n_traj)), [getattr(e, "id", "") for e in local], None)
  if not hasattr(data, "local_examples"):
    raise TypeError(f"a {type(data).__name__} data stream cannot feed {n_proc} processes: it needs "
                    "local_examples(count), this process's next examples of its own shard")
  if shard is None:
    shard, _ = trajectory_sharding(mesh, n_traj)
  rows = process_rows(shard, n_traj)[jax.process_index()]
  local = _read(data, len(rows))
  arrays = assemble(local, shard, n_traj)
  host = _gather(arrays, mesh if mesh is not None else shard.mesh)
  ids = host.pop("id", None)
  cls = RecordExample if ids is not None else TrainingExample
  examples = []
  for t in range(n_traj):
    one = {k: v[t] for k, v in host.items()}
    if ids is not None:
      one["id"] = _decode_id(ids[t])
    examples.append(cls(**one))
  return StepTrajectories(examples, rows, [getattr(e, "id", "") for e in local], arrays)


_REPLICATE: dict = {}


def _gather(arrays: dict, mesh) -> dict:
  """Global arrays -> NumPy on every process, through one on-device reshard to replicated
  (one compiled program per mesh and field set)."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  key = (mesh, tuple(sorted(arrays)))
  if key not in _REPLICATE:
    rep = NamedSharding(mesh, PartitionSpec())
    _REPLICATE[key] = jax.jit(lambda x: x, out_shardings={k: rep for k in arrays})
  whole = _REPLICATE[key](arrays)
  return {k: np.asarray(v) for k, v in whole.items()}


# ----------------------------------------------------------------------------- from a config

def _vae_latent_fn(cfg, latent_channels: int):
  """(frame uint8 [H,W,3] -> DiT-scale latent [C,h,w], spatial factor) from the config's VAE."""
  import jax
  from flax import nnx
  from wc_jax.models.vae import encode, scale_latents
  from wc_jax.rl.components import build_vae
  vae = build_vae(cfg.vae, latent_channels)
  graphdef, state = nnx.split(vae)

  @jax.jit
  def run(state, video):
    model = nnx.merge(graphdef, state)
    return scale_latents(model.config, encode(model, video).mode())

  def latent(frame):
    video = (np.asarray(frame, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]
    return np.asarray(run(state, video))[0, :, 0]

  return latent, int(vae.config.ffactor_spatial)


def _synthetic_source(cfg, mcfg, num_latents: int):
  from wc_jax.data import synthetic_world as sw
  from wc_jax.data import tfds_builder as tb
  d, lh, lw = cfg.data, int(cfg.sampling.latent_height), int(cfg.sampling.latent_width)
  mode = d.get("first_latent", "pooled")
  if mode not in FIRST_LATENTS:
    raise ValueError(f"data.first_latent must be one of {FIRST_LATENTS}, got {mode!r}")
  latent_fn, factor = None, sw.SyntheticConfig.vae_factor
  if mode == "vae":
    if d.get("worker_count", 0):
      raise ValueError("data.first_latent='vae' runs the VAE in the trainer's process; set "
                       "data.worker_count=0")
    latent_fn, factor = _vae_latent_fn(cfg, mcfg.latent_channels)
  syn = dict(d.synthetic)
  for key, cells in (("height", lh), ("width", lw)):
    if not syn.get(key):
      syn[key] = cells * factor
    elif syn[key] != cells * factor:
      raise ValueError(f"data.synthetic.{key}={syn[key]} does not give the model's latent grid: "
                       f"sampling.latent_{key}={cells} x VAE factor {factor} = {cells * factor} "
                       f"(or set 0 to derive it)")
  config = sw.SyntheticConfig(num_latents=num_latents, text_tokens=int(cfg.text.text_tokens),
                              byt5_tokens=int(cfg.text.byt5_tokens), vision_tokens=int(cfg.text.vision_tokens),
                              vae_factor=factor, **syn)
  spec = tb.RecordSpec.from_model_config(cfg.model, with_video=True)
  return sw.SyntheticRecords(config, spec, latent_fn=latent_fn)


def _records_source(cfg, mcfg):
  from wc_jax.data import tfds_builder as tb
  d = cfg.data
  if not d.get("path"):
    raise ValueError("data.source='records' needs data.path: a record set folder "
                     "(wc_jax.data.tfds_builder.dataset_dir(data_dir, name))")
  source = tb.open_split(d.path, d.get("split", "train"))
  spec = tb.spec_of(d.path)
  want = dict(text_dim=mcfg.text_dim, byt5_dim=mcfg.byt5_in_dim, vision_dim=mcfg.vision_dim,
              latent_channels=mcfg.latent_channels)
  bad = {k: (getattr(spec, k), v) for k, v in want.items() if getattr(spec, k) != v}
  if bad:
    raise ValueError(f"the records at {d.path} do not fit the model (records vs model): {bad}")
  return source


def make_data(cfg, mcfg):
  """The trainer's trajectory iterator for `cfg.data` (synthetic_latents when absent)."""
  d = cfg.get("data", None)
  source = d.source if d is not None else "synthetic_latents"
  lh, lw = int(cfg.sampling.latent_height), int(cfg.sampling.latent_width)
  num_latents = int(mcfg.chunk_latents) * int(cfg.rl.max_clip)
  import jax
  if source == "synthetic_latents":
    return SyntheticTrajectories(cfg, mcfg, (lh, lw), num_latents, cfg.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count())
  if source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
  from wc_jax.data import pipeline as pl
  records = _records_source(cfg, mcfg) if source == "records" else _synthetic_source(cfg, mcfg, num_latents)
  transform = pl.ExampleTransform(num_latents=num_latents, text_tokens=int(cfg.text.text_tokens),
                                  byt5_tokens=int(cfg.text.byt5_tokens),
                                  vision_tokens=int(cfg.text.vision_tokens))
  p, n = jax.process_index(), jax.process_count()
  epochs = d.get("num_epochs", 0)
  dataset = pl.make_dataset(records, batch_size=1, transform=transform, seed=int(d.get("seed", 0)),
                            shuffle=bool(d.get("shuffle", True)), num_epochs=None if epochs in (None, 0) else epochs,
                            shard_index=p, shard_count=n)
  log.info("data: %s, %d examples, process %d of %d reads positions %d, %d + %d, ...", source, len(records),
           p, n, p, p, n)
  return PipelineTrajectories(dataset, source=source, latent_shape=(int(mcfg.latent_channels), lh, lw),
                              process_index=p, process_count=n, worker_count=int(d.get("worker_count", 0)),
                              read_threads=int(d.get("read_threads", 0)))
