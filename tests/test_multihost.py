"""Multi-host: jax.distributed start-up decisions, one RL step with T = 2 trajectories on 2
processes x 4 CPU devices (each process reading one trajectory from its own data shard) equal
to 1 process x 8 devices (loopback gloo collectives), and the launch scripts.

Run as a script (`python tests/test_multihost.py --process_id 0 ...`) this file is the worker
of the two-process test.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
WORKER_TIMEOUT_S = 420


def _multihost_config(source="synthetic_world"):
  from test_rl import micro_config
  cfg = micro_config()
  cfg.data.source = source
  cfg.data.synthetic.num_examples = 6
  cfg.rl.trajectories_per_step = 2      # one per process
  return cfg


# ----------------------------------------------------------------------------- the worker

def _worker(args) -> None:
  """One process of the 2 x 4 run: a Trainer step, its parameters, a data stream, a checkpoint."""
  import jax
  sys.path.insert(0, str(REPO / "tests"))
  from test_rl import latent_reward_stage     # imports conftest, which asks for 8 devices ...
  jax.config.update("jax_num_cpu_devices", args.local_devices)   # ... this process drives 4
  from wc_jax import distributed
  assert distributed.initialize(dict(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                                     process_id=args.process_id, initialization_timeout=60))
  from jax.experimental import multihost_utils
  from wc_jax import sharding
  from wc_jax.rl import data_source
  from wc_jax.rl.data_source import make_data
  from wc_jax.rl.trainer import Trainer
  t0 = time.time()
  cfg = _multihost_config()
  try:                                    # T = 1 cannot be split over 2 processes
    data_source.check_trajectories(1, jax.process_count())
    refused = ""
  except ValueError as e:
    refused = str(e)
  tr = Trainer(cfg, args.workdir, reward_stage=latent_reward_stage(), mesh=sharding.make_mesh({"data": 2, "fsdp": 4}))
  metrics = tr.step(1)
  t_step = time.time() - t0
  params = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in jax.tree.leaves(tr.state.params)]
  tr.ckpt.save(1, tr.state, tr.data)
  tr.ckpt.wait()
  stream = make_data(cfg, tr.mcfg)        # a fresh stream: this process's shard only
  ids = [next(stream).id for _ in range(2)]
  resumed = make_data(cfg, tr.mcfg)       # the trained stream's state, on a fresh stream
  resumed.set_state(json.loads(json.dumps(tr.data.get_state())))
  report = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                devices=jax.device_count(), local_devices=jax.local_device_count(), metrics=metrics,
                local_ids=tr.local_ids, rows=list(data_source.process_rows(tr.traj_sharding, 2)[jax.process_index()]),
                refused=refused, ids=ids, stream_state=stream.get_state(), data_state=tr.data.get_state(),
                resumed_id=next(resumed).id, step_seconds=t_step,
                param_devices=len(tr.state.params["double_blocks"]["img_mlp"]["fc1"]["kernel"].sharding.device_set))
  out = pathlib.Path(args.out)
  np.savez(out / f"params_{args.process_id}.npz", *params)
  (out / f"report_{args.process_id}.json").write_text(json.dumps(report))
  multihost_utils.sync_global_devices("wc_jax multihost test done")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(tmp_path, n=2):
  """Starts n workers on loopback; returns their Popen handles and log paths."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  procs = []
  for i in range(n):
    log = open(tmp_path / f"worker_{i}.log", "w")
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--process_id", str(i), "--num_processes", str(n),
           "--port", str(port), "--local_devices", str(8 // n), "--workdir", str(tmp_path / "run"),
           "--out", str(tmp_path)]
    procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)), log))
  return procs


def _wait(procs, tmp_path, timeout):
  """Waits for every worker; a failed or stuck one stops the others (they would wait forever)."""
  deadline = time.time() + timeout
  while any(p.poll() is None for p, _ in procs):
    failed = [p for p, _ in procs if p.poll() not in (None, 0)]
    if failed or time.time() > deadline:
      break
    time.sleep(1)
  for p, log in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
    log.close()
  logs = {i: (tmp_path / f"worker_{i}.log").read_text()[-3000:] for i in range(len(procs))}
  codes = [p.returncode for p, _ in procs]
  assert codes == [0] * len(procs), f"worker exit codes {codes} (timeout {timeout}s); logs:\n{logs}"


def test_two_processes_feed_their_own_trajectories_and_take_the_same_rl_step_as_one(tmp_path):
  import jax
  from test_rl import latent_reward_stage
  from wc_jax import sharding
  from wc_jax.rl import checkpoint as ckpt_lib
  from wc_jax.rl.data_source import make_data
  from wc_jax.rl.trainer import Trainer
  procs = _run_workers(tmp_path)
  try:
    # meanwhile, the same step on 1 process x 8 devices (this pytest process)
    cfg = _multihost_config()
    ref = Trainer(cfg, str(tmp_path / "ref"), reward_stage=latent_reward_stage(),
                  mesh=sharding.make_mesh({"data": 2, "fsdp": 4}))
    ref_metrics = ref.step(1)
    single = make_data(cfg, ref.mcfg)
    single_ids = [next(single).id for _ in range(6)]
  finally:
    _wait(procs, tmp_path, WORKER_TIMEOUT_S)
  reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
  for i, r in enumerate(reports):
    assert (r["process_index"], r["process_count"], r["devices"], r["local_devices"]) == (i, 2, 8, 4)
    assert r["param_devices"] == 8                       # FSDP shards span both processes
    assert "rl.trajectories_per_step=1 must be a positive multiple of the process count 2" in r["refused"]
    assert r["metrics"]["optimizer_step_applied"] == 1 and r["metrics"]["kept"] == 2 * 2
    assert r["metrics"]["trajectories"] == ref_metrics["trajectories"] == 2
    # process i read only stream position i (its own shard) and holds row i of the step's arrays
    assert r["rows"] == [i] and r["local_ids"] == [single_ids[i]]
    # the same two trajectories (positions 0, 1) and the same pooled rewards, loss and update
    assert r["metrics"]["trajectory"] == ref_metrics["trajectory"] == ",".join(single_ids[:2])
    for k in ("reward/fine_action/mean", "reward/fine_action/std_used", "reward/drift/mean", "loss", "grad_norm"):
      np.testing.assert_allclose(r["metrics"][k], ref_metrics[k], rtol=1e-5, err_msg=k)
    # advantages are rewards standardised over 8 candidates (std ~0.01): rounding grows 100x
    np.testing.assert_allclose(r["metrics"]["advantage/kept_mean"], ref_metrics["advantage/kept_mean"], atol=1e-5)
    # a fresh stream on process i is its shard: positions i, i + 2
    assert r["ids"] == [single_ids[i], single_ids[i + 2]]
    assert r["stream_state"]["consumed"] == 4 and r["stream_state"]["process_count"] == 2
    # after the step: global position 2, the same state on both; resumed, process i reads 2 + i
    assert r["data_state"] == {"source": "synthetic_world", "consumed": 2, "process_count": 2,
                               "iterator": {"next_index": 1}}
    assert r["resumed_id"] == single_ids[2 + i]
  ref_params = [np.asarray(x) for x in jax.tree.leaves(ref.state.params)]
  worst = 0.0
  for i in range(2):
    with np.load(tmp_path / f"params_{i}.npz") as z:
      got = [z[f"arr_{j}"] for j in range(len(z.files))]
    assert len(got) == len(ref_params)
    for x, y in zip(ref_params, got):   # different reduction orders: agree to 1e-6 of their scale
      np.testing.assert_allclose(y, x, atol=1e-6 * max(1.0, float(np.abs(x).max())))
      worst = max(worst, float(np.abs(y - x).max()) / max(1.0, float(np.abs(x).max())))
  rel = {k: abs(reports[0]["metrics"][k] - ref_metrics[k]) / max(abs(ref_metrics[k]), 1e-30)
         for k in ("reward/fine_action/mean", "reward/fine_action/std_used", "loss", "grad_norm")}
  print(f"2x4 vs 1x8, T=2: parameters max |diff| / max(1, scale) {worst:.2e}; metrics relative {rel}; "
        f"worker step {reports[0]['step_seconds']:.0f} s")
  # the 2-process stream state resumes a 1-process stream at the same global position
  single.set_state(reports[0]["stream_state"])
  assert next(single).id == single_ids[4]
  # the checkpoint the two processes wrote restores onto this process's 8 devices
  resumed = make_data(cfg, ref.mcfg)
  restored, next_step = ckpt_lib.Checkpointer(tmp_path / "run" / "checkpoints", cfg).restore_latest(
      ref.state, resumed)
  assert next_step == 2
  assert [e.id for e in resumed.local_examples(2)] == single_ids[2:4]   # one process continues at position 2
  for x, y in zip(jax.tree.leaves(ref.state.params), jax.tree.leaves(restored.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6 * max(1.0, float(np.abs(x).max())))


# ----------------------------------------------------------------------------- start-up decisions

def _plan(cfg=None, env=None, chips=0, workers=0):
  from wc_jax import distributed
  return distributed.plan(cfg, env or {}, tpu_chips=chips, metadata_workers=lambda e: workers)


def test_auto_initialises_only_on_multihost_tpu_or_explicit_clusters():
  assert not _plan().initialize                                         # laptop / single GPU box
  assert not _plan(chips=4, workers=1).initialize                       # single-host TPU VM
  p = _plan(chips=4, workers=4)
  assert p.initialize and p.kwargs == {"initialization_timeout": 300} and "4 workers" in p.reason
  assert _plan(env={"TPU_WORKER_HOSTNAMES": "w0,w1"}).initialize
  assert not _plan(env={"TPU_WORKER_HOSTNAMES": "w0"}).initialize
  assert _plan(env={"MEGASCALE_NUM_SLICES": "2"}).initialize
  assert _plan(env={"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1:8080"}).initialize
  p = _plan(dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1, local_device_ids="0, 1"))
  assert p.initialize and p.kwargs == dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
                                           local_device_ids=[0, 1], initialization_timeout=300)
  assert not _plan(dict(num_processes=1), env={"TPU_WORKER_HOSTNAMES": "w0,w1"}).initialize
  assert not _plan(dict(initialize="never"), chips=4, workers=4).initialize
  p = _plan(dict(initialize="always"))                # SLURM / Open MPI / k8s: JAX detects the rest
  assert p.initialize and p.kwargs == {"initialization_timeout": 300}


def test_config_sections_hold_the_defaults():
  from conftest import load_config
  from wc_jax import distributed
  for name in ("tiny", "hunyuan8b"):
    cfg = load_config(name)
    assert distributed._section(cfg.distributed) == distributed._DEFAULTS
    assert cfg.data.source == "synthetic_latents"


@pytest.mark.parametrize("cfg, message", [
    (dict(initialize="sometimes"), r"distributed.initialize must be one of \('auto', 'always', 'never'\), got 'sometimes'"),
    (dict(num_processes=2, process_id=2), "distributed.process_id 2 is not below distributed.num_processes 2"),
    (dict(num_processes=-1), r"distributed.num_processes must be >= 0 \(0 = detect\), got -1"),
    (dict(process_id=-2), r"distributed.process_id must be >= 0 \(or -1 = detect\), got -2"),
    (dict(coordinator_address="localhost"), "distributed.coordinator_address must be 'host:port'"),
    (dict(local_device_ids="0,x"), "distributed.local_device_ids must be comma-separated integers"),
    (dict(local_device_ids="1,1"), "distributed.local_device_ids must be distinct non-negative integers"),
    (dict(initialize="never", num_processes=4), "distributed.initialize='never' contradicts distributed.num_processes=4"),
    (dict(initialization_timeout=0), "distributed.initialization_timeout must be >= 1 second, got 0"),
    (dict(coordinator="a:1"), r"distributed.coordinator is not a setting; the settings are \["),
])
def test_bad_settings_are_named(cfg, message):
  with pytest.raises(ValueError, match=message):
    _plan(cfg)


def test_initialise_after_jax_started_is_refused():
  import jax
  from wc_jax import distributed
  jax.devices()
  assert distributed.initialize(dict(initialize="never"), {}) is False
  with pytest.raises(RuntimeError, match="jax.distributed must be initialised before JAX starts its backends "
                                         r"\(distributed.num_processes=2\)"):
    distributed.initialize(dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=0), {})


def test_metadata_query_is_skipped_off_tpu():
  from wc_jax import distributed
  assert distributed.tpu_metadata_workers({"TPU_SKIP_MDS_QUERY": "1"}) == 0
  assert distributed.tpu_metadata_workers({"GCE_METADATA_IP": "127.0.0.1:9"}, timeout=0.5) == 0   # nothing there


# ----------------------------------------------------------------------------- launch scripts

SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def test_launch_scripts_exist_and_parse():
  names = {p.name for p in SCRIPTS}
  assert {"create_tpu.sh", "install.sh", "run.sh", "delete_tpu.sh", "colab.sh"} <= names, names
  for p in SCRIPTS:
    r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{p.name}: {r.stderr}"
    assert p.name == "lib.sh" or os.access(p, os.X_OK), f"{p.name} is not executable"


@pytest.mark.parametrize("script, args, message", [
    ("create_tpu.sh", [], "usage: launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE"),
    ("create_tpu.sh", ["wc", "us-east5-a"], "usage: launch/create_tpu.sh"),
    ("create_tpu.sh", ["wc", "us-east5-a", "v5p-16", "--bogus"], "unknown option --bogus"),
    ("create_tpu.sh", ["wc", "us-east5-a", "tpu8"], "ACCELERATOR_TYPE must look like v4-8"),
    ("install.sh", ["wc"], "usage: launch/install.sh NAME ZONE"),
    ("install.sh", ["wc", "us-east5-a", "--from", "ftp://x"], "--from must be a git URL"),
    ("run.sh", ["wc", "us-east5-a", "tiny", "gs://b/r"], "CONFIG must be a config file"),
    ("run.sh", ["wc", "us-east5-a"], "usage: launch/run.sh NAME ZONE CONFIG WORKDIR"),
    ("run.sh", ["wc", "us-east5-a", "configs/tiny.py", "/tmp/x"], "WORKDIR must be shared by every worker"),
    ("delete_tpu.sh", [], "usage: launch/delete_tpu.sh NAME ZONE"),
    ("colab.sh", ["--bogus"], "usage: launch/colab.sh"),
])
def test_launch_scripts_print_usage_on_bad_arguments(script, args, message):
  r = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=30,
                     env=dict(os.environ, DRY_RUN="1"))
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert message in r.stderr, r.stderr


def test_launch_scripts_print_their_gcloud_commands_in_dry_run():
  env = dict(os.environ, DRY_RUN="1")
  r = subprocess.run(["bash", str(LAUNCH / "create_tpu.sh"), "wc", "us-east5-a", "v5p-16", "--version",
                      "v2-alpha-tpuv5", "--spot"], capture_output=True, text=True, timeout=30, env=env)
  assert r.returncode == 0, r.stderr
  assert ("gcloud compute tpus tpu-vm create wc --zone=us-east5-a --accelerator-type=v5p-16 "
          "--version=v2-alpha-tpuv5 --spot") in r.stdout
  r = subprocess.run(["bash", str(LAUNCH / "run.sh"), "wc", "us-east5-a", "configs/hunyuan8b.py", "gs://b/run",
                      "--config.rl.total_steps=10"], capture_output=True, text=True, timeout=30, env=env)
  assert r.returncode == 0, r.stderr
  assert "--worker=all" in r.stdout and "python -m wc_jax.train --config=configs/hunyuan8b.py" in r.stdout
  assert "--workdir=gs://b/run" in r.stdout and "--config.rl.total_steps=10" in r.stdout


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(description="worker of test_two_processes_take_the_same_rl_step_as_one")
  for flag, kind in (("--process_id", int), ("--num_processes", int), ("--port", int), ("--local_devices", int),
                     ("--workdir", str), ("--out", str)):
    parser.add_argument(flag, type=kind, required=True)
  _worker(parser.parse_args())
