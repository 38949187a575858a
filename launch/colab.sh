#!/usr/bin/env bash
# Single host (Colab, one TPU VM, one GPU box, a laptop): install wc_jax here and run a config.
#
#   bash launch/colab.sh [--tpu | --gpu | --cpu] [--config FILE] [--workdir DIR] [TRAIN_FLAGS...]
#
#   # in a Colab cell (TPU runtime), from a clone of the repository:
#   !git clone <wc_jax git URL> wc_jax && cd wc_jax && bash launch/colab.sh --tpu
#
# Default: --cpu, configs/tiny.py, /tmp/wc_rl (the tiny RL demo, a few minutes). One host
# needs no jax.distributed set-up. Colab's TPU runtime must be a TPU VM runtime (v2-8 or
# newer with a recent JAX); --gpu installs jax[cuda12].
#
# Not run here as a whole (no network for pip); checked with `bash -n` and for its usage
# errors only.
set -euo pipefail

USAGE="usage: launch/colab.sh [--tpu | --gpu | --cpu] [--config FILE] [--workdir DIR] [TRAIN_FLAGS...]"
KIND=cpu CONFIG=configs/tiny.py WORKDIR=/tmp/wc_rl TRAIN=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) KIND=tpu; shift ;;
    --gpu) KIND=gpu; shift ;;
    --cpu) KIND=cpu; shift ;;
    --config) [[ $# -ge 2 ]] || { printf '%s\n' "$USAGE" >&2; exit 2; }; CONFIG="$2"; shift 2 ;;
    --workdir) [[ $# -ge 2 ]] || { printf '%s\n' "$USAGE" >&2; exit 2; }; WORKDIR="$2"; shift 2 ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    --config.*) TRAIN+=("$1"); shift ;;
    *) printf 'error: unknown option %s\n%s\n' "$1" "$USAGE" >&2; exit 2 ;;
  esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "$KIND" in
  tpu) pip install -q -e ".[tpu]" ;;
  gpu) pip install -q -e ".[dev]" "jax[cuda12]" ;;
  cpu) pip install -q -e ".[dev]" ;;
esac
# --tpu installs jax[tpu], which moves jax, jaxlib and libtpu together (a matched set); the doctor
# then stops here, with one line, if JAX did not come up on the expected platform.
python -m wc_jax.doctor --expect="$KIND"
python -m wc_jax.train --config="$CONFIG" --workdir="$WORKDIR" ${TRAIN[@]+"${TRAIN[@]}"}
