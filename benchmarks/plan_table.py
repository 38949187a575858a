"""The docs/performance.md plan table: `wc_jax.plan` over several topologies and paths.

    python benchmarks/plan_table.py --config configs/hunyuan8b.py \\
        --topologies v5p:2x4x4,v5p:4x4x4,v5p:4x4x8,v6e:4x8 --paths rollout,update [--depth 54] [--json out.json]
    python benchmarks/plan_table.py --topologies v5p:2x4x4 --paths update --trajectories 1,4,16

One markdown row per (topology, path); a program that does not compile (e.g. RESOURCE_EXHAUSTED:
it does not fit) gets a row saying so instead of stopping the table. Each 8B compile takes minutes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from wc_jax import plan  # noqa: E402


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("wc_jax_plan_table_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/hunyuan8b.py")
  p.add_argument("--topologies", default="v5p:2x4x4,v5p:4x4x4,v5p:4x4x8")
  p.add_argument("--paths", default="rollout,update")
  p.add_argument("--depth", type=int, default=0, help="override the model depth (0: the config's)")
  p.add_argument("--trajectories", default="", help="comma-separated T (rl.trajectories_per_step) for the update "
                 "rows (empty: the config's)")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  rows = []
  print(plan.TABLE_HEADER, flush=True)
  for topo in args.topologies.split(","):
    for path in args.paths.split(","):
      for t in (args.trajectories.split(",") if args.trajectories and path == "update" else [""]):
        cfg = load_config(args.config)
        cfg.allow_random_init = True     # abstract weights: nothing is loaded
        if args.depth:
          cfg.model.depth = args.depth
        if t:
          cfg.rl.trajectories_per_step = int(t)
        try:
          r = plan.plan(cfg, topo, path=path)
          print(plan.table_row(r), flush=True)
        except Exception as e:  # noqa: BLE001  (one failed program is a row, not the end of the table)
          r = {"topology": topo, "path": path, "trajectories": t, "error": str(e).splitlines()[0][:300]}
          print(f"| {topo} | | {path} {f'(T={t})' if t else ''} | | no compile: {r['error']} |", flush=True)
        rows.append(r)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1, default=str)
  return rows


if __name__ == "__main__":
  main()
