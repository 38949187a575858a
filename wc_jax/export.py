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
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import sys

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


def _fresh_dir(out: pathlib.Path, overwrite: bool) -> None:
  if out.exists() and not overwrite:
    raise ExportError(f"--to-torch={out} already exists; pass --overwrite to replace it")
  if out.exists() and not out.is_dir():
    raise ExportError(f"--to-torch={out} exists and is not a folder")


def export(checkpoint, out, *, which: str = "ema", dtype: str | None = None, max_shard_size: str | int | None = None,
           overwrite: bool = False) -> dict:
  """Writes the reference layout of the DiT at `checkpoint` to `out`; returns a summary."""
  out = pathlib.Path(out)
  if which not in dit.RL_WHICH:
    raise ExportError(f"--which={which!r}: expected one of {', '.join(dit.RL_WHICH)}")
  if dtype is not None and dtype not in DTYPES:
    raise ExportError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
  shard = max_shard_size if isinstance(max_shard_size, int) else parse_size(max_shard_size)
  _fresh_dir(out, overwrite)
  model_config, params, what = load_dit_params(checkpoint, which)
  ref_config, tensors = dit.params_to_torch(params, model_config, dtype=DTYPES.get(dtype))
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  old = out.with_name(f".{out.name}.old-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    files = save_torch_safetensors(tensors, tmp, ref_config, filename=dit.TORCH_FILENAME, max_shard_bytes=shard)
    if out.exists():            # --overwrite: the old folder goes only once the new one is complete
      os.replace(out, old)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)
  return {"source": what, "out": str(out), "files": [f.name for f in files], "tensors": len(tensors),
          "bytes": int(sum(v.nbytes for v in tensors.values()))}


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
  args = p.parse_args(argv)
  try:
    summary = export(args.checkpoint, args.to_torch, which=args.which, dtype=args.dtype,
                     max_shard_size=args.max_shard_size, overwrite=args.overwrite)
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
