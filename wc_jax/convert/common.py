"""Checkpoint I/O shared by the converters: memory-mapped safetensors in, Orbax out.

Reference checkpoints are folders with a `config.json` and one or more
`*.safetensors` (optionally a `*.safetensors.index.json` for sharded files).
`TensorSource` opens them lazily: a tensor is read only when asked for, so a
converter that processes one tensor at a time never holds the whole model.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping

import numpy as np
from etils import epath
from safetensors import safe_open
from safetensors.numpy import save_file


class ConversionError(ValueError):
  """A checkpoint does not match the model it is being converted for."""


def as_path(path: str | os.PathLike) -> epath.Path:
  """Local paths made absolute; gs:// (and other remote URIs) kept as they are, read through
  etils.epath (pathlib would turn gs://b/x into the local folder gs:/b/x)."""
  if "://" in str(path):
    return epath.Path(path)
  return epath.Path(pathlib.Path(path).absolute())


class TensorSource:
  """Lazy read access to every tensor of a safetensors checkpoint folder (or file)."""

  def __init__(self, path: str | os.PathLike, strip_prefix: str | None = None):
    path = pathlib.Path(path)
    if path.is_file():
      files = [path]
      self.root = path.parent
    elif path.is_dir():
      self.root = path
      index = sorted(path.glob("*.safetensors.index.json"))
      if index:
        with open(index[0], encoding="utf-8") as f:
          weight_map = json.load(f)["weight_map"]
        files = sorted({path / v for v in weight_map.values()})
      else:
        files = sorted(path.glob("*.safetensors"))
    else:
      raise FileNotFoundError(f"no checkpoint at {path}")
    if not files:
      raise ConversionError(f"no *.safetensors files in {path}")
    self._handles = {}
    self._where: dict[str, pathlib.Path] = {}
    for f in files:
      if not f.exists():
        raise ConversionError(f"sharded index names {f.name}, which is missing from {path}")
      h = safe_open(str(f), framework="numpy")
      self._handles[f] = h
      for k in h.keys():
        if k in self._where:
          raise ConversionError(f"tensor {k!r} appears in both {self._where[k].name} and {f.name}")
        self._where[k] = f
    self._prefix = ""
    if strip_prefix:
      keys = list(self._where)
      if keys and all(k.startswith(strip_prefix) for k in keys):
        self._prefix = strip_prefix
    self.files = files

  def keys(self) -> list[str]:
    n = len(self._prefix)
    return [k[n:] for k in self._where]

  def __contains__(self, key: str) -> bool:
    return (self._prefix + key) in self._where

  def shape(self, key: str) -> tuple[int, ...]:
    full = self._prefix + key
    return tuple(self._handles[self._where[full]].get_slice(full).get_shape())

  def dtype(self, key: str) -> str:
    full = self._prefix + key
    return self._handles[self._where[full]].get_slice(full).get_dtype()

  def get(self, key: str) -> np.ndarray:
    full = self._prefix + key
    if full not in self._where:
      raise ConversionError(f"missing key {key!r}")
    return self._handles[self._where[full]].get_tensor(full)


def read_config(path: str | os.PathLike) -> dict:
  path = pathlib.Path(path)
  cfg = path / "config.json" if path.is_dir() else path.parent / "config.json"
  if not cfg.exists():
    raise ConversionError(f"{path} has no config.json")
  with open(cfg, encoding="utf-8") as f:
    return json.load(f)


def check_keys(expected: Mapping[str, tuple[int, ...]], source: TensorSource, what: str) -> None:
  """Fails with one message naming every missing key, unexpected key and shape mismatch."""
  have = set(source.keys())
  want = set(expected)
  missing = sorted(want - have)
  unexpected = sorted(have - want)
  mismatched = [f"{k}: checkpoint {source.shape(k)} vs model {tuple(expected[k])}"
                for k in sorted(want & have) if tuple(source.shape(k)) != tuple(expected[k])]
  if missing or unexpected or mismatched:
    parts = []
    if missing:
      parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
      parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    if mismatched:
      parts.append(f"shape mismatches ({len(mismatched)}): {mismatched[:20]}")
    raise ConversionError(f"{what} checkpoint does not match the model:\n  " + "\n  ".join(parts))


def flatten(tree: Mapping, sep: str = "/") -> dict[str, object]:
  out = {}
  def rec(prefix, node):
    if isinstance(node, Mapping):
      for k, v in node.items():
        rec(f"{prefix}{sep}{k}" if prefix else str(k), v)
    else:
      out[prefix] = node
  rec("", tree)
  return out


def unflatten(flat: Mapping[str, object], sep: str = "/") -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    parts = path.split(sep)
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


def match_keys(tree, like):
  """`tree` with each dict key spelled as in `like` where they differ only in type: Orbax
  restores the int keys of list entries (nnx.List, head layers) as strings."""
  if not isinstance(tree, Mapping) or not isinstance(like, Mapping):
    return tree
  spelled = {str(k): k for k in like}
  return {spelled.get(str(k), k): match_keys(v, like.get(spelled.get(str(k), k))) for k, v in tree.items()}


def _umask_mode(path: pathlib.Path) -> None:
  """safetensors writes 0600 (a private temp file renamed into place); give the file the mode any
  other output gets (0666 minus the umask), like config.json beside it."""
  mask = os.umask(0)
  os.umask(mask)
  os.chmod(path, 0o666 & ~mask)


def save_torch_safetensors(tensors: Mapping[str, np.ndarray], out_dir: str | os.PathLike,
                           config: dict, filename: str = "diffusion_pytorch_model.safetensors",
                           max_shard_bytes: int | None = None) -> list[pathlib.Path]:
  """Writes reference-layout tensors (+ config.json), sharded with an index if asked."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "config.json", "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  items = [(k, np.ascontiguousarray(v)) for k, v in tensors.items()]
  if not max_shard_bytes:
    save_file(dict(items), str(out_dir / filename))
    _umask_mode(out_dir / filename)
    return [out_dir / filename]
  shards, cur, size = [], {}, 0
  for k, v in items:
    if cur and size + v.nbytes > max_shard_bytes:
      shards.append(cur)
      cur, size = {}, 0
    cur[k] = v
    size += v.nbytes
  if cur:
    shards.append(cur)
  stem = filename.removesuffix(".safetensors")
  paths, weight_map = [], {}
  for i, shard in enumerate(shards):
    name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(out_dir / name))
    _umask_mode(out_dir / name)
    paths.append(out_dir / name)
    weight_map.update({k: name for k in shard})
  with open(out_dir / f"{filename}.index.json", "w", encoding="utf-8") as f:
    json.dump({"metadata": {"total_size": sum(v.nbytes for _, v in items)}, "weight_map": weight_map}, f, indent=2)
  return paths


def save_orbax(params: Mapping, out_dir: str | os.PathLike, metadata: dict):
  """Writes a nested dict of arrays as an Orbax PyTree checkpoint plus a JSON metadata item.

  Layout: DST/params (orbax pytree), DST/wc_jax.json (model kind + config). DST may be gs://.
  Returns DST (a pathlib.Path when local, an etils.epath.Path when remote).
  """
  import orbax.checkpoint as ocp
  out = as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / "params", params, force=True)
    ckptr.wait_until_finished()
  (out / "wc_jax.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
  return out if "://" in str(out_dir) else pathlib.Path(os.fspath(out))


def load_orbax(src: str | os.PathLike, target=None):
  """Reads (params, metadata) written by `save_orbax`. `target` (abstract arrays with
  shardings) places the tensors straight onto a mesh."""
  import orbax.checkpoint as ocp
  src = as_path(src)     # local or gs://
  meta_path = src / "wc_jax.json"
  if not src.exists():
    raise ConversionError(f"{src} does not exist (a wc_jax Orbax checkpoint folder was expected)")
  if not meta_path.exists():
    raise ConversionError(f"{src} is not a wc_jax Orbax checkpoint (no wc_jax.json)")
  metadata = json.loads(meta_path.read_text(encoding="utf-8"))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(src / "params", target) if target is not None else ckptr.restore(src / "params")
  return params, metadata
