"""Every test sees 8 simulated CPU devices, set before JAX initialises a backend."""
import os
import pathlib

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  """The reference fixtures committed under tests/fixtures (see tests/fixtures/PROVENANCE.md).

  WC_JAX_FIXTURES=/path/to/fixtures runs the same tests against another fixture root
  with the same layout (worldplay/dit, rewards/labels, ...).
  """
  env = os.environ.get("WC_JAX_FIXTURES")
  d = pathlib.Path(env).expanduser() if env else FIXTURES
  if not d.is_dir():
    where = f"WC_JAX_FIXTURES={env}" if env else "the repository's tests/fixtures"
    pytest.fail(f"reference fixtures not found: {d} ({where}) is not a directory. "
                "They are part of the repository; restore tests/fixtures "
                "(e.g. `git checkout -- tests/fixtures`) or point WC_JAX_FIXTURES at a fixture root.")
  return d


def load_config(name: str):
  """configs/<name>.py's get_config(), loaded by path like config_flags does."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"wc_jax_config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class DictSource:
  """A converter TensorSource over an in-memory dict of arrays (fixture weights, edited to test
  the converters' errors)."""

  def __init__(self, tensors):
    self.t = tensors

  def keys(self):
    return list(self.t)

  def shape(self, k):
    return tuple(self.t[k].shape)

  def get(self, k):
    return self.t[k]
