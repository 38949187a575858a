"""Entry points a new user meets: bad input fails at once with one line that names it and
leaves nothing behind; the console stays readable; outputs are strict JSON with normal modes."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_config
from wc_jax import progress
from wc_jax.rl import config as run_config
from wc_jax.rl.logging_utils import MetricsWriter, strict_json


def _cli(args, cwd, env_extra=None, module="wc_jax.train"):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def _one_error_line(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert len(errors) == 1, proc.stderr
  assert "building" not in proc.stderr          # nothing was built before the check
  return errors[0]


@pytest.mark.parametrize("override, message", [
    ("--config.rl.group_size=0", "error: config rl.group_size = 0: must be an integer >= 2"),
    ("--config.optim.lr=-0.001", "error: config optim.lr = -0.001: must be a finite number > 0"),
    ("--config.rl.best_of_n=14", "error: config rl.best_of_n = 14: must be <= rl.group_size (12)"),
    ("--config.rl.groupsize=4", "error: --config.rl.groupsize: rl has no setting 'groupsize'"),
    ("--config.model.attention_impl=flash", "error: config model.attention_impl = 'flash': must be one of"),
])
def test_bad_value_fails_before_anything_is_built(tmp_path, override, message):
  workdir = tmp_path / "run"
  proc = _cli([f"--workdir={workdir}", override], cwd=tmp_path)   # outside the checkout, default --config
  assert _one_error_line(proc).startswith(message)
  assert os.listdir(tmp_path) == []


def test_missing_config_file_is_named(tmp_path):
  proc = _cli([f"--workdir={tmp_path / 'run'}", "--config=configs/nope.py"], cwd=tmp_path)
  line = _one_error_line(proc)
  assert line.startswith("error: --config=configs/nope.py: no such file") and str(REPO) in line
  assert not (tmp_path / "run").exists()


def test_relative_config_path_works_outside_the_checkout(tmp_path):
  # configs/tiny.py does not exist in tmp_path: it is found in the checkout, then validated
  proc = _cli([f"--workdir={tmp_path / 'run'}", "--config=configs/tiny.py", "--config.checkpoint.every=0"],
              cwd=tmp_path)
  assert _one_error_line(proc) == "error: config checkpoint.every = 0: must be an integer >= 1"


def test_workdir_under_a_file_is_refused(tmp_path):
  (tmp_path / "a_file").write_text("keep me")
  proc = _cli([f"--workdir={tmp_path / 'a_file' / 'run'}"], cwd=tmp_path)
  assert "is a file, not a folder" in _one_error_line(proc)
  assert (tmp_path / "a_file").read_text() == "keep me" and os.listdir(tmp_path) == ["a_file"]


def test_unwritable_workdir_is_refused(tmp_path, monkeypatch):
  parent = tmp_path / "ro"
  parent.mkdir()
  real_access = os.access
  monkeypatch.setattr(run_config.os, "access", lambda p, mode: False if pathlib.Path(p) == parent
                      else real_access(p, mode))       # root ignores chmod: simulate a read-only folder
  with pytest.raises(run_config.ConfigError, match=r"--workdir = '.*ro/run': cannot be created: .*ro is not writable"):
    run_config.check_workdir(str(parent / "run"))
  with pytest.raises(run_config.ConfigError, match=r"--workdir = '.*ro': is not writable"):
    run_config.check_workdir(str(parent))
  assert os.listdir(parent) == []
  run_config.check_workdir(str(tmp_path / "new" / "deeper"))     # creatable: fine, and not created
  assert not (tmp_path / "new").exists()


def test_shipped_configs_are_valid():
  for name in ("tiny", "hunyuan8b", "synthetic"):
    run_config.validate(load_config(name))
  run_config.validate(load_config("tiny"), required=run_config.TRAIN_SECTIONS, rewards=run_config.TRAINER_REWARDS)


@pytest.mark.parametrize("key, value, message", [
    ("model.heads", 3, "model = '...': hidden_size 64 must be divisible by heads 3"),
    ("model.checkpoint", "/no/such/ckpt", "model.checkpoint = '/no/such/ckpt': no such file or folder"),
    ("model.dtype", "fp8", "model.dtype = 'fp8': must be one of ('float32', 'bfloat16', 'float16')"),
    ("sampling.recent_context_frames", -1, "sampling.recent_context_frames = -1: must be an integer >= 0"),
    ("sampling.shift", 0.0, "sampling.shift = 0.0: must be a finite number > 0"),
    ("rl.std_type", "batch", "rl.std_type = 'batch': must be one of ('global', 'group', 'group_max', 'sample'"),
    ("rl.curriculum", "max2min", "rl.curriculum = 'max2min': must be one of ('min2max', 'fixed', 'random')"),
    ("rl.sigma_fraction", 1.5, "rl.sigma_fraction = 1.5: must be a finite number > 0 and <= 1"),
    ("rl.policy_ema", (0.2, 0.01), "rl.policy_ema = (0.2, 0.01): must be a tuple of 3 numbers in [0, 1]"),
    ("optim.b2", 1.0, "optim.b2 = 1.0: must be a finite number >= 0 and < 1"),
    ("optim.grad_accum", 0, "optim.grad_accum = 0: must be an integer >= 1"),
    ("optim.lr", float("nan"), "optim.lr = nan: must be a finite number > 0"),
    ("checkpoint.keep", 0, "checkpoint.keep = 0: must be an integer >= 1"),
    ("data.source", "webdataset", "data.source = 'webdataset': must be one of ('synthetic_latents'"),
    ("distributed.initialize", "sometimes", "distributed.initialize must be one of ('auto', 'always', 'never')"),
    ("seed", -1, "seed = -1: must be an integer >= 0"),
])
def test_validation_names_key_value_and_what_is_allowed(key, value, message):
  cfg = load_config("tiny")
  node = cfg
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type() if hasattr(node, "ignore_type") else _nullcontext():
    node[leaf] = value
  with pytest.raises(run_config.ConfigError) as e:
    run_config.validate(cfg, required=run_config.TRAIN_SECTIONS)
  assert message in str(e.value)


def _nullcontext():
  import contextlib
  return contextlib.nullcontext()


def test_cross_checks_and_reward_names():
  cfg = load_config("tiny")
  cfg.mesh.data = -1
  with pytest.raises(run_config.ConfigError, match=r"at most one axis may be -1.*\['data', 'fsdp'\]"):
    run_config.validate(cfg)
  cfg = load_config("tiny")
  cfg.data.source = "records"
  with pytest.raises(run_config.ConfigError, match=r"data.path = '': data.source='records' needs the TFDS folder"):
    run_config.validate(cfg)
  cfg = load_config("tiny")
  cfg.rewards.weights.hpsv3 = 1.0
  with pytest.raises(run_config.ConfigError, match=r"rewards.weights.hpsv3 = 1.0: is not a reward this entry point "
                                                   r"can build; choose from \('fine_action', 'action', 'drift', "
                                                   r"'quality', 'embedding_similarity', 'idm'\)"):
    run_config.validate(cfg, rewards=run_config.TRAINER_REWARDS)
  with pytest.raises(run_config.ConfigError, match=r"config rl = None: this entry point needs a `rl` section"):
    cfg = load_config("tiny")
    del cfg["rl"]
    run_config.validate(cfg, required=("rl",))


def test_metrics_are_strict_json(tmp_path):
  w = MetricsWriter(tmp_path, 2, progress=False)
  w.write(1, {"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "kept": 6})
  w.close()
  line = (tmp_path / "metrics.jsonl").read_text().strip()
  assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {line}")) == {
      "step": 1, "loss": None, "grad_norm": None, "kept": 6}
  (tmp_path / "loose").mkdir()
  w = MetricsWriter(tmp_path / "loose", 2, progress=False, nan_as_null=False)
  w.write(1, {"loss": float("nan")})
  w.close()
  assert (tmp_path / "loose" / "metrics.jsonl").read_text().strip() == '{"loss": NaN}'
  assert strict_json({"a": 1.5, "b": float("-inf")}) == {"a": 1.5, "b": None}


def test_phase_logs_and_lets_ctrl_c_stop_at_once(caplog):
  before = signal.getsignal(signal.SIGINT)
  with caplog.at_level(logging.INFO, logger="wc_jax"):
    with progress.phase("compiling", "for v5p:2x2x4"):
      assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is before
  assert caplog.messages[0] == "compiling (for v5p:2x2x4) ..."
  assert caplog.messages[1].startswith("compiling: ") and caplog.messages[1].endswith(" s")
  assert progress.size_note(8_558_000_000, 4, "cpu") == ("8.56 B parameters, 31.9 GiB; full size on a CPU: "
                                                        "expect minutes")
  assert progress.size_note(510_000, 4, "tpu") == "0.51 M parameters, 1.9 MiB"


def test_sigint_inside_a_phase_ends_the_process(tmp_path):
  script = ("import os, signal, time\nfrom wc_jax.progress import phase\n"
            "with phase('long compile'):\n  os.kill(os.getpid(), signal.SIGINT)\n  time.sleep(30)\nprint('survived')\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
  assert proc.returncode == -signal.SIGINT and "survived" not in proc.stdout


def test_exported_safetensors_get_the_usual_file_mode(tmp_path):
  from wc_jax.convert.common import save_torch_safetensors
  old = os.umask(0o022)
  try:
    paths = save_torch_safetensors({"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}, tmp_path / "one", {})
    paths += save_torch_safetensors({"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}, tmp_path / "two", {},
                                    max_shard_bytes=16)
  finally:
    os.umask(old)
  assert len(paths) == 3
  for p in paths + [tmp_path / "one" / "config.json"]:
    assert oct(os.stat(p).st_mode & 0o777) == "0o644", p


_CONSOLE_SCRIPT = """
import jax, numpy as np, orbax.checkpoint as ocp
from wc_jax import cli
def main(argv):
  print("platform", jax.default_backend())
  with ocp.CheckpointManager("{dir}") as m:
    m.save(1, args=ocp.args.StandardSave({{"w": np.ones(3)}}))
    m.wait_until_finished()
  import logging
  logging.getLogger("wc_jax.train").info("our progress line")
cli.run(main)
"""


@pytest.mark.parametrize("verbosity", [None, "1"])
def test_console_keeps_third_party_info_logs_and_libtpu_quiet(tmp_path, verbosity):
  script = tmp_path / "console.py"
  script.write_text(_CONSOLE_SCRIPT.format(dir=tmp_path / "ckpt"))
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}   # as a user's shell: nothing set
  args = [sys.executable, str(script)] + ([f"--verbosity={verbosity}"] if verbosity else [])
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "our progress line" in proc.stderr
  assert "unexpected worker hostname" not in proc.stderr and "E0000" not in proc.stderr
  orbax_info = [ln for ln in proc.stderr.splitlines() if "checkpoint_manager.py" in ln]
  if verbosity is None:
    assert orbax_info == [], proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
  else:
    assert orbax_info, proc.stderr
