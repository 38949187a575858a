"""The grain input pipeline: records -> fixed-shape, batched trajectory examples.

Deterministic and resumable by construction: a grain `MapDataset` over a
random-access source (a TFDS array_record split, or the synthetic world
rendered on the fly). The order is a function of (seed, epoch) only: each
epoch is a fresh permutation of the whole source, the epochs are concatenated
into one global stream, and process p of P takes stream positions p, p+P,
p+2P, ... So the P shards are disjoint and together cover every (epoch,
example) exactly once, whatever P is. The iterator state is a small dict
(`{"next_index": k}`); restoring it gives the same next batches.

Per element the pipeline pads or trims the conditioning tokens to the
configured lengths (with masks), keeps the first `num_latents` latents of the
trajectory (and their 4T-3 frames when the record has video), and casts to
the dtypes the model takes. Batches are dicts of NumPy arrays with a leading
per-process batch axis.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import grain
import numpy as np

from wc_jax.data.trajectories import FRAMES_PER_LATENT


def _as_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _states(x) -> np.ndarray:
  """Stored states -> float32 (bfloat16 records store uint16 bit patterns)."""
  x = np.asarray(x)
  if x.dtype == np.uint16:
    import ml_dtypes
    x = x.view(ml_dtypes.bfloat16)
  return x.astype(np.float32)


def _fit(x: np.ndarray, mask: np.ndarray | None, length: int):
  """Pads with zeros / trims the token axis to `length`; returns (states, mask)."""
  n = x.shape[0]
  mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  if n >= length:
    return x[:length], mask[:length]
  pad = np.zeros((length - n,) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad]), np.concatenate([mask, np.zeros(length - n, bool)])


@dataclasses.dataclass(frozen=True)
class ExampleTransform(grain.transforms.Map):
  """Record -> model-ready example with fixed shapes.

  Output keys: id, prompt (str); text_states [text_tokens,Dt] f32 and
  text_mask [text_tokens] bool; byt5_states/byt5_mask likewise; vision_states
  [vision_tokens,Dv] f32 and vision_mask; first_latent [C,h,w] f32;
  actions [T] i32; w2c [T,4,4] f32; intrinsics [T,3,3] f32; and, when the
  record has video, frames [4T-3,H,W,3] uint8, depth [4T-3,H,W] f32,
  frame_w2c [4T-3,4,4] f32.
  """
  num_latents: int
  text_tokens: int
  byt5_tokens: int
  vision_tokens: int
  pose_dtype: Any = np.float32

  def __post_init__(self):
    for name in ("num_latents", "text_tokens", "byt5_tokens", "vision_tokens"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"ExampleTransform: {name} must be a positive integer, got {v!r}")

  def map(self, record: Mapping) -> dict:
    t = self.num_latents
    rid = _as_str(record["id"])
    acts = np.asarray(record["actions"])
    if acts.shape[0] < t:
      raise ValueError(f"record {rid!r} has {acts.shape[0]} latents, the pipeline needs "
                       f"num_latents={t}")
    out = {"id": rid, "prompt": _as_str(record["prompt"])}
    out["text_states"], out["text_mask"] = _fit(_states(record["text_states"]),
                                                record["text_mask"], self.text_tokens)
    out["byt5_states"], out["byt5_mask"] = _fit(_states(record["byt5_states"]),
                                                record["byt5_mask"], self.byt5_tokens)
    out["vision_states"], out["vision_mask"] = _fit(_states(record["vision_states"]), None,
                                                    self.vision_tokens)
    out["first_latent"] = np.asarray(record["first_latent"], np.float32)
    out["actions"] = acts[:t].astype(np.int32)
    out["w2c"] = np.asarray(record["w2c"])[:t].astype(self.pose_dtype)
    out["intrinsics"] = np.asarray(record["intrinsics"])[:t].astype(np.float32)
    if "frames" in record:
      f = FRAMES_PER_LATENT * t - 3
      out["frames"] = np.asarray(record["frames"])[:f]
      out["depth"] = np.asarray(record["depth"])[:f].astype(np.float32)
      out["frame_w2c"] = np.asarray(record["frame_w2c"])[:f].astype(self.pose_dtype)
    return out


def _collate(items):
  """Stacks a list of example dicts; strings become a list."""
  out = {}
  for key in items[0]:
    vals = [it[key] for it in items]
    if isinstance(vals[0], str):
      out[key] = vals
    else:
      shapes = {np.shape(v) for v in vals}
      if len(shapes) != 1:
        raise ValueError(f"cannot batch {key!r}: examples have shapes {sorted(shapes)} "
                         f"(records of different sizes; e.g. first latents of another resolution)")
      out[key] = np.stack(vals)
  return out


def process_shard() -> tuple[int, int]:
  """(index, count) of this JAX process: the default per-process shard."""
  import jax
  return jax.process_index(), jax.process_count()


def make_dataset(source, *, batch_size: int, transform: grain.transforms.Map | None = None,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 shard_index: int | None = None, shard_count: int | None = None,
                 drop_remainder: bool = True) -> grain.MapDataset:
  """The per-process batched dataset (random access; `iter()` it or call `make_iterator`).

  Args:
    source: random-access records (`len` and `[i]`), e.g. `tfds_builder.open_split`
      or `synthetic_world.SyntheticRecords`.
    batch_size: examples per batch on this process.
    transform: per-record map (usually `ExampleTransform`); None keeps records.
    seed: order seed; epoch e uses permutation seed + e.
    shuffle: permute each epoch (else source order).
    num_epochs: None repeats forever.
    shard_index, shard_count: this process's shard (default: JAX process index
      and count).
    drop_remainder: drop the partial last batch; with a finite stream the
      stream is also cut to a multiple of shard_count * batch_size, so every
      process sees the same number of full batches.
  """
  n = len(source)
  if n < 1:
    raise ValueError("make_dataset: the source is empty")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"make_dataset: batch_size must be a positive integer, got {batch_size!r}")
  if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer)) or num_epochs < 1):
    raise ValueError(f"make_dataset: num_epochs must be None or a positive integer, got "
                     f"{num_epochs!r}")
  if (shard_index is None) != (shard_count is None):
    raise ValueError("make_dataset: pass both shard_index and shard_count, or neither")
  if shard_index is None:
    shard_index, shard_count = process_shard()
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"make_dataset: need 0 <= shard_index < shard_count, got shard_index="
                     f"{shard_index}, shard_count={shard_count}")
  if not 0 <= seed < 2 ** 32:
    raise ValueError(f"make_dataset: seed must be in [0, 2**32), got {seed}")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if num_epochs is not None:
    total = len(ds)
    if drop_remainder:
      total -= total % (shard_count * batch_size)
      if total == 0:
        raise ValueError(f"make_dataset: {n} examples x {num_epochs} epochs do not fill one "
                         f"batch of {batch_size} on each of {shard_count} processes")
    ds = ds[:total]
  ds = ds[shard_index::shard_count]
  if transform is not None:
    ds = ds.map(transform)
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_collate)


def make_iterator(dataset: grain.MapDataset, *, worker_count: int = 0, read_threads: int = 0,
                  prefetch: int = 2):
  """A checkpointable iterator (`get_state` / `set_state`) over `make_dataset`'s output.

  worker_count > 0 decodes/renders in that many processes (grain mp_prefetch; JAX in them
  is CPU-only, so that they never touch the accelerator);
  read_threads > 0 prefetches batches in threads. Neither changes the order.
  """
  if read_threads:
    it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                      prefetch_buffer_size=prefetch))
  else:
    it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if worker_count:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; outside `app.run` (notebooks, tests) use the defaults.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                              worker_init_fn=_cpu_only_worker)
  return iter(it_ds)


def _cpu_only_worker(index: int, count: int) -> None:
  """Data workers use JAX's CPU backend only: the accelerator belongs to the trainer."""
  del index, count
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.config.update("jax_platforms", "cpu")


def save_state(iterator, path: str) -> None:
  """Writes the iterator state as JSON (one file per process, next to the model checkpoint).

  With Orbax, `grain.checkpoint.CheckpointSave(iterator)` does the same inside a
  CheckpointManager.
  """
  from etils import epath
  state = json.dumps(iterator.get_state(), default=json_default)
  if "://" in str(path):      # gs://...: an object is written whole (no partial file to replace)
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(state)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(state)
  os.replace(tmp, path)


def load_state(iterator, path: str) -> None:
  """Restores an iterator saved with `save_state`; the next batch is the one after the save."""
  from etils import epath
  p = epath.Path(path)        # local or gs://
  if not p.is_file():
    raise FileNotFoundError(f"load_state: no iterator state at {path}")
  iterator.set_state(json.loads(p.read_text()))


def json_default(x):
  """`default=` for json.dump of grain iterator states (NumPy ints, bytes)."""
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, bytes):
    return x.decode("utf-8")
  raise TypeError(f"iterator state holds a {type(x).__name__}, which JSON cannot store")


SOURCES = ("synthetic", "tfds")


def make_source(cfg, model_cfg):
  """The record source a config's `data` section names (see docs/data.md).

  "tfds": the split at `tfds_builder.dataset_dir(data_dir, name)`; "synthetic":
  the synthetic world rendered on demand with the model's dimensions.
  """
  if cfg.source == "tfds":
    from wc_jax.data import tfds_builder
    if not cfg.data_dir or not cfg.name:
      raise ValueError("data.source='tfds' needs data.data_dir and data.name")
    return tfds_builder.open_split(tfds_builder.dataset_dir(cfg.data_dir, cfg.name), cfg.split)
  if cfg.source == "synthetic":
    from wc_jax.data import synthetic_world, tfds_builder
    spec = tfds_builder.RecordSpec.from_model_config(model_cfg, with_video=True)
    syn = synthetic_world.SyntheticConfig(
        num_latents=cfg.num_latents, text_tokens=cfg.text_tokens, byt5_tokens=cfg.byt5_tokens,
        vision_tokens=cfg.vision_tokens, **dict(cfg.synthetic))
    return synthetic_world.SyntheticRecords(syn, spec)
  raise ValueError(f"data.source must be one of {SOURCES}, got {cfg.source!r}")


def from_config(cfg, source, *, shard_index: int | None = None,
                shard_count: int | None = None) -> grain.MapDataset:
  """`make_dataset` from a config's `data` section (see docs/data.md)."""
  count = shard_count if shard_count is not None else process_shard()[1]
  if cfg.batch_size % count:
    raise ValueError(f"data.batch_size ({cfg.batch_size}) is global and must divide over "
                     f"{count} processes")
  transform = ExampleTransform(num_latents=cfg.num_latents, text_tokens=cfg.text_tokens,
                               byt5_tokens=cfg.byt5_tokens, vision_tokens=cfg.vision_tokens)
  return make_dataset(source, batch_size=cfg.batch_size // count, transform=transform,
                      seed=cfg.seed, shuffle=cfg.shuffle,
                      num_epochs=None if cfg.num_epochs in (None, 0) else cfg.num_epochs,
                      shard_index=shard_index, shard_count=shard_count)

