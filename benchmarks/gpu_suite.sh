#!/usr/bin/env bash
# The GPU suite: DiT train-step MFU at the 8B width (bf16, vs 989 TFLOP/s), AR chunk latency and
# rollout candidates/s, VAE decode, and the side by side against a local reference checkout.
# Installs and downloads nothing; about 8 minutes on one H200.
#
#   benchmarks/gpu_suite.sh [--reference /path/to/HY-WorldPlay] [--layers 16] [--json out.json]
#   benchmarks/gpu_suite.sh --tiny          # every part at toy sizes on CPU (the CI test)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
for a in "$@"; do
  if [[ "$a" == "--tiny" ]]; then
    export JAX_PLATFORMS=cpu          # the CI check: CPU only, whatever is installed
  fi
done
# let XLA's GPU autotuner and command buffers work; keep memory preallocation off for the mixed parts
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec "${PYTHON:-python}" "$here/gpu_suite.py" "$@"
