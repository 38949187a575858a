"""Torch checkpoint files (`.pth` / `.pt`) as tensor sources, with or without torch.

Why one module: several released checkpoints are bare torch pickles (umT5's
`models_t5_umt5-xxl-enc-bf16.pth`, the Wan2.1 VAE's `Wan2.1_VAE.pth`). With torch
installed they are memory-mapped through `torch.load(weights_only=True)`
(TorchStateSource); without it, a zip-format file (torch >= 1.6) is read by a
restricted unpickler that builds nothing but tensors (TorchZipSource). Only a legacy
(non-zip) pickle without torch is an error (TorchUnavailableError).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Mapping

import numpy as np

from wc_jax.convert.common import ConversionError, TensorSource

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class TorchUnavailableError(ConversionError):
  """A torch pickle that only torch can read was given, and torch cannot be imported."""


class TorchStateSource:
  """A torch state-dict file (`.pth`) with TensorSource's read interface (keys, shape, get)."""

  def __init__(self, path: str | os.PathLike):
    path = pathlib.Path(path)
    try:
      import torch
    except ImportError as e:
      raise TorchUnavailableError(f"{path}: reading it through torch needs torch, which is not importable here ({e})") from e
    if not path.is_file():
      raise FileNotFoundError(f"no checkpoint at {path}")
    try:
      state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:   # legacy (non-zip) files cannot be memory-mapped
      state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
      state = state["state_dict"]
    if not isinstance(state, Mapping):
      raise ConversionError(f"{path} does not hold a state dict (got {type(state).__name__})")
    self._torch = torch
    self._state = {k: v for k, v in state.items() if hasattr(v, "shape")}
    self.files = [path]
    self.root = path.parent

  def keys(self) -> list[str]:
    return list(self._state)

  def __contains__(self, key: str) -> bool:
    return key in self._state

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._state[key].shape)

  def dtype(self, key: str) -> str:
    return str(self._state[key].dtype).removeprefix("torch.")

  def get(self, key: str) -> np.ndarray:
    if key not in self._state:
      raise ConversionError(f"missing key {key!r}")
    t = self._state[key].detach().cpu()
    if t.dtype == self._torch.bfloat16:
      import ml_dtypes
      return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class TorchZipSource:
  """A torch.save (zip format) state dict read without torch: keys / shape / get like
  TensorSource, each tensor memory-mapped from its stored (uncompressed) zip member.

  The pickle is read by a restricted unpickler that builds only what a state dict of tensors
  holds (OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter, the typed storage
  classes); anything else is refused, so a file cannot run code. The pre-1.6 non-zip format is
  refused with a hint."""

  _DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
             "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}

  def __init__(self, path):
    import pathlib
    import pickle
    import zipfile
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
      raise TorchUnavailableError(
          f"{path} is not a torch zip checkpoint (torch.save of torch >= 1.6): a legacy or foreign pickle needs "
          "torch to read, which is not importable here. Install torch, or re-save the state dict elsewhere "
          "(torch.save(torch.load(path), new_path), or safetensors.torch.save_file) and convert that.")
    self.path, self.files, self.root = path, [path], path.parent
    with zipfile.ZipFile(path) as z:
      infos = {i.filename: i for i in z.infolist()}
      pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
      if len(pkl) != 1:
        raise ConversionError(f"{path} holds no torch data.pkl (members: {sorted(infos)[:6]})")
      prefix = pkl[0][:-len("data.pkl")]
      order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in infos else "little"
      self._members = {n[len(prefix) + len("data/"):]: infos[n] for n in infos if n.startswith(prefix + "data/")}
      payload = z.read(pkl[0])
    self._endian = "<" if order == "little" else ">"
    storages = {}
    dtypes = self._DTYPES

    class Unpickler(pickle.Unpickler):
      def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
          import collections
          return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
          return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, tuple(size), tuple(stride))
        if module == "torch._utils" and name == "_rebuild_parameter":
          return lambda data, requires_grad, hooks, *rest: data
        if module == "torch" and name in dtypes:
          return name
        raise ConversionError(f"{path}: the pickle refers to {module}.{name}, which a state dict of tensors does "
                              "not hold; refusing to load it")

      def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
          raise ConversionError(f"{path}: unknown persistent id {pid!r:.80}")
        _, kind, key, _, numel = pid
        storages.setdefault(key, (kind, int(numel)))
        return ("storage", key)

    try:
      state = Unpickler(__import__("io").BytesIO(payload)).load()
    except ConversionError:
      raise
    except Exception as e:   # a damaged or foreign pickle
      raise ConversionError(f"{path}: cannot read its pickle ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
      state = state["state_dict"]
    if not isinstance(state, dict):
      raise ConversionError(f"{path} does not hold a state dict (got {type(state).__name__})")
    self._storages = storages
    self._tensors = {k: v for k, v in state.items() if isinstance(v, tuple) and v and v[0] == "tensor"}
    for k, (_, (_, key), *_r) in self._tensors.items():
      if key not in self._members:
        raise ConversionError(f"{path}: tensor {k!r} refers to storage {key!r}, which the file lacks")

  def keys(self) -> list[str]:
    return list(self._tensors)

  def __contains__(self, key: str) -> bool:
    return key in self._tensors

  def shape(self, key: str) -> tuple[int, ...]:
    return self._tensors[key][3]

  def dtype(self, key: str) -> str:
    return self._DTYPES[self._storages[self._tensors[key][1][1]][0]]

  def _storage(self, key: str) -> np.ndarray:
    import zipfile
    kind, numel = self._storages[key]
    name = self._DTYPES[kind]
    if name == "bfloat16":
      import ml_dtypes
      dt = np.dtype(ml_dtypes.bfloat16)
    else:
      dt = np.dtype(name)
    dt = dt.newbyteorder(self._endian) if dt.itemsize > 1 else dt
    info = self._members[key]
    if info.compress_type == zipfile.ZIP_STORED:
      with open(self.path, "rb") as f:   # the member's data starts after its local header
        f.seek(info.header_offset)
        head = f.read(30)
      start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
      return np.memmap(self.path, dtype=dt, mode="r", offset=start, shape=(numel,))
    with zipfile.ZipFile(self.path) as z:
      return np.frombuffer(z.read(info), dtype=dt, count=numel)

  def get(self, key: str) -> np.ndarray:
    if key not in self._tensors:
      raise ConversionError(f"missing key {key!r}")
    _, (_, skey), offset, size, stride = self._tensors[key]
    buf = self._storage(skey)
    item = buf.dtype.itemsize
    if any(s > 0 for s in size) and offset + sum((n - 1) * st for n, st in zip(size, stride)) >= len(buf):
      raise ConversionError(f"{self.path}: tensor {key!r} reaches past its storage")
    view = np.lib.stride_tricks.as_strided(buf[offset:], shape=size, strides=[st * item for st in stride])
    return np.array(view, dtype=buf.dtype.newbyteorder("="))


def open_torch_file(path: str | os.PathLike):
  """A tensor source for one torch state-dict file: through torch when it is importable
  (memory-mapped), else TorchZipSource."""
  if importlib.util.find_spec("torch") is not None:
    return TorchStateSource(path)
  return TorchZipSource(path)


def open_state_dict(path: str | os.PathLike):
  """A tensor source for a state dict: a `.safetensors` file, a torch file (open_torch_file),
  or a folder holding either (safetensors preferred)."""
  path = pathlib.Path(path)
  if path.is_dir():
    if list(path.glob("*.safetensors")):
      return TensorSource(path)
    pth = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
    if not pth:
      raise ConversionError(f"{path} holds no *.safetensors or *.pth checkpoint")
    return open_torch_file(pth[0])
  if path.suffix in TORCH_SUFFIXES:
    return open_torch_file(path)
  return TensorSource(path)
