"""`python -m wc_jax.doctor`: what JAX sees, and one loud line when a TPU was expected."""
import json
import os
import subprocess
import sys
import pathlib

from wc_jax import doctor

REPO = pathlib.Path(__file__).resolve().parents[1]


def _doctor(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "wc_jax.doctor", *args], capture_output=True, text=True,
                        timeout=120, env=env, cwd=REPO)


def test_report_names_platform_devices_processes_and_versions():
  r = _doctor("--json")
  assert r.returncode == 0, r.stderr
  info = json.loads(r.stdout.strip().splitlines()[-1])
  assert info["platform"] == "cpu" and info["device_count"] == 2 and info["process_count"] == 1
  assert info["device_kind"] == ["cpu"]
  import flax
  import jax
  assert info["versions"]["jax"] == jax.__version__ and info["versions"]["flax"] == flax.__version__
  assert "orbax-checkpoint" in info["versions"] and "jaxlib" in info["versions"]


def test_expected_tpu_on_cpu_fails_with_one_line():
  r = _doctor("--expect=tpu")
  assert r.returncode == 1
  assert "platform: cpu  devices: 2" in r.stdout
  lines = [line for line in r.stderr.splitlines() if line.startswith("wc_jax.doctor:")]
  assert len(lines) == 1, r.stderr
  assert "expected tpu but JAX is running on cpu (2 x cpu; jax " in lines[0] and "libtpu" in lines[0]
  assert _doctor("--expect=cpu").returncode == 0


def test_check_passes_the_expected_platform_only():
  info = {"platform": "tpu", "device_count": 8, "device_kind": ["TPU v5p"], "versions": {"jax": "0.10.2"}}
  assert doctor.check(info, "tpu") is None and doctor.check(info, None) is None
  assert "expected gpu but JAX is running on tpu (8 x TPU v5p" in doctor.check(info, "gpu")
