"""Where the RL trainer's trajectories come from: a config's `data` section -> an iterator of
`TrainingExample` whose state is JSON, so that a resumed run continues the same stream.

`data.source`:
  synthetic_latents  seeded random conditioning and commanded camera paths; nothing is read
                     or rendered (the default; tests and the tiny demo)
  records            a TFDS array_record set (`python -m wc_jax.data.write_records`) at data.path
  synthetic_world    the procedural world of `wc_jax.data.synthetic_world`, rendered on demand;
                     the first latent is a pooled stand-in or the configured VAE's encoding

The last two run through the grain pipeline (`wc_jax.data.pipeline`). An RL step trains on
one trajectory (its G candidates are what the mesh splits), so the global stream is used one
trajectory per step: process p of P reads stream positions p, p+P, ... (its own shard, its
own I/O and rendering), and at step k the process holding position k broadcasts it to the
others. Every process trains on the same trajectory, and the stream is the same for any P.
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

  State is just the index of the next example, so it checkpoints as JSON. Every process
  computes the same stream, so it needs no sharding.
  """

  def __init__(self, cfg, mcfg, latent_hw: tuple[int, int], frames: int, seed: int):
    from wc_jax.rl.trajectories import random_trajectory
    self._cfg, self._mcfg, self._hw, self._frames, self._seed = cfg, mcfg, latent_hw, frames, seed
    self._random_trajectory = random_trajectory
    self.index = 0

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or "index" not in state:
      raise ValueError(f"the checkpoint's data state {state!r} was not written by data.source="
                       f"'synthetic_latents' (was data.source changed?)")
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self) -> TrainingExample:
    rng = np.random.default_rng([self._seed, self.index])
    self.index += 1
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
  """Trajectories from a batch-1 grain dataset of `ExampleTransform` elements, one per step.

  The dataset must already be this process's shard (`make_dataset(shard_index=p,
  shard_count=P)`). The state is `{"source", "consumed", "process_count", "round_state"}`:
  the global stream position and grain's iterator state at the start of the current round
  (the P positions read together). It is the same on every process, so Orbax may write it
  once; a run may resume with another process count when grain's state is the plain
  `{"next_index": n}` (no worker processes).
  """

  def __init__(self, dataset, *, source: str, latent_shape: tuple[int, int, int], process_index: int,
               process_count: int, worker_count: int = 0, read_threads: int = 0):
    from wc_jax.data import pipeline as pl
    self._it = pl.make_iterator(dataset, worker_count=worker_count, read_threads=read_threads)
    self.source = source
    self._latent_shape = tuple(latent_shape)
    self._p, self._n = int(process_index), int(process_count)
    self.consumed = 0
    self._round_state = None
    self._mine = None
    self._pending = None

  def get_state(self) -> dict:
    if self._pending is not None:          # restored, not read from yet
      return dict(self._pending)
    round_state = self._round_state if self.consumed % self._n else self._it.get_state()
    return {"source": self.source, "consumed": self.consumed, "process_count": self._n,
            "round_state": _jsonable(round_state)}

  def set_state(self, state: dict) -> None:
    keys = {"source", "consumed", "process_count", "round_state"}
    if not isinstance(state, dict) or not keys <= set(state):
      raise ValueError(f"the checkpoint's data state {state!r} was not written by a pipeline source "
                       f"(data.source is now {self.source!r}; was it changed?)")
    if state["source"] != self.source:
      raise ValueError(f"the checkpoint's data state was written for data.source={state['source']!r}, "
                       f"this run reads data.source={self.source!r}")
    saved_n = int(state["process_count"])
    if saved_n != self._n and set(state["round_state"]) != {"next_index"}:
      raise ValueError(f"the checkpoint's data state was written by {saved_n} processes with grain "
                       f"worker processes (state {state['round_state']}); it can only resume with "
                       f"{saved_n} processes, this run has {self._n}")
    self._pending = dict(state)

  def _restore(self, state: dict) -> None:
    k, saved_n = int(state["consumed"]), int(state["process_count"])
    offset = k % self._n
    if saved_n == self._n:
      self._it.set_state(state["round_state"])
    else:                                  # same global stream, other shards: recompute
      self._it.set_state({"next_index": k // self._n})
    self._pending = None
    self.consumed = k - offset
    if offset:                             # re-read this round's element, then skip to k
      self._read()
    self.consumed = k

  def _read(self) -> None:
    self._round_state = self._it.get_state()
    self._mine = self._arrays(next(self._it))

  def _arrays(self, batch: dict) -> dict:
    """One batch-1 pipeline element -> fixed-shape arrays (what is broadcast)."""
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
    if self._pending is not None:
      self._restore(self._pending)
    k = self.consumed
    if k % self._n == 0:                   # a new round: every process reads its next element
      self._read()                         # (StopIteration at the end of a finite stream)
    arrays = self._mine
    if self._n > 1:
      from jax.experimental import multihost_utils
      arrays = multihost_utils.broadcast_one_to_all(arrays, is_source=self._p == k % self._n)
    self.consumed = k + 1
    arrays = {key: np.asarray(v) for key, v in arrays.items()}
    rid = _decode_id(arrays.pop("id"))
    return RecordExample(**arrays, id=rid)


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
  if source == "synthetic_latents":
    return SyntheticTrajectories(cfg, mcfg, (lh, lw), num_latents, cfg.seed)
  if source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
  import jax
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
