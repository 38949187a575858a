"""The launch path for Spot / preemptible TPUs: queued resources, the relaunch loop, worker logs
copied into the workdir (dry runs and a stand-in trainer; no gcloud), and the profile window."""
import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


def _dry(script, *args):
  r = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=30,
                     env=dict(os.environ, DRY_RUN="1"))
  return r


def test_queued_resource_create_and_delete():
  r = _dry("create_tpu.sh", "wc", "us-east5-a", "v5p-32", "--queued", "--spot", "--project", "p")
  assert r.returncode == 0, r.stderr
  assert ("+ gcloud compute tpus queued-resources create wc --node-id=wc --zone=us-east5-a "
          "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --spot --project=p") in r.stdout
  r = _dry("create_tpu.sh", "wc", "us-east5-a", "v5p-32", "--queued", "--preemptible")
  assert r.returncode == 2 and "a queued resource takes --spot or --reserved" in r.stderr
  r = _dry("delete_tpu.sh", "wc", "us-east5-a", "--queued")
  assert "+ gcloud compute tpus queued-resources delete wc --zone=us-east5-a --force --quiet" in r.stdout


def test_run_starts_worker_run_and_checks_its_flags():
  r = _dry("run.sh", "wc", "z", "configs/tiny.py", "gs://b/run", "--relaunch", "3", "--recreate", "v5p-16",
           "--spot", "--config.rl.total_steps=2")
  assert r.returncode == 0, r.stderr
  assert ("--command=bash ~/wc_jax/launch/worker_run.sh configs/tiny.py gs://b/run "
          "--config.rl.total_steps=2") in r.stdout
  assert "training finished" in r.stdout
  r = _dry("run.sh", "wc", "z", "configs/tiny.py", "gs://b/run", "--relaunch", "x")
  assert r.returncode == 2 and "--relaunch needs a number of tries" in r.stderr
  r = _dry("run.sh", "wc", "z", "configs/tiny.py", "gs://b/run", "--relaunch", "2", "--detach")
  assert r.returncode == 2 and "--detach and --relaunch do not go together" in r.stderr


def test_worker_run_copies_its_log_to_the_workdir_and_keeps_the_exit_status(tmp_path):
  """A stand-in `python` plays the trainer (prints, exits 3); the log copy uses the real one."""
  venv = tmp_path / "venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "python").write_text(
      "#!/usr/bin/env bash\n"
      'if [[ "$1 $2" == "-m wc_jax.train" ]]; then echo "training with $*"; exit 3; fi\n'
      f'exec {sys.executable} "$@"\n')
  (venv / "python").chmod(0o755)
  (venv / "activate").write_text(f'export PATH="{venv}:$PATH"\n')
  workdir = tmp_path / "run"
  env = dict(os.environ, WC_VENV=str(tmp_path / "venv"), WC_SRC=str(REPO), WC_LOG=str(tmp_path / "train.log"),
             PYTHONPATH=str(REPO))
  r = subprocess.run(["bash", str(LAUNCH / "worker_run.sh"), "configs/tiny.py", str(workdir), "--config.seed=1"],
                     capture_output=True, text=True, timeout=60, env=env)
  assert r.returncode == 3, (r.stdout, r.stderr)
  copied = (workdir / "logs" / f"{socket.gethostname()}.log").read_text()
  assert f"training with -m wc_jax.train --config=configs/tiny.py --workdir={workdir} --config.seed=1" in copied
  assert copied.rstrip().endswith("exit 3")


def test_profile_steps_trace_into_the_workdir(tmp_path):
  """logging.profile_steps=(k, n): a jax.profiler trace of steps k..k+n-1 in the TensorBoard
  profile plugin's layout; steps outside the window are not traced."""
  import jax.numpy as jnp
  from wc_jax.rl.logging_utils import StepProfiler
  prof = StepProfiler(str(tmp_path), (2, 2))
  x = jnp.ones((64, 64))
  for step in (1, 2, 3, 4):
    prof.before(step)
    assert prof.active == (step in (2, 3))
    x = x @ x / 64
    prof.after(step, x)
  traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  off = StepProfiler(str(tmp_path / "off"), (0, 0))
  off.before(0)
  assert not off.active and not (tmp_path / "off").exists()
