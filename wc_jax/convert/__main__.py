"""Checkpoint conversion between the PyTorch reference layout and wc_jax (Orbax).

    python -m wc_jax.convert --torch SRC --out DST [--dtype bfloat16] [--mesh fsdp=8]
    python -m wc_jax.convert --from-torch models_t5_umt5-xxl-enc-bf16.pth --kind=umt5 --out DST
    python -m wc_jax.convert --orbax SRC --to-torch DST [--shard-gb 5]

SRC (torch; --torch and --from-torch are one option) is a reference folder: config.json +
*.safetensors (sharded index supported); the model kind is recognised from config.json. A
checkpoint released as one bare file with no config.json (umT5's .pth, the Wan2.1 VAE's .pth;
or the same keys as .safetensors) needs --kind; its architecture is the released model's
unless --reference-config names a JSON file of the reference constructor arguments.
"""
from __future__ import annotations

import argparse
import sys

from wc_jax.convert import kinds, registry
from wc_jax.convert.common import ConversionError
from wc_jax.sharding import make_mesh


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m wc_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--torch", "--from-torch", dest="torch",
                   help="reference checkpoint folder (config.json + *.safetensors), or with --kind a bare "
                        f"released file ({', '.join(registry.BARE_FILE_KINDS)})")
  src.add_argument("--orbax", help="wc_jax Orbax checkpoint folder written by --torch ... --out")
  p.add_argument("--out", help="output Orbax folder (with --torch)")
  p.add_argument("--to-torch", dest="to_torch", help="output reference-layout folder (with --orbax)")
  p.add_argument("--dtype", default=None, help="cast floating tensors (float32, bfloat16); default keeps them")
  p.add_argument("--mesh", default=None,
                 help="place tensors on a mesh while converting, e.g. 'fsdp=8' or 'fsdp=4,tensor=2'")
  p.add_argument("--shard-gb", type=float, default=0.0, help="with --to-torch: max GB per safetensors shard")
  p.add_argument("--kind", default=None, help=f"force the model kind ({', '.join(kinds.ALL)}) instead of detecting it")
  p.add_argument("--reference-config", dest="reference_config", default=None,
                 help="with a bare file: JSON of the reference constructor arguments (default: the released "
                      "architecture, or a config.json beside the file)")
  args = p.parse_args(argv)
  try:
    if args.torch:
      if not args.out:
        p.error("--torch needs --out")
      mesh = None
      if args.mesh:
        shape = {k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))}
        mesh = make_mesh(shape)
      if args.kind is not None and args.kind not in kinds.ALL:
        p.error(f"--kind={args.kind}: expected one of {', '.join(kinds.ALL)}")
      if args.reference_config and args.kind not in registry.BARE_FILE_KINDS:
        p.error(f"--reference-config is for bare files (--kind {' or '.join(registry.BARE_FILE_KINDS)})")
      kind = registry.torch_to_orbax(args.torch, args.out, dtype=args.dtype, mesh=mesh, kind=args.kind,
                                     reference_config=args.reference_config)
      print(f"converted {kind} checkpoint {args.torch} -> {args.out}")
    else:
      if not args.to_torch:
        p.error("--orbax needs --to-torch")
      kind = registry.orbax_to_torch(args.orbax, args.to_torch, dtype=args.dtype,
                                     max_shard_bytes=int(args.shard_gb * 2**30) or None)
      print(f"exported {kind} checkpoint {args.orbax} -> {args.to_torch}")
  except (ConversionError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
