"""What every entry point (`python -m wc_jax.<name>`) shares: flags, config loading and
checking, a quiet console, and one-line errors for bad input.

Several entry points are importable as libraries; absl flags are process-global, so each
flag is defined once, whoever asks first. `run(main)` replaces `absl.app.run(main)`:
flag and config problems, and `wc_jax.rl.config.ConfigError`s raised by `main`, end the process
with one line on stderr and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

# configs/ of the checkout this package runs from, so that the default --config works from any folder
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
_LOG_FORMAT = "%(asctime)s %(message)s"


class UsageError(Exception):
  """Bad command-line input: reported as one line, exit status 2."""


def config_path(name: str) -> str:
  """`configs/tiny.py` relative to the checkout, absolute (works from any working directory)."""
  p = pathlib.Path(name)
  if not p.is_absolute() and not p.exists() and (CONFIG_DIR.parent / p).exists():
    return str(CONFIG_DIR.parent / p)
  return str(p)


_DEFINE_ERROR: list[str] = []   # a --config.<key> override that failed when the flag was defined


def config_flag(default: str):
  """The `--config` flag (an ml_collections config file, overridable with --config.x.y=...)."""
  if "config" not in flags.FLAGS:
    try:
      config_flags.DEFINE_config_file("config", config_path(default), "ml_collections config file (get_config())")
    except (AttributeError, KeyError) as e:   # ml_collections reads the overrides from sys.argv here
      _DEFINE_ERROR.append(_unknown_override(sys.argv, config_path(default)) or f"bad --config override: {e}")
  return load_config


def flag(kind: str, name: str, default, help_text: str):
  """An absl flag of `kind` (string, integer, float, bool, ...), defined once; returns its getter."""
  if name not in flags.FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text)
  return lambda: getattr(flags.FLAGS, name)


def string_flag(name: str, default: str, help_text: str):
  return flag("string", name, default, help_text)


def _config_filename() -> str:
  try:
    return config_flags.get_config_filename(flags.FLAGS["config"])
  except Exception:  # noqa: BLE001 - only used in a message
    return "?"


def load_config():
  """The parsed `--config`, or UsageError naming the file and what went wrong."""
  if _DEFINE_ERROR:
    raise UsageError(_DEFINE_ERROR[0])
  try:
    cfg = flags.FLAGS.config
    cfg.keys()        # a file that failed to load raises here, not above
    return cfg
  except Exception as e:  # noqa: BLE001 - ml_collections defers load errors to first access
    name = _config_filename()
    if name != "?" and not os.path.exists(name.split(":")[0]):
      where = f" (looked in {os.getcwd()} and {CONFIG_DIR.parent})" if not os.path.isabs(name) else ""
      raise UsageError(f"--config={name}: no such file{where}") from None
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    raise UsageError(f"--config={name} could not be loaded: {lines[-1] if lines else type(e).__name__}") from None


def _load_config_file(path: str):
  spec = importlib.util.spec_from_file_location("wc_jax_cli_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _unknown_override(argv, default: str = "?") -> str | None:
  """The first `--config.a.b=...` argument naming a setting the config file does not have."""
  name = _config_filename() if "config" in flags.FLAGS else default
  for arg in argv:
    if arg.startswith("--config="):
      name = arg.split("=", 1)[1]
  try:
    cfg = _load_config_file(config_path(name))
  except Exception:  # noqa: BLE001 - then the load error is what gets reported
    return None
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node = cfg
    for i, part in enumerate(key.split(".")):
      try:
        node = node[part]
      except (KeyError, TypeError, IndexError):
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        where = ".".join(key.split(".")[:i]) or "the config"
        return f"--config.{key}: {where} has no setting {part!r}" + (f"; it has {known}" if known else "")
  return None


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise UsageError(f"{e}\n(--helpshort lists the flags)") from None
  except (AttributeError, KeyError) as e:   # --config.<unknown key>=...
    raise UsageError(_unknown_override(argv) or f"bad --config override: {e}") from None


# ----------------------------------------------------------------------------- console

def quiet_tpu_probe() -> None:
  """On a machine without TPU chips, keep JAX from starting libtpu (it prints an alarming
  'unexpected worker hostname' block when the `[tpu]` extra is installed). JAX_PLATFORMS
  set by the user always wins; GPU machines are left alone."""
  if os.environ.get("JAX_PLATFORMS") or "jax" in sys.modules and _backends_started():
    return
  if importlib.util.find_spec("libtpu") is None:
    return
  from wc_jax.distributed import local_tpu_chips
  if local_tpu_chips() > 0:
    return
  if any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                            "jax_rocm60_plugin", "jax_rocm7_plugin")):
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_platforms", "cpu")


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge._backends)
  except Exception:  # noqa: BLE001 - private API moved: assume started, change nothing
    return True


def setup_console() -> None:
  """Our progress lines at INFO, third-party logs (Orbax, JAX, absl) at WARNING.

  absl's `--verbosity` (`-v`) chooses: -1 only our warnings, 0 (default) our progress, 1 also
  third-party INFO (e.g. Orbax's per-save lines), 2 debug."""
  verbosity = flags.FLAGS["verbosity"].value if flags.FLAGS["verbosity"].present else 0
  ours = logging.WARNING if verbosity < 0 else (logging.DEBUG if verbosity >= 2 else logging.INFO)
  theirs = logging.DEBUG if verbosity >= 2 else (logging.INFO if verbosity >= 1 else logging.WARNING)
  absl_logging.set_verbosity({logging.DEBUG: absl_logging.DEBUG, logging.INFO: absl_logging.INFO,
                              logging.WARNING: absl_logging.WARNING}[theirs])
  logging.getLogger().setLevel(theirs)
  for name in ("jax", "orbax", "absl", "tensorstore", "grain"):
    logging.getLogger(name).setLevel(theirs)
  ours_logger = logging.getLogger("wc_jax")
  ours_logger.setLevel(ours)
  if not any(getattr(h, "_wc_jax", False) for h in ours_logger.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
    handler._wc_jax = True   # noqa: SLF001 - marks the handler as ours
    ours_logger.addHandler(handler)
  ours_logger.propagate = False


def fail(message: str, status: int = 2):
  """One line on stderr, then exit."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def run(main) -> None:
  """absl.app.run with one-line errors for bad flags, configs and workdirs."""
  from wc_jax.rl.config import ConfigError

  def wrapped(argv):
    try:
      setup_console()
      quiet_tpu_probe()
      return main(argv)
    except (UsageError, ConfigError) as e:
      fail(str(e))

  def parser(argv):
    try:
      if _DEFINE_ERROR:
        raise UsageError(_DEFINE_ERROR[0])
      return _parse_flags(argv)
    except UsageError as e:
      fail(str(e))

  sys.argv = [f"--config={config_path(a.split('=', 1)[1])}" if a.startswith("--config=") else a for a in sys.argv]
  app.run(wrapped, flags_parser=parser)
