#!/usr/bin/env bash
# Runs `python -m wc_jax.train` on every worker of a TPU VM / pod slice.
#
#   launch/run.sh NAME ZONE CONFIG WORKDIR [--project P] [--detach] [--allow-local-workdir] [TRAIN_FLAGS...]
#
#   launch/run.sh wc-v5p us-east5-a configs/hunyuan8b.py gs://my-bucket/wc_run1 \
#       --config.model.checkpoint=gs://my-bucket/ckpt/ar_model --config.rl.total_steps=100
#
# Every worker runs the same command; on a multi-host slice wc_jax.distributed joins them
# (jax.distributed from the TPU environment). WORKDIR (checkpoints, metrics) must be shared
# by all workers: gs://..., or a shared mount with --allow-local-workdir (also the choice
# for a single-host slice). --detach runs in the background (log: ~/wc_jax_train.log on
# each worker) so that the job outlives the ssh session. Other flags go to wc_jax.train.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/run.sh NAME ZONE CONFIG WORKDIR [--project P] [--detach] [--allow-local-workdir] [TRAIN_FLAGS...]"

if [[ $# -lt 4 || "$1" == -* || "$2" == -* || "$3" == -* || "$4" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2" CONFIG="$3" WORKDIR="$4"
shift 4
PROJECT="" DETACH=0 LOCAL_OK=0 TRAIN=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --allow-local-workdir) LOCAL_OK=1; shift ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    --*) TRAIN+=("$1"); shift ;;
    *) bad_arg "unexpected argument $1 (wc_jax.train flags start with --)" "$USAGE" ;;
  esac
done
if [[ "$CONFIG" != *.py ]]; then
  bad_arg "CONFIG must be a config file such as configs/hunyuan8b.py, got '$CONFIG'" "$USAGE"
fi
if [[ "$WORKDIR" != gs://* && "$LOCAL_OK" != "1" ]]; then
  bad_arg "WORKDIR must be shared by every worker (gs://bucket/path); for a single-host slice or a shared mount pass --allow-local-workdir, got '$WORKDIR'" "$USAGE"
fi
need_gcloud
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "--zone=$ZONE" --worker=all)
if [[ -n "$PROJECT" ]]; then
  SSH+=("$(project_flag "$PROJECT")")
fi
TRAIN_CMD="python -m wc_jax.train --config=$CONFIG --workdir=$WORKDIR"
for f in ${TRAIN[@]+"${TRAIN[@]}"}; do
  TRAIN_CMD+=" $(printf '%q' "$f")"
done
PREFIX="source ~/wc_venv/bin/activate && cd ~/wc_jax && "
if [[ "$DETACH" == "1" ]]; then
  run "${SSH[@]}" "--command=${PREFIX}nohup $TRAIN_CMD > ~/wc_jax_train.log 2>&1 < /dev/null &"
  echo "running in the background; follow it with:"
  show "${SSH[@]}" --command="tail -f ~/wc_jax_train.log"
else
  run "${SSH[@]}" "--command=${PREFIX}$TRAIN_CMD"
fi
