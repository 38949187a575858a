"""benchmarks/gpu_suite.sh --tiny: every part of the GPU suite runs on CPU at toy sizes and reports
robust timings (median, min, spread over reps) in one table, installing nothing."""
import json
import math
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_suite_tiny_runs_every_part_on_cpu(tmp_path):
  out = tmp_path / "suite.json"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--tiny", "--json", str(out)],
                        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "## summary" in proc.stdout and "DiT train step (ar fwd+bwd)" in proc.stdout
  report = json.loads(out.read_text())
  assert report["tiny"] is True
  passes = {(r["pass_"], r["batch"]) for r in report["dit"]}
  assert passes == {("fwd", 1), ("fwd+bwd", 1), ("fwd", 2)}
  for r in report["dit"] + [report["vae"]]:
    assert r["reps"] == 3 and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    assert math.isclose(r["spread"], (r["max_ms"] - r["min_ms"]) / r["median_ms"], abs_tol=2e-3)
  assert all(r["dtype"] == "float32" for r in report["dit"])   # --dtype auto: fp32 on CPU (bf16 on a GPU)
  group = [r for r in report["dit"] if r["batch"] == 2][0]
  # 2 candidates x 2 Euler steps in the tiny run: candidates/s = 2 / (2 x one batched step)
  assert math.isclose(group["candidates_per_s"], 2 / (2 * group["median_ms"] / 1e3), rel_tol=1e-2)
  assert report["vae"]["ms_per_latent"] > 0 and "side_by_side" not in report
