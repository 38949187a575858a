#!/usr/bin/env bash
# Runs ON a TPU VM worker (launch/install.sh sends it to every worker): a Python 3.12 venv made
# by uv, wc_jax installed into it, then `python -m wc_jax.doctor` checks what JAX sees.
#
#   bash launch/worker_install.sh [SRC_DIR] [EXTRAS] [EXPECT]
#     SRC_DIR  the wc_jax checkout (default ~/wc_jax)       EXTRAS  pip extras (default tpu)
#     EXPECT   tpu | gpu | cpu | any (default tpu): the platform JAX must end up on
#   env: WC_VENV (default ~/wc_venv), WC_PYTHON (default 3.12)
#
# Why uv: the TPU VM images ship Ubuntu 22.04's Python 3.10, and jax >= 0.7 needs >= 3.11. uv
# installs itself with the system pip (`pip install --user uv`, no root) and fetches a
# standalone CPython 3.12 when the VM has none, so no apt/deadsnakes step is needed.
set -euo pipefail
SRC="${1:-$HOME/wc_jax}" EXTRAS="${2:-tpu}" EXPECT="${3:-tpu}"
VENV="${WC_VENV:-$HOME/wc_venv}" PY="${WC_PYTHON:-3.12}"
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv
fi
uv --version
uv venv --python "$PY" --allow-existing "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
uv pip install -e "$SRC[$EXTRAS]"
python --version
if [[ "$EXPECT" == "any" ]]; then
  python -m wc_jax.doctor
else
  python -m wc_jax.doctor --expect="$EXPECT"
fi
