"""What JAX sees on this machine, and a loud failure when it is not what was expected.

    python -m wc_jax.doctor                 # platform, devices, processes, versions
    python -m wc_jax.doctor --expect=tpu    # exit 1 with one line when JAX fell back to CPU

A TPU that fails to initialise (a libtpu that does not match jaxlib, a chip held by another
process, a Colab CPU runtime) makes JAX warn once and run on the CPU; a training run then looks
alive but is hundreds of times slower. `launch/install.sh` and the Colab notebook run this with
`--expect=tpu` so that such an install stops there.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys

PACKAGES = ("jax", "jaxlib", "libtpu", "libtpu-nightly", "flax", "orbax-checkpoint", "optax", "grain", "wc_jax")
PLATFORMS = ("tpu", "gpu", "cpu")


def versions() -> dict[str, str | None]:
  """Installed distribution versions (None: not installed)."""
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def report() -> dict:
  """Platform, device count and kind, process count and versions, as JAX sees them now."""
  import jax
  devices = jax.devices()
  return {
      "platform": jax.default_backend(),
      "device_count": len(devices),
      "local_device_count": jax.local_device_count(),
      "device_kind": sorted({d.device_kind for d in devices}),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "python": sys.version.split()[0],
      "versions": {k: v for k, v in versions().items() if v is not None},
  }


def check(info: dict, expect: str | None) -> str | None:
  """None when `info` matches `expect` ("tpu", "gpu", "cpu" or None), else the one-line problem."""
  if expect is None or info["platform"] == expect:
    return None
  hint = {"tpu": "is libtpu installed and matched to jaxlib (pip install 'jax[tpu]'), and is no other "
                 "process holding the TPU (sudo lsof -w /dev/accel* /dev/vfio/*)?",
          "gpu": "is a CUDA jaxlib installed (pip install 'jax[cuda12]') and a GPU visible (nvidia-smi)?",
          "cpu": "set JAX_PLATFORMS=cpu to run on the CPU."}[expect]
  return (f"wc_jax.doctor: expected {expect} but JAX is running on {info['platform']} "
          f"({info['device_count']} x {', '.join(info['device_kind'])}; jax {info['versions'].get('jax')}, "
          f"jaxlib {info['versions'].get('jaxlib')}, libtpu {info['versions'].get('libtpu')}): {hint}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m wc_jax.doctor", description=__doc__.splitlines()[0])
  parser.add_argument("--expect", choices=PLATFORMS, default=None,
                      help="fail (exit 1, one line on stderr) unless JAX runs on this platform")
  parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
  args = parser.parse_args(argv)
  info = report()
  if args.json:
    print(json.dumps(info))
  else:
    print(f"platform: {info['platform']}  devices: {info['device_count']} "
          f"({info['local_device_count']} local) x {', '.join(info['device_kind'])}")
    print(f"processes: {info['process_count']} (this is process {info['process_index']})  python {info['python']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
  problem = check(info, args.expect)
  if problem:
    print(problem, file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
