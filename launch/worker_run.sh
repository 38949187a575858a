#!/usr/bin/env bash
# Runs ON every worker (launch/run.sh sends it): `python -m wc_jax.train` in the venv, its log
# in ~/wc_jax_train.log and copied to WORKDIR/logs/<hostname>.log (gs:// or a shared folder)
# every minute and when the run ends, so that the logs outlive a preempted or deleted VM.
#
#   bash launch/worker_run.sh CONFIG WORKDIR [TRAIN_FLAGS...]
#   env: WC_VENV (default ~/wc_venv), WC_SRC (default ~/wc_jax), WC_LOG (default ~/wc_jax_train.log)
#
# The exit status is the trainer's. A run resumes from WORKDIR's newest checkpoint, so the
# relaunch loop in launch/run.sh simply runs this again.
set -uo pipefail
[[ $# -ge 2 ]] || { echo "usage: launch/worker_run.sh CONFIG WORKDIR [TRAIN_FLAGS...]" >&2; exit 2; }
CONFIG="$1" WORKDIR="$2"
shift 2
VENV="${WC_VENV:-$HOME/wc_venv}" SRC="${WC_SRC:-$HOME/wc_jax}" LOG="${WC_LOG:-$HOME/wc_jax_train.log}"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$SRC" || exit 1
DEST="$WORKDIR/logs/$(hostname).log"

copy_log() {   # etils.epath writes gs:// and local paths alike (the venv has gcsfs: .[tpu])
  python - "$LOG" "$DEST" <<'PY' || echo "worker_run.sh: could not copy $LOG to $DEST" >&2
import sys
from etils import epath
src, dst = sys.argv[1], epath.Path(sys.argv[2])
dst.parent.mkdir(parents=True, exist_ok=True)
dst.write_bytes(open(src, "rb").read())
PY
}

echo "=== $(date -u +%FT%TZ) $(hostname): python -m wc_jax.train --config=$CONFIG --workdir=$WORKDIR $*" >> "$LOG"
python -m wc_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@" >> "$LOG" 2>&1 &
TRAIN=$!
trap 'kill -TERM $TRAIN 2>/dev/null' TERM INT   # the trainer saves at the next step boundary
( while kill -0 "$TRAIN" 2>/dev/null; do sleep 60; copy_log; done ) </dev/null >/dev/null 2>&1 &
COPIER=$!
wait "$TRAIN"
RC=$?
if kill -0 "$TRAIN" 2>/dev/null; then wait "$TRAIN"; RC=$?; fi   # woken by the trap: wait for the save
pkill -P "$COPIER" 2>/dev/null; kill "$COPIER" 2>/dev/null   # the copier and its sleep
echo "=== $(date -u +%FT%TZ) $(hostname): exit $RC" >> "$LOG"
copy_log
tail -n 20 "$LOG"
exit "$RC"
