"""Checks wc_jax against a folder of reference fixtures.

    python -m wc_jax.tools.check_fixture DIR [--tol-scale S] [--only NAME ...]

The kind of fixture is recognised from the files in DIR (never from the folder's
name). Each kind lives in `wc_jax.fixtures.<kind>` and provides

    matches(path: pathlib.Path) -> bool
    check(path: pathlib.Path, only: set[str] | None) -> list[wc_jax.fixtures.common.Result]

The tool prints max abs / max relative error per output and exits 1 if any
output is above its tolerance, 2 if the folder is not a known fixture kind.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

# Order matters only when two kinds could match the same folder: most specific first.
KINDS = (
    "lingbot_dit", "lingbot_camera",
    "hpsv3",
    "encoders",
    "dit",
    "vae",
    "wan_vae",
    "labels",
    "grpo",
    "da3_tiny",
    "da3_reference",
)


def detect(path: pathlib.Path) -> str:
  """Returns the fixture kind of `path`, or raises ValueError naming what was found."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise ValueError(f"{path} is not a directory")
  for kind in KINDS:
    try:
      mod = importlib.import_module(f"wc_jax.fixtures.{kind}")
    except ModuleNotFoundError as e:
      if e.name == f"wc_jax.fixtures.{kind}":
        continue
      raise
    if mod.matches(path):
      return kind
  files = sorted(p.name for p in path.iterdir())
  raise ValueError(
      f"{path} is not a known fixture folder (kinds: {', '.join(KINDS)}); it holds {files[:12]}")


def run(path, only=None, tol_scale: float = 1.0, out=sys.stdout):
  """Runs the checks for the fixture at `path`; returns (kind, results, ok)."""
  from wc_jax.fixtures.common import format_results
  path = pathlib.Path(path)
  kind = detect(path)
  mod = importlib.import_module(f"wc_jax.fixtures.{kind}")
  results = mod.check(path, only=set(only) if only else None)
  for r in results:
    r.tol_abs *= tol_scale
    r.tol_rel *= tol_scale
  ok = all(r.ok for r in results)
  if out is not None:
    print(f"fixture {path} kind={kind}", file=out)
    print(format_results(results), file=out)
    print(f"{'PASS' if ok else 'FAIL'}: {sum(r.ok for r in results)}/{len(results)} outputs within tolerance",
          file=out)
  return kind, results, ok


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m wc_jax.tools.check_fixture", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("dir", type=pathlib.Path, help="a fixture folder (e.g. tests/fixtures/worldplay/dit)")
  p.add_argument("--only", nargs="*", default=None, help="check only these named cases")
  p.add_argument("--tol-scale", type=float, default=1.0, help="multiply every tolerance by this")
  args = p.parse_args(argv)
  try:
    _, _, ok = run(args.dir, only=args.only, tol_scale=args.tol_scale)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
