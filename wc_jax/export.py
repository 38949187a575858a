"""Exports a post-trained WorldPlay DiT to the PyTorch reference layout.

    python -m wc_jax.export --checkpoint=/runs/wc --which=ema --to-torch /ckpt/wc_ema
    python -m wc_jax.export --checkpoint=/runs/wc/checkpoints/400 --which=raw --to-torch OUT \\
        --dtype=bf16 --max-shard-size=5GB

--checkpoint is an RL run (WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP; the newest
step when none is named) or a folder written by `python -m wc_jax.convert --torch ... --out`.
--which picks the RL weights: ema (the checkpoint EMA, what the paper evaluates), raw (the
trained weights) or policy (the rollout EMA). OUT receives config.json and
diffusion_pytorch_model.safetensors (or -0000i-of-0000n shards + .index.json), exactly the
reference's state-dict keys, ready for the reference pipeline's --model_path.

OUT is written under a temporary name and renamed when complete; an existing OUT is refused
unless --overwrite.

Streaming (the default): the checkpoint is never restored whole. Each tensor, or one layer of
a stacked layer leaf, is read on its own from the Orbax checkpoint through tensorstore (the
OCDBT store that StandardSave writes from any number of hosts and devices: no mesh, no
process of the run that wrote it, no TrainState) and written straight into its safetensors
file, whose header is computed up front from the checkpoint's metadata. Host memory holds one
tensor at a time, whatever the model size or --max-shard-size. --no-streaming restores the
whole weight tree first (the earlier path; the files are byte-identical).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import shutil
import struct
import sys

import numpy as np

from wc_jax.convert import dit, kinds
from wc_jax.convert.common import ConversionError, as_path, load_orbax, save_torch_safetensors

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
          "fp16": "float16", "float16": "float16"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class ExportError(ValueError):
  """Bad input to the export: reported as one line."""


def parse_size(text: str | None) -> int | None:
  """'5GB' / '500MB' / '2GiB' / '123' (bytes) -> bytes; None or '' -> None (one file)."""
  if not text:
    return None
  m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
  if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
    raise ExportError(f"--max-shard-size={text!r}: expected a positive size such as 5GB, 500MB or 2GiB")
  return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def load_dit_params(checkpoint, which: str = "ema"):
  """(model_config, params, description) of the DiT weights at `checkpoint`: an RL checkpoint
  (the `which` weights) or a wc_jax Orbax DiT folder (written by convert)."""
  path = as_path(checkpoint)     # local or gs://
  if not path.exists():
    raise ExportError(f"--checkpoint={checkpoint}: no such file or folder")
  if (path / "wc_jax.json").exists():
    params, meta = load_orbax(path)
    if meta.get("kind") != kinds.DIT:
      raise ExportError(f"--checkpoint={checkpoint} holds a {meta.get('kind')!r} checkpoint, not a WorldPlay DiT "
                        f"({kinds.DIT!r}); export writes DiT checkpoints (other kinds: python -m wc_jax.convert "
                        f"--orbax SRC --to-torch DST)")
    return meta["model_config"], params, f"wc_jax DiT checkpoint {path}"
  step_dir = dit.rl_step_dir(path)
  if step_dir is None:
    raise ExportError(f"--checkpoint={checkpoint} is neither an RL checkpoint (WORKDIR[/checkpoints[/STEP]] with "
                      f"state/ and config/) nor a wc_jax DiT folder (wc_jax.json, from python -m wc_jax.convert)")
  model_config, params, step_dir = dit.params_from_rl_checkpoint(step_dir, which)
  return model_config, params, f"the {which} weights of RL checkpoint {step_dir}"


# ----------------------------------------------------------------------------- streaming

class LeafReader:
  """One array (or one index of its first axis) at a time from an Orbax checkpoint item
  (`directory`, e.g. STEP/state; `subtree`, e.g. "ema"), read through tensorstore from the
  OCDBT store: nothing else of the checkpoint is loaded. Leaf names come from the item's
  _METADATA (its tree, as plain JSON: no metadata objects for the optimizer state), shapes and
  dtypes from the stored arrays. Paths are '/'-joined, the nnx Variables' trailing '/value'
  dropped. Keeps the size of the largest read (max_read_bytes)."""

  def __init__(self, directory, subtree: str | None = None):
    self.directory = as_path(directory)
    names, zarr3 = self._names(subtree)
    self.leaves = names
    self._driver = "zarr3" if zarr3 else "zarr"
    text = str(self.directory)
    self._base = text if "://" in text else "file://" + os.path.abspath(text)
    self._open_name, self._open_store = None, None
    self.max_read_bytes = 0
    self.reads = 0

  def _names(self, subtree):
    """{our path: stored array name} of the subtree, and whether the arrays are zarr3."""
    try:
      meta = json.loads((self.directory / "_METADATA").read_text())
      tree = meta["tree_metadata"]
    except (OSError, ValueError, KeyError) as e:
      raise ConversionError(f"{self.directory} is not a readable Orbax checkpoint item (_METADATA: {e})") from None
    out, tops = {}, set()
    for entry in tree.values():
      keys = [str(k["key"]) for k in entry["key_metadata"]]
      tops.add(keys[0])
      if subtree is not None:
        if keys[0] != subtree:
          continue
        keys = keys[1:]
      if keys and keys[-1] == "value":
        keys = keys[:-1]
      out["/".join(keys)] = ".".join(str(k["key"]) for k in entry["key_metadata"])
    if subtree is not None and subtree not in tops:
      raise ConversionError(f"{self.directory} has no {subtree!r} weights (has {sorted(tops)})")
    return out, bool(meta.get("use_zarr3", False))

  def _store(self, path: str):
    import tensorstore as ts
    if path not in self.leaves:
      raise ConversionError(f"parameter {path} missing from the checkpoint {self.directory}")
    name = self.leaves[path]
    if name != self._open_name:
      spec = {"driver": self._driver, "kvstore": {"driver": "ocdbt", "base": self._base, "path": name}}
      try:
        self._open_store = ts.open(spec, open=True, read=True).result()
      except ValueError as e:
        raise ConversionError(f"cannot read {name} from {self.directory}: {' '.join(str(e).split())[:300]}") from None
      self._open_name = name
    return self._open_store

  def shape(self, path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in self._store(path).shape)

  def dtype(self, path: str) -> np.dtype:
    return np.dtype(self._store(path).dtype.numpy_dtype)

  def read(self, path: str, index: int | None = None) -> np.ndarray:
    """The array at `path`, or its `index`-th slice along the first axis (one layer)."""
    store = self._store(path)
    x = np.asarray((store if index is None else store[index]).read().result())
    self.max_read_bytes = max(self.max_read_bytes, x.nbytes)
    self.reads += 1
    return x


# safetensors' dtype codes, and their order in its Dtype enum: a file lists larger dtypes first,
# then names (byte order), which is how safetensors.save_file lays a file out
_ST_DTYPES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
              "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64",
              "int64": "I64", "uint64": "U64"}
_ST_RANK = {code: i for i, code in enumerate(("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                                              "F64", "I64", "U64"))}


def write_safetensors(path, specs, produce) -> int:
  """Writes a safetensors file tensor by tensor: `specs` {name: (shape, numpy dtype)} fixes
  the header first, `produce(name)` returns each array when its turn comes (one in memory at a
  time). Byte-identical to safetensors.numpy.save_file of the same arrays. Returns the
  largest tensor's bytes."""
  order = sorted(specs, key=lambda k: (-_ST_RANK[_ST_DTYPES[np.dtype(specs[k][1]).name]], k.encode()))
  header, offset = {}, 0
  for name in order:
    shape, dt = specs[name]
    n = math.prod(shape) * np.dtype(dt).itemsize
    header[name] = {"dtype": _ST_DTYPES[np.dtype(dt).name], "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * ((8 - len(head) % 8) % 8)
  largest = 0
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for name in order:
      x = np.ascontiguousarray(produce(name))
      shape, dt = specs[name]
      if tuple(x.shape) != tuple(shape) or x.dtype != np.dtype(dt):
        raise ConversionError(f"{name}: the checkpoint gives {x.dtype}{list(x.shape)}, its metadata "
                              f"{np.dtype(dt)}{list(shape)}")
      f.write(x.reshape(-1).view(np.uint8).data)
      largest = max(largest, x.nbytes)
      del x
  return largest


def _np_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def open_dit_source(checkpoint, which: str = "ema"):
  """(model_config, LeafReader of the DiT weights, description) without reading any weights:
  an RL checkpoint's `which` subtree, or a wc_jax DiT folder's params."""
  path = as_path(checkpoint)
  if not path.exists():
    raise ExportError(f"--checkpoint={checkpoint}: no such file or folder")
  if (path / "wc_jax.json").exists():
    meta = json.loads((path / "wc_jax.json").read_text())
    if meta.get("kind") != kinds.DIT:
      raise ExportError(f"--checkpoint={checkpoint} holds a {meta.get('kind')!r} checkpoint, not a WorldPlay DiT "
                        f"({kinds.DIT!r}); export writes DiT checkpoints (other kinds: python -m wc_jax.convert "
                        f"--orbax SRC --to-torch DST)")
    return meta["model_config"], LeafReader(path / "params"), f"wc_jax DiT checkpoint {path}"
  step_dir = dit.rl_step_dir(path)
  if step_dir is None:
    raise ExportError(f"--checkpoint={checkpoint} is neither an RL checkpoint (WORKDIR[/checkpoints[/STEP]] with "
                      f"state/ and config/) nor a wc_jax DiT folder (wc_jax.json, from python -m wc_jax.convert)")
  model_config = dit.rl_model_config(step_dir)
  reader = LeafReader(step_dir / "state", subtree=dit.RL_WHICH[which])
  return model_config, reader, f"the {which} weights of RL checkpoint {step_dir}"


def stream_torch_files(reader: LeafReader, model_config: dict, out_dir, *, dtype: str | None = None,
                       max_shard_bytes: int | None = None) -> dict:
  """The reference layout of the DiT behind `reader` in `out_dir`, one tensor in memory at a
  time: config.json, diffusion_pytorch_model.safetensors or shards + index (the grouping of
  `save_torch_safetensors`). Returns {files, tensors, bytes, largest_tensor_bytes}."""
  ref_config, plan = dit.torch_plan(model_config)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "config.json", "w", encoding="utf-8") as f:
    json.dump(ref_config, f, indent=2)
  entries, specs = {}, {}
  for tkey, path, layer, layout, tshape in plan:
    shape = reader.shape(path)
    ours = shape[1:] if layer is not None else shape
    if layer is not None and (not shape or shape[0] <= layer):
      raise ConversionError(f"parameter {path} has shape {list(shape)}, no layer {layer}")
    if math.prod(ours) != math.prod(tshape):
      raise ConversionError(f"parameter {path} has shape {list(ours)}, {tkey} needs {list(tshape)}")
    entries[tkey] = (path, layer, layout, tshape)
    specs[tkey] = (tshape, _np_dtype(DTYPES[dtype]) if dtype else reader.dtype(path))
  nbytes = {k: math.prod(v[0]) * v[1].itemsize for k, v in specs.items()}
  shards, cur, size = [], [], 0
  for k in specs:
    if max_shard_bytes and cur and size + nbytes[k] > max_shard_bytes:
      shards.append(cur)
      cur, size = [], 0
    cur.append(k)
    size += nbytes[k]
  if cur:
    shards.append(cur)

  def produce(tkey):
    path, layer, layout, tshape = entries[tkey]
    return dit.torch_tensor(reader.read(path, layer), layout, tshape, specs[tkey][1] if dtype else None)

  largest = 0
  if not max_shard_bytes:
    names = [dit.TORCH_FILENAME]
    largest = write_safetensors(out_dir / names[0], specs, produce)
  else:
    stem = dit.TORCH_FILENAME.removesuffix(".safetensors")
    names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards):
      largest = max(largest, write_safetensors(out_dir / name, {k: specs[k] for k in keys}, produce))
    with open(out_dir / f"{dit.TORCH_FILENAME}.index.json", "w", encoding="utf-8") as f:
      json.dump({"metadata": {"total_size": sum(nbytes.values())},
                 "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}, f, indent=2)
  return {"files": names, "tensors": len(specs), "bytes": int(sum(nbytes.values())),
          "largest_tensor_bytes": int(largest), "largest_read_bytes": int(reader.max_read_bytes)}


def _fresh_dir(out: pathlib.Path, overwrite: bool) -> None:
  if out.exists() and not overwrite:
    raise ExportError(f"--to-torch={out} already exists; pass --overwrite to replace it")
  if out.exists() and not out.is_dir():
    raise ExportError(f"--to-torch={out} exists and is not a folder")


def export(checkpoint, out, *, which: str = "ema", dtype: str | None = None, max_shard_size: str | int | None = None,
           overwrite: bool = False, streaming: bool = True) -> dict:
  """Writes the reference layout of the DiT at `checkpoint` to `out`; returns a summary.
  streaming: one tensor in host memory at a time (`stream_torch_files`); else the whole weight
  tree is restored first."""
  out = pathlib.Path(out)
  if which not in dit.RL_WHICH:
    raise ExportError(f"--which={which!r}: expected one of {', '.join(dit.RL_WHICH)}")
  if dtype is not None and dtype not in DTYPES:
    raise ExportError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
  shard = max_shard_size if isinstance(max_shard_size, int) else parse_size(max_shard_size)
  _fresh_dir(out, overwrite)
  if streaming:
    model_config, reader, what = open_dit_source(checkpoint, which)
    dit.torch_plan(model_config)          # an inexpressible config fails before anything is written
  else:
    model_config, params, what = load_dit_params(checkpoint, which)
    ref_config, tensors = dit.params_to_torch(params, model_config, dtype=DTYPES.get(dtype))
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  old = out.with_name(f".{out.name}.old-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    if streaming:
      summary = stream_torch_files(reader, model_config, tmp, dtype=dtype, max_shard_bytes=shard)
    else:
      files = save_torch_safetensors(tensors, tmp, ref_config, filename=dit.TORCH_FILENAME, max_shard_bytes=shard)
      summary = {"files": [f.name for f in files], "tensors": len(tensors),
                 "bytes": int(sum(v.nbytes for v in tensors.values()))}
    if out.exists():            # --overwrite: the old folder goes only once the new one is complete
      os.replace(out, old)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)
  return {"source": what, "out": str(out), "streaming": streaming, **summary}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m wc_jax.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="RL WORKDIR[/checkpoints[/STEP]] or a wc_jax DiT folder")
  p.add_argument("--which", default="ema", choices=tuple(dit.RL_WHICH), help="RL weights to export (default ema)")
  p.add_argument("--to-torch", "--to_torch", dest="to_torch", required=True, help="output folder (reference layout)")
  p.add_argument("--dtype", default=None, help="bf16 | fp32 | fp16 (default: as stored, fp32 for RL weights)")
  p.add_argument("--max-shard-size", "--max_shard_size", dest="max_shard_size", default=None,
                 help="split the safetensors into shards of at most this size (e.g. 5GB) with an index")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
  p.add_argument("--no-streaming", "--no_streaming", dest="streaming", action="store_false",
                 help="restore the whole weight tree first (default: one tensor in memory at a time)")
  args = p.parse_args(argv)
  try:
    summary = export(args.checkpoint, args.to_torch, which=args.which, dtype=args.dtype,
                     max_shard_size=args.max_shard_size, overwrite=args.overwrite, streaming=args.streaming)
  except (ExportError, ConversionError, FileNotFoundError) as e:
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2
  print(f"exported {summary['source']} -> {summary['out']} ({summary['tensors']} tensors, "
        f"{summary['bytes'] / 2**20:.1f} MiB in {len(summary['files'])} file(s))")
  return 0


if __name__ == "__main__":
  from wc_jax.cli import quiet_tpu_probe
  quiet_tpu_probe()
  sys.exit(main())
