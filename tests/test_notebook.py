"""The small-scale notebook: valid nbformat-4 JSON whose code cells parse and run our script."""
import ast
import json
import pathlib

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "wc_jax_small_scale.ipynb"


def test_notebook_cells_parse_and_drive_the_reproduction():
  nb = json.loads(NB.read_text())
  assert nb["nbformat"] == 4
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  for src in code:
    ast.parse(src)                  # a syntax error in any cell fails here, not in Colab
  text = "\n".join(code)
  assert "benchmarks/reproduce.py" in text and "--quick" in text
  assert "WC_JAX_REPO" in text and "OWNER" not in text   # no placeholder URL to clone
  for f in ("results.md", "metrics.jsonl", "compare_"):
    assert f in text, f


def test_install_keeps_the_runtimes_jax_and_libtpu_and_the_tpu_is_asserted():
  nb = json.loads(NB.read_text())
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  install, device = code[0], code[1]
  assert '"jax", "jaxlib"' in install and '"-e", ".", *pins' in install
  assert "jax[tpu]" not in install.replace("pip install -U 'jax[tpu]'", "")   # only in the error hint
  assert "libtpu" in install and "--upgrade" not in install
  assert '"wc_jax.doctor"' in device and '"--expect=tpu"' in device and "assert platform ==" in device
  intro = "".join(nb["cells"][0]["source"])
  assert "colab.research.google.com/github/<user>/<repo>/blob/" in intro


def test_device_cell_runs_on_a_cpu_runtime(tmp_path):
  """The device cell as Colab's CPU runtime runs it: no TPU attached, the doctor passes, CPU."""
  import os
  import subprocess
  import sys
  nb = json.loads(NB.read_text())
  device = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"][1]
  env = {k: v for k, v in os.environ.items() if k not in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE")}
  env["PYTHONPATH"] = str(NB.parents[1])
  import glob
  import pytest
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    pytest.skip("a TPU is attached to this machine: the cell would (rightly) insist on it")
  r = subprocess.run([sys.executable, "-c", device], capture_output=True, text=True, timeout=120, env=env,
                     cwd=NB.parents[1])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "platform: cpu" in r.stdout and "running on cpu" in r.stdout
