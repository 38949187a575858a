"""The tree's shape, enforced: layers import only downward (import-linter, `.importlinter`),
no module reaches into another module's private names, and ruff passes (`ruff.toml`)."""
import ast
import configparser
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "wc_jax"


def test_import_layers_hold():
  exe = shutil.which("lint-imports")
  if exe is None:
    pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
  proc = subprocess.run([exe, "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "0 broken" in proc.stdout


def test_every_top_level_module_is_in_a_layer():
  """A new module must be placed in the map, or the contract would not see it."""
  cfg = configparser.ConfigParser()
  cfg.read(REPO / ".importlinter")
  layers = cfg["importlinter:contract:core-layers"]["layers"]
  named = {name.strip() for line in layers.splitlines() for name in line.split("|") if name.strip()}
  named.add("wc_jax.world")        # the study beside the core: its own contract
  here = {f"wc_jax.{p.stem}" for p in PACKAGE.iterdir()
          if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
  assert here <= named, f"not in .importlinter's layers: {sorted(here - named)}"


def _private_cross_module_uses(path: pathlib.Path, root: pathlib.Path = REPO) -> list[str]:
  """`from wc_jax.a import _x` or `a._x` where `a` is another wc_jax package's module."""
  rel = path.relative_to(root).with_suffix("")
  me = ".".join(rel.parts)
  my_package = ".".join(rel.parts[:2])          # e.g. wc_jax.rewards
  tree = ast.parse(path.read_text(), str(path))
  modules = {}                                   # local name -> imported wc_jax module
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wc_jax"):
      other_package = ".".join(node.module.split(".")[:2])
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if alias.name.startswith("_") and not alias.name.startswith("__") and other_package != my_package:
          out.append(f"{me}:{node.lineno} imports {full}")
        modules[alias.asname or alias.name] = full
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("wc_jax"):
          modules[alias.asname or alias.name.split(".")[0]] = alias.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name) and node.value.id in modules):
      target = modules[node.value.id]
      if ".".join(target.split(".")[:2]) != my_package:
        out.append(f"{me}:{node.lineno} uses {target}.{node.attr}")
  return out


def test_no_private_cross_module_imports():
  found = [u for p in sorted(PACKAGE.rglob("*.py")) for u in _private_cross_module_uses(p)]
  assert found == [], "private names used across packages (make them public or move them):\n" + "\n".join(found)


def test_private_use_detector_catches_both_forms(tmp_path):
  pkg = tmp_path / "wc_jax" / "zz_probe"
  pkg.mkdir(parents=True)
  (pkg / "m.py").write_text("from wc_jax.sharding import _hidden\nfrom wc_jax import sharding\nsharding._fit(1)\n"
                            "from wc_jax.zz_probe import _ok\nsharding.__name__\n")
  found = _private_cross_module_uses(pkg / "m.py", root=tmp_path)
  assert found == ["wc_jax.zz_probe.m:1 imports wc_jax.sharding._hidden", "wc_jax.zz_probe.m:3 uses wc_jax.sharding._fit"]


def test_ruff_passes():
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  if "No module named ruff" in proc.stderr:
    pytest.fail("ruff is not installed: pip install -e '.[dev]'")
  assert proc.returncode == 0, proc.stdout[-4000:]
