"""The trajectory record format and its TFDS dataset builder (array_record files).

One record is everything an RL step needs for one trajectory, precomputed so
that training never runs the text/vision encoders or the VAE encoder:

  id               str      unique example id (the TFDS key)
  prompt           str      caption
  text_states      [Lt,Dt]  Qwen2.5-VL states (float32, or bfloat16 stored as uint16 bits)
  text_mask        [Lt]     bool, valid tokens
  byt5_states      [Lb,Db]  ByT5 glyph states
  byt5_mask        [Lb]     bool
  vision_states    [Lv,Dv]  SigLIP states of the first frame
  first_latent     [C,h,w]  float32 VAE latent of the first frame
  actions          [T]      int32 81-way labels (trans * 9 + rot), actions[0] = 0
  motions          [T,6]    float64 commanded motions (trajectories.MOTION_KEYS)
  w2c              [T,4,4]  float64 per-latent world-to-camera (OpenCV axes)
  intrinsics       [T,3,3]  float32 normalised (fx/W, fy/H, 0.5, 0.5)
  with_video=True (the synthetic world, or any source with a real continuation):
  frames           [F,H,W,3] uint8 ground-truth video, F = 4T-3 (zlib)
  depth            [F,H,W]   float32 z-depth, +inf where nothing is hit (zlib)
  frame_w2c        [F,4,4]   float64 per-frame world-to-camera

Arrays are stored as raw bytes (TFDS `encoding='bytes'`): lossless for
float64 (TFDS's default float list would round poses to float32) and fast.
TFDS writes and reads array_record without TensorFlow (checked with
tensorflow-datasets 4.9.10); reading back needs only the folder
(`tfds.builder_from_directory`), not this class.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Mapping

import numpy as np

from wc_jax.data.trajectories import FRAMES_PER_LATENT, MOTION_KEYS
from wc_jax.actions import NUM_ACTIONS

STATE_DTYPES = ("float32", "bfloat16")
STATE_KEYS = ("text_states", "byt5_states", "vision_states")
VIDEO_KEYS = ("frames", "depth", "frame_w2c")
DATASET_NAME = "wc_trajectories"
VERSION = "1.0.0"


@dataclasses.dataclass(frozen=True)
class RecordSpec:
  """Feature dimensions of a record set (token counts and T may vary per example)."""
  text_dim: int
  byt5_dim: int
  vision_dim: int
  latent_channels: int
  state_dtype: str = "float32"
  with_video: bool = False

  def __post_init__(self):
    for name in ("text_dim", "byt5_dim", "vision_dim", "latent_channels"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"RecordSpec.{name} must be a positive integer, got {v!r}")
    if self.state_dtype not in STATE_DTYPES:
      raise ValueError(f"RecordSpec.state_dtype must be one of {STATE_DTYPES}, got "
                       f"{self.state_dtype!r}")

  @property
  def keys(self) -> tuple[str, ...]:
    base = ("id", "prompt", "text_states", "text_mask", "byt5_states", "byt5_mask",
            "vision_states", "first_latent", "actions", "motions", "w2c", "intrinsics")
    return base + (VIDEO_KEYS if self.with_video else ())

  @classmethod
  def from_model_config(cls, model_cfg, *, with_video: bool = False,
                        state_dtype: str = "float32") -> "RecordSpec":
    """Dimensions from a config's `model` section (text_dim, byt5_in_dim, vision_dim,
    latent_channels)."""
    return cls(text_dim=int(model_cfg.text_dim), byt5_dim=int(model_cfg.byt5_in_dim),
               vision_dim=int(model_cfg.vision_dim), latent_channels=int(model_cfg.latent_channels),
               state_dtype=state_dtype, with_video=with_video)


def _features(spec: RecordSpec):
  import tensorflow_datasets as tfds
  f = tfds.features
  sdt = np.float32 if spec.state_dtype == "float32" else np.uint16

  def t(shape, dtype, encoding="bytes"):
    return f.Tensor(shape=shape, dtype=dtype, encoding=encoding)

  feats = {
      "id": f.Text(), "prompt": f.Text(),
      "text_states": t((None, spec.text_dim), sdt), "text_mask": t((None,), np.bool_),
      "byt5_states": t((None, spec.byt5_dim), sdt), "byt5_mask": t((None,), np.bool_),
      "vision_states": t((None, spec.vision_dim), sdt),
      "first_latent": t((spec.latent_channels, None, None), np.float32),
      "actions": t((None,), np.int32), "motions": t((None, len(MOTION_KEYS)), np.float64),
      "w2c": t((None, 4, 4), np.float64), "intrinsics": t((None, 3, 3), np.float32),
  }
  if spec.with_video:
    feats.update(frames=t((None, None, None, 3), np.uint8, "zlib"),
                 depth=t((None, None, None), np.float32, "zlib"),
                 frame_w2c=t((None, 4, 4), np.float64))
  return f.FeaturesDict(feats)


# ----------------------------------------------------------------------------- validation

def _bad(key, expected, got, where):
  shape = getattr(got, "shape", None)
  dtype = getattr(got, "dtype", None)
  what = f"shape {tuple(shape)} dtype {dtype}" if shape is not None else repr(type(got).__name__)
  raise ValueError(f"record {where}: {key} must be {expected}, got {what}")


def _to_bf16_bits(x) -> np.ndarray:
  import ml_dtypes
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def prepare_example(example: Mapping, spec: RecordSpec) -> dict:
  """Checks one example against the spec and casts it to the stored dtypes.

  Raises ValueError naming the example, the field, the expected and the actual
  shape; every field of `spec.keys` is required and no other is allowed.
  """
  where = repr(example.get("id", "?")) if isinstance(example, Mapping) else "?"
  if not isinstance(example, Mapping):
    raise ValueError(f"record {where}: an example must be a dict, got {type(example).__name__}")
  missing = [k for k in spec.keys if k not in example]
  extra = [k for k in example if k not in spec.keys]
  if missing or extra:
    raise ValueError(f"record {where}: missing fields {missing}, unexpected fields {extra} "
                     f"(with_video={spec.with_video})")
  out: dict = {}
  for key in ("id", "prompt"):
    v = example[key]
    if isinstance(v, bytes):
      v = v.decode("utf-8")
    if not isinstance(v, str) or (key == "id" and not v):
      _bad(key, "a non-empty str" if key == "id" else "a str", v, where)
    out[key] = v

  def arr(key, ndim, trailing=(), integer=False):
    x = np.asarray(example[key])
    ok = x.ndim == ndim and tuple(x.shape[ndim - len(trailing):]) == tuple(trailing)
    kind_ok = np.issubdtype(x.dtype, np.integer) or x.dtype == bool if integer else \
        (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer))
    if not ok or not kind_ok:
      dims = ",".join(["?"] * (ndim - len(trailing)) + [str(d) for d in trailing])
      _bad(key, f"[{dims}] {'integer' if integer else 'numeric'}", x, where)
    return x

  def states(key, dim):
    x = arr(key, 2, (dim,))
    if x.shape[0] < 1:
      _bad(key, f"[L>=1,{dim}]", x, where)
    return np.asarray(x, np.float32) if spec.state_dtype == "float32" else _to_bf16_bits(x)

  out["text_states"] = states("text_states", spec.text_dim)
  out["byt5_states"] = states("byt5_states", spec.byt5_dim)
  out["vision_states"] = states("vision_states", spec.vision_dim)
  for key, ref in (("text_mask", "text_states"), ("byt5_mask", "byt5_states")):
    m = arr(key, 1, integer=True)
    if m.shape[0] != out[ref].shape[0]:
      _bad(key, f"[{out[ref].shape[0]}] (one per {ref} token)", m, where)
    out[key] = m.astype(bool)
  lat = arr("first_latent", 3, ())
  if lat.shape[0] != spec.latent_channels:
    _bad("first_latent", f"[{spec.latent_channels},h,w]", lat, where)
  out["first_latent"] = lat.astype(np.float32)
  acts = arr("actions", 1, integer=True)
  n = acts.shape[0]
  if n < 1:
    _bad("actions", "[T>=1] integer", acts, where)
  if acts.min() < 0 or acts.max() >= NUM_ACTIONS:
    raise ValueError(f"record {where}: actions must lie in [0, {NUM_ACTIONS}), got "
                     f"min {acts.min()} max {acts.max()}")
  out["actions"] = acts.astype(np.int32)
  for key, trailing, dtype in (("motions", (len(MOTION_KEYS),), np.float64),
                               ("w2c", (4, 4), np.float64), ("intrinsics", (3, 3), np.float32)):
    x = arr(key, 1 + len(trailing), trailing)
    if x.shape[0] != n:
      _bad(key, f"[{n},{','.join(map(str, trailing))}] (one per action)", x, where)
    out[key] = x.astype(dtype)
  if spec.with_video:
    f = FRAMES_PER_LATENT * n - 3
    frames = arr("frames", 4, (3,))
    if frames.shape[0] != f or frames.dtype != np.uint8:
      _bad("frames", f"[{f},H,W,3] uint8 (4T-3 frames for T={n} latents)", frames, where)
    out["frames"] = frames
    depth = arr("depth", 3)
    if depth.shape != frames.shape[:3]:
      _bad("depth", f"[{f},{frames.shape[1]},{frames.shape[2]}] like frames", depth, where)
    out["depth"] = depth.astype(np.float32)
    fw = arr("frame_w2c", 3, (4, 4))
    if fw.shape[0] != f:
      _bad("frame_w2c", f"[{f},4,4]", fw, where)
    out["frame_w2c"] = fw.astype(np.float64)
  return out


# ----------------------------------------------------------------------------- builder

def _builder_class():
  """The builder class, created on first use so that importing wc_jax.data stays light."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds
  from etils import epath

  class WcTrajectoriesConfig(tfds.core.BuilderConfig):
    """A named record set; `spec` fixes the feature dimensions."""

    def __init__(self, *, spec: RecordSpec, **kwargs):
      super().__init__(**kwargs)
      object.__setattr__(self, "spec", spec)

  class WcTrajectories(tfds.core.GeneratorBasedBuilder):
    """wc_jax trajectory records (see the module docstring for the fields)."""
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Trajectory records for WorldCompass RL post-training."}
    # TFDS's own lookup of the defining file needs `importlib_resources`, which
    # tensorflow-datasets does not install; say where the code is instead.
    code_path = epath.Path(__file__)

    def __init__(self, *, splits: Mapping[str, Callable[[], Iterable[Mapping]]] | None = None,
                 **kwargs):
      self._splits = dict(splits or {})
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=_features(self.builder_config.spec),
                                   description=self.builder_config.description or
                                   "wc_jax trajectory records")

    def _split_generators(self, dl_manager):
      del dl_manager
      if not self._splits:
        raise ValueError("WcTrajectories: no splits to write; pass splits={'train': fn}")
      return {name: self._generate_examples(fn) for name, fn in self._splits.items()}

    def _generate_examples(self, fn):
      spec = self.builder_config.spec
      seen: set[str] = set()
      for example in fn():
        ex = prepare_example(example, spec)
        # TFDS's own duplicate-key report needs TensorFlow; fail clearly first.
        if ex["id"] in seen:
          raise ValueError(f"record id {ex['id']!r} appears twice; ids must be unique")
        seen.add(ex["id"])
        yield ex["id"], ex

  WcTrajectories.name = DATASET_NAME
  _BUILDER = WcTrajectories
  _BUILDER.Config = WcTrajectoriesConfig
  return _BUILDER


_BUILDER = None


def write_dataset(data_dir: str, name: str, spec: RecordSpec,
                  splits: Mapping[str, Callable[[], Iterable[Mapping]]], *,
                  description: str = "") -> str:
  """Writes record splits as a TFDS array_record dataset; returns its folder.

  Args:
    data_dir: TFDS data dir; the dataset lands in
      `data_dir/wc_trajectories/<name>/1.0.0/`.
    name: config name of this record set (letters, digits, '_').
    spec: feature dimensions.
    splits: split name -> zero-argument callable yielding example dicts (the
      callable may be called more than once).
  """
  import tensorflow_datasets as tfds
  if not name or not name.replace("_", "").isalnum():
    raise ValueError(f"write_dataset: name must be letters, digits and '_', got {name!r}")
  cls = _builder_class()
  builder = cls(data_dir=data_dir, splits=splits, file_format="array_record",
                config=cls.Config(name=name, spec=spec, description=description))
  from etils import epath
  if epath.Path(str(builder.data_dir)).is_dir():
    raise ValueError(f"write_dataset: {builder.data_dir} already exists; remove it or pick "
                     f"another name")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return str(builder.data_dir)


def dataset_dir(data_dir: str, name: str, version: str = VERSION) -> str:
  """Folder of a written record set."""
  return os.path.join(data_dir, DATASET_NAME, name, version)


def open_split(path: str, split: str = "train"):
  """Random-access source of decoded records (a grain-compatible data source).

  Args:
    path: the dataset folder (`dataset_dir(...)`, holding dataset_info.json).
  """
  import tensorflow_datasets as tfds
  from etils import epath
  path = str(path)   # local or gs:// (read through etils.epath; os.path cannot see a bucket)
  if not (epath.Path(path) / "dataset_info.json").is_file():
    raise FileNotFoundError(f"open_split: no TFDS dataset at {path} (expected "
                            f"dataset_info.json there; see wc_jax.data.tfds_builder.dataset_dir)")
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise ValueError(f"open_split: split {split!r} not in {sorted(builder.info.splits)} at {path}")
  return builder.as_data_source(split=split)


def spec_of(path: str) -> RecordSpec:
  """The RecordSpec of a written record set, read back from its features.json."""
  import tensorflow_datasets as tfds
  feats = tfds.builder_from_directory(path).info.features
  state_dtype = "float32" if feats["text_states"].np_dtype == np.float32 else "bfloat16"
  return RecordSpec(text_dim=int(feats["text_states"].shape[1]),
                    byt5_dim=int(feats["byt5_states"].shape[1]),
                    vision_dim=int(feats["vision_states"].shape[1]),
                    latent_channels=int(feats["first_latent"].shape[0]),
                    state_dtype=state_dtype, with_video="frames" in feats)
