"""Multi-host start-up: `jax.distributed.initialize` from the environment or from a config.

Why: on a TPU pod slice (or a GPU cluster) every host runs the same program, and JAX must
join the process group before it touches a device. `python -m wc_jax.train` therefore calls
`initialize(cfg.distributed)` before anything else.

The config section (every field optional; a config without it means "auto"):

    c.distributed = ml_collections.ConfigDict(dict(
        initialize="auto",        # auto | always | never
        coordinator_address="",   # "host:port" of process 0; "" = detect
        num_processes=0,          # 0 = detect; 1 = one process; > 1 = explicit cluster
        process_id=-1,            # -1 = detect
        local_device_ids="",      # "0,1,2,3": devices this process drives (GPU hosts); "" = all
        initialization_timeout=300))

* auto: initialise when `num_processes` > 1 is configured, or when the environment says
  this is one host of a multi-host TPU slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES
  with several hosts, multislice MEGASCALE_* variables, or the TPU VM metadata listing
  several workers). A single-host TPU VM, a laptop or a single GPU box runs without it.
* always: call `jax.distributed.initialize` with whatever is configured; JAX's own cluster
  detection (TPU, SLURM, Open MPI, Kubernetes) fills in the rest.
* never: do not initialise.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Callable, Mapping

log = logging.getLogger("wc_jax.distributed")

MODES = ("auto", "always", "never")
_DEFAULTS = dict(initialize="auto", coordinator_address="", num_processes=0, process_id=-1,
                 local_device_ids="", initialization_timeout=300)
_METADATA_URL = ("http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize` will do: call jax.distributed.initialize(**kwargs) or not, and why."""
  initialize: bool
  kwargs: dict
  reason: str


def _section(cfg) -> dict:
  """The config section as a plain dict with defaults (accepts a ConfigDict, dict or None)."""
  out = dict(_DEFAULTS)
  if cfg is None:
    return out
  items = cfg.items() if hasattr(cfg, "items") else dict(cfg).items()
  for k, v in items:
    if k not in _DEFAULTS:
      raise ValueError(f"distributed.{k} is not a setting; the settings are {sorted(_DEFAULTS)}")
    out[k] = v
  return out


def _parse_device_ids(value) -> list[int] | None:
  if value in (None, "", ()):
    return None
  if isinstance(value, str):
    parts = [p.strip() for p in value.split(",")]
  else:
    parts = list(value)
  try:
    ids = [int(p) for p in parts]
  except (TypeError, ValueError):
    raise ValueError(f"distributed.local_device_ids must be comma-separated integers like '0,1,2,3', "
                     f"got {value!r}") from None
  if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
    raise ValueError(f"distributed.local_device_ids must be distinct non-negative integers, got {value!r}")
  return ids


def _explicit_kwargs(s: dict) -> dict:
  """jax.distributed.initialize keyword arguments from the configured fields (validated)."""
  kwargs: dict[str, Any] = {}
  n, pid, addr = int(s["num_processes"]), int(s["process_id"]), str(s["coordinator_address"])
  if n < 0:
    raise ValueError(f"distributed.num_processes must be >= 0 (0 = detect), got {n}")
  if pid < -1:
    raise ValueError(f"distributed.process_id must be >= 0 (or -1 = detect), got {pid}")
  if n and pid >= n:
    raise ValueError(f"distributed.process_id {pid} is not below distributed.num_processes {n}")
  if addr:
    if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", addr):
      raise ValueError(f"distributed.coordinator_address must be 'host:port' (e.g. 10.0.0.2:8476), "
                       f"got {addr!r}")
    kwargs["coordinator_address"] = addr
  if n:
    kwargs["num_processes"] = n
  if pid >= 0:
    kwargs["process_id"] = pid
  ids = _parse_device_ids(s["local_device_ids"])
  if ids is not None:
    kwargs["local_device_ids"] = ids
  timeout = int(s["initialization_timeout"])
  if timeout < 1:
    raise ValueError(f"distributed.initialization_timeout must be >= 1 second, got {timeout}")
  kwargs["initialization_timeout"] = timeout
  return kwargs


def validate(cfg) -> None:
  """Raises ValueError naming the first bad `distributed` setting (reads no environment)."""
  s = _section(cfg)
  if s["initialize"] not in MODES:
    raise ValueError(f"distributed.initialize must be one of {MODES}, got {s['initialize']!r}")
  _explicit_kwargs(s)


def _host_count(value: str | None) -> int:
  return len([h for h in (value or "").split(",") if h.strip()])


def tpu_metadata_workers(environ: Mapping[str, str], timeout: float = 2.0) -> int:
  """Workers in this TPU slice from the GCE metadata server (0 when it cannot be asked)."""
  if environ.get("TPU_SKIP_MDS_QUERY"):
    return 0
  import urllib.request
  url = _METADATA_URL.format(host=environ.get("GCE_METADATA_IP", "metadata.google.internal"))
  req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
      return _host_count(resp.read().decode())
  except Exception as e:  # no metadata server: not a Cloud TPU VM, or no network
    log.debug("TPU metadata query failed: %s", e)
    return 0


def local_tpu_chips() -> int:
  """TPU chips on this host, read from the PCI bus (does not start a JAX backend)."""
  try:
    from jax._src import hardware_utils
    return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
  except Exception:  # pragma: no cover - private API moved
    return 0


def detect_multihost_tpu(environ: Mapping[str, str], *, tpu_chips: int | None = None,
                         metadata_workers: Callable[[Mapping[str, str]], int] = tpu_metadata_workers
                         ) -> str | None:
  """Why the environment looks like one host of a multi-host TPU slice, or None."""
  for var in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
    if _host_count(environ.get(var)) > 1:
      return f"{var} lists {_host_count(environ.get(var))} hosts"
  if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "MEGASCALE_COORDINATOR_ADDRESS is set (multislice)"
  slices = environ.get("MEGASCALE_NUM_SLICES", "")
  if slices.isdigit() and int(slices) > 1:
    return f"MEGASCALE_NUM_SLICES={slices} (multislice)"
  chips = local_tpu_chips() if tpu_chips is None else tpu_chips
  if chips:
    workers = metadata_workers(environ)
    if workers > 1:
      return f"the TPU VM metadata lists {workers} workers"
  return None


def plan(cfg=None, environ: Mapping[str, str] | None = None, *, tpu_chips: int | None = None,
         metadata_workers: Callable[[Mapping[str, str]], int] = tpu_metadata_workers) -> Plan:
  """Decides whether and how to call jax.distributed.initialize (no side effects)."""
  s = _section(cfg)
  environ = os.environ if environ is None else environ
  mode = s["initialize"]
  if mode not in MODES:
    raise ValueError(f"distributed.initialize must be one of {MODES}, got {mode!r}")
  kwargs = _explicit_kwargs(s)
  n = int(s["num_processes"])
  if mode == "never":
    if n > 1:
      raise ValueError(f"distributed.initialize='never' contradicts distributed.num_processes={n}")
    return Plan(False, {}, "distributed.initialize='never'")
  if mode == "always":
    return Plan(True, kwargs, "distributed.initialize='always'")
  if n > 1:
    return Plan(True, kwargs, f"distributed.num_processes={n}")
  if n == 1:
    return Plan(False, {}, "distributed.num_processes=1")
  reason = detect_multihost_tpu(environ, tpu_chips=tpu_chips, metadata_workers=metadata_workers)
  if reason:
    return Plan(True, kwargs, f"multi-host TPU: {reason}")
  return Plan(False, {}, "single host (no multi-host environment detected)")


def any_process(flag: bool) -> bool:
  """True on every process when it is True on any (so that all processes take the same branch)."""
  import jax
  if jax.process_count() == 1:
    return bool(flag)
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def is_initialized() -> bool:
  from jax._src import distributed as jax_distributed
  return jax_distributed.global_state.client is not None


def initialize(cfg=None, environ: Mapping[str, str] | None = None, **plan_kwargs) -> bool:
  """Joins the process group when `plan` says so; returns whether JAX is multi-process now.

  Call it before any JAX computation (JAX fixes its devices on first use). Calling it again
  after a successful initialisation does nothing.
  """
  p = plan(cfg, environ, **plan_kwargs)
  if is_initialized():
    return True
  if not p.initialize:
    log.info("jax.distributed not initialised: %s", p.reason)
    return False
  import jax
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    raise RuntimeError(f"jax.distributed must be initialised before JAX starts its backends "
                       f"({p.reason}), but a JAX computation already ran in this process; call "
                       f"wc_jax.distributed.initialize first")
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # older JAX: none by default on CPU
  log.info("jax.distributed.initialize(%s): %s", p.kwargs, p.reason)
  jax.distributed.initialize(**p.kwargs)
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return True
