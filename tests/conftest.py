"""Every test sees 8 simulated CPU devices, set before JAX initialises a backend."""
import os
import pathlib

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_dir() -> pathlib.Path:
  """shared/ sits beside the checkout (../shared) or inside it; WC_JAX_SHARED overrides."""
  env = os.environ.get("WC_JAX_SHARED")
  candidates = [pathlib.Path(env)] if env else []
  candidates += [REPO / "shared", REPO.parent / "shared"]
  for c in candidates:
    if (c / "fixtures").is_dir():
      return c
  return candidates[-1]


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  d = _shared_dir() / "fixtures"
  if not d.is_dir():
    pytest.fail(f"reference fixtures not found (looked for {d}); set WC_JAX_SHARED")
  return d


def load_config(name: str):
  """configs/<name>.py's get_config(), loaded by path like config_flags does."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"wc_jax_config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
