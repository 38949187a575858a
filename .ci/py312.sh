#!/usr/bin/env bash
# The Python 3.12 CI job (run by .ci/tests after the suite on the CI's own Python, 3.11).
# jax >= 0.11 needs Python >= 3.12, so this is where the newest jax/flax/orbax get tested:
#   1. finds a Python 3.12 (WC_JAX_PY312, python3.12 on PATH, pyenv, `uv python find 3.12`) and
#      fails with a message when there is none (never a silent skip);
#   2. makes a fresh venv and installs `.[dev]` with `--upgrade-strategy eager`: the newest
#      versions setup.py's pins allow; prints them, and warns loudly when the package index
#      serves a jax/flax/orbax newer than the pins allow (the pins are then behind);
#   3. runs a subset of the suite: layering and ruff, the doctor, the DiT's reference parity,
#      sharding and Orbax conversion, one RL step, a killed run resuming exactly, Orbax's
#      fallback past a damaged step, a preemption save, generate, the notebook's static checks
#      and device cell (WC_JAX_PY312_NOTEBOOK=1: the notebook executed end to end as well).
#
#   bash .ci/py312.sh [--reuse] [PYTEST_ARGS...]
#     --reuse   keep an existing venv (local reruns; CI always starts fresh)
#   env: WC_JAX_PY312 (an interpreter), WC_JAX_PY312_VENV (default ${TMPDIR:-/tmp}/wc_jax_py312_venv),
#        WC_JAX_PY312_NOTEBOOK=1 (also execute the notebook)
set -euo pipefail
cd "$(dirname "$0")/.."
REUSE=0
if [[ "${1:-}" == "--reuse" ]]; then REUSE=1; shift; fi
VENV="${WC_JAX_PY312_VENV:-${TMPDIR:-/tmp}/wc_jax_py312_venv}"
t0=$SECONDS

is312() { [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
find_python() {
  local c
  for c in "${WC_JAX_PY312:-}" "$(command -v python3.12 || true)"; do
    if is312 "$c"; then echo "$c"; return; fi      # (a pyenv shim for an unselected version fails here)
  done
  if command -v pyenv >/dev/null 2>&1 || [[ -d "${PYENV_ROOT:-$HOME/.pyenv}/versions" ]]; then
    local root
    root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for c in $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do
      if is312 "$c"; then echo "$c"; return; fi
    done
  fi
  if command -v uv >/dev/null 2>&1; then
    c="$(uv python find 3.12 2>/dev/null || true)"
    if is312 "$c"; then echo "$c"; return; fi
  fi
}
PY="$(find_python)"
if [[ -z "$PY" ]]; then
  echo "ERROR: the Python 3.12 job needs a Python 3.12 and found none (looked at WC_JAX_PY312," \
       "python3.12 on PATH, pyenv's versions/3.12*, \`uv python find 3.12\`)." >&2
  echo "       Install one (pyenv install 3.12, uv python install 3.12, apt install python3.12)" \
       "or set WC_JAX_PY312=/path/to/python3.12." >&2
  exit 2
fi
echo "Python 3.12 job: $PY ($("$PY" --version 2>&1)), venv $VENV"

if [[ $REUSE == 0 || ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv --clear "$VENV"
  quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }   # this image's pip.conf noise
  quiet "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # eager: every dependency at the newest version the pins allow, not what a cache happens to hold
  quiet "$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
fi
echo "installed in $((SECONDS - t0)) s:"
"$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md
import json
import subprocess
import sys

names = ("jax", "jaxlib", "flax", "orbax-checkpoint", "optax", "grain", "numpy", "tensorstore", "nbclient")
have = {n: md.version(n) for n in names}
print(f"  python {sys.version.split()[0]}; " + ", ".join(f"{n} {v}" for n, v in have.items()))
behind = []
for n in ("jax", "flax", "orbax-checkpoint"):
  r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", n], capture_output=True, text=True)
  line = next((x for x in r.stdout.splitlines() if x.startswith(n)), "")
  newest = line[line.find("(") + 1:line.find(")")] if "(" in line else ""
  if not newest:
    print(f"  (could not ask the package index for {n}'s newest version: {r.stderr.strip()[-200:]})")
  elif newest != have[n]:
    behind.append(f"{n}: the index serves {newest}, setup.py's pins resolve {have[n]}")
  else:
    print(f"  {n} {have[n]} is the newest the index serves for Python 3.12")
if behind:
  bar = "!" * 100
  print(f"{bar}\nWARNING: setup.py's pins are behind the package index (this job tested the pinned versions):")
  for b in behind:
    print("  " + b)
  print(f"Widen the pins in setup.py, rerun this job, fix what breaks.\n{bar}")
PYEOF

export JAX_PLATFORMS=cpu
TESTS=(
  tests/test_layering.py                      # import-linter contracts, ruff
  tests/test_doctor.py                        # versions, platform, --expect
  tests/test_dit.py::test_every_recorded_call_matches_reference    # DiT parity with the reference fixture
  tests/test_dit.py::test_sharded_forward_equals_single_device     # shardings on 8 CPU devices
  tests/test_dit.py::test_conversion_round_trip_is_bit_exact       # safetensors <-> Orbax
  tests/test_rl.py::test_rl_step_updates_weights_and_logs          # one tiny RL step
  tests/test_rl.py::test_killed_run_resumes_exactly                # Orbax checkpoint resume
  tests/test_checkpoint_fallback.py::test_truncated_newest_step_falls_back_and_resumes_exactly
  tests/test_checkpoint_fallback.py::test_preemption_notice_saves_at_the_next_step_boundary_and_stops
  tests/test_generate.py::test_writes_a_playable_mp4_of_the_requested_frames
  tests/test_notebook.py                      # the notebook's cells parse, its install and device cells
)
# The notebook executed end to end takes ~3 more minutes; it runs in the 3.11 suite, and here with
# WC_JAX_PY312_NOTEBOOK=1 (Colab's runtimes are on 3.12+).
DESELECT=()
if [[ "${WC_JAX_PY312_NOTEBOOK:-0}" != 1 ]]; then
  DESELECT=(--deselect tests/test_notebook.py::test_notebook_runs_end_to_end_on_cpu)
fi
t1=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "${DESELECT[@]}" "$@"
echo "Python 3.12 job: tests passed in $((SECONDS - t1)) s, $((SECONDS - t0)) s in all"
