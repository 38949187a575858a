#!/usr/bin/env bash
# Runs `python -m wc_jax.train` on every worker of a TPU VM / pod slice, and relaunches it
# after a failure or a preemption; every relaunch resumes from WORKDIR's newest checkpoint.
#
#   launch/run.sh NAME ZONE CONFIG WORKDIR [--project P] [--detach] [--allow-local-workdir]
#                 [--relaunch N] [--recreate ACCELERATOR_TYPE [--spot | --reserved]] [TRAIN_FLAGS...]
#
#   launch/run.sh wc-v5p us-east5-a configs/hunyuan8b.py gs://my-bucket/wc_run1 \
#       --relaunch 20 --recreate v5p-16 --spot \
#       --config.model.checkpoint=gs://my-bucket/ckpt/ar_model --config.rl.total_steps=100
#
# Every worker runs launch/worker_run.sh: the trainer, its log in ~/wc_jax_train.log, copied to
# WORKDIR/logs/<hostname>.log every minute and at the end. On a multi-host slice wc_jax.distributed
# joins the workers (jax.distributed from the TPU environment). WORKDIR (checkpoints, metrics)
# must be shared by all workers: gs://..., or a shared mount with --allow-local-workdir (also
# the choice for a single-host slice). Other flags go to wc_jax.train.
#
# --relaunch N: up to N more tries after a failed one. Before each, the slice's state is read:
# READY -> the trainer is started again (it resumes); anything else (PREEMPTED, a Spot node gone)
# -> with --recreate TYPE the slice is deleted and created again as a queued resource
# (launch/create_tpu.sh --queued), wc_jax installed (launch/install.sh), then the trainer started;
# without --recreate the loop stops and says what to run. A preemption notice makes the trainer
# save at the next step boundary on every host, so a relaunch loses at most one step.
# --detach runs the trainer in the background (no relaunch loop) so that it outlives the ssh session.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/run.sh NAME ZONE CONFIG WORKDIR [--project P] [--detach] [--allow-local-workdir] [--relaunch N] [--recreate ACCELERATOR_TYPE [--spot | --reserved]] [TRAIN_FLAGS...]"

if [[ $# -lt 4 || "$1" == -* || "$2" == -* || "$3" == -* || "$4" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2" CONFIG="$3" WORKDIR="$4"
shift 4
PROJECT="" DETACH=0 LOCAL_OK=0 RELAUNCH=0 RECREATE="" PROVISION=() TRAIN=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --allow-local-workdir) LOCAL_OK=1; shift ;;
    --relaunch)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || bad_arg "--relaunch needs a number of tries" "$USAGE"
      RELAUNCH="$2"; shift 2 ;;
    --recreate) [[ $# -ge 2 ]] || bad_arg "--recreate needs an accelerator type" "$USAGE"; RECREATE="$2"; shift 2 ;;
    --spot|--reserved) PROVISION+=("$1"); shift ;;
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
if [[ "$DETACH" == "1" && "$RELAUNCH" != "0" ]]; then
  bad_arg "--detach and --relaunch do not go together (the relaunch loop waits for the run)" "$USAGE"
fi
need_gcloud
HERE="$(dirname "${BASH_SOURCE[0]}")"
PFLAG=()
if [[ -n "$PROJECT" ]]; then
  PFLAG=("$(project_flag "$PROJECT")")
fi
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "--zone=$ZONE" --worker=all ${PFLAG[@]+"${PFLAG[@]}"})
ARGS="$(printf '%q' "$CONFIG") $(printf '%q' "$WORKDIR")"
SHOWN="python -m wc_jax.train --config=$CONFIG --workdir=$WORKDIR"
for f in ${TRAIN[@]+"${TRAIN[@]}"}; do
  ARGS+=" $(printf '%q' "$f")"
  SHOWN+=" $f"
done
echo "on every worker: $SHOWN (launch/worker_run.sh; log ~/wc_jax_train.log and $WORKDIR/logs/)"
WORKER="bash ~/wc_jax/launch/worker_run.sh $ARGS"
if [[ "$DETACH" == "1" ]]; then
  run "${SSH[@]}" "--command=nohup $WORKER > /dev/null 2>&1 < /dev/null &"
  echo "running in the background; follow it with:"
  show "${SSH[@]}" --command="tail -f ~/wc_jax_train.log"
  exit 0
fi

state() {   # the slice's state: READY, PREEMPTED, ... ("" when the node is gone)
  gcloud compute tpus tpu-vm describe "$NAME" "--zone=$ZONE" --format="value(state)" \
    ${PFLAG[@]+"${PFLAG[@]}"} 2>/dev/null || true
}

try=0
while true; do
  rc=0
  run "${SSH[@]}" "--command=$WORKER" || rc=$?
  if [[ "$rc" == "0" ]]; then
    echo "training finished (workdir $WORKDIR)"
    exit 0
  fi
  if [[ "$try" -ge "$RELAUNCH" ]]; then
    echo "training exited with status $rc (no relaunch left; logs in $WORKDIR/logs/)" >&2
    exit "$rc"
  fi
  try=$((try + 1))
  s="$(state)"
  if [[ "$s" == "READY" ]]; then
    echo "relaunch $try/$RELAUNCH: the slice is READY; starting the trainer again (it resumes from $WORKDIR)"
  elif [[ -n "$RECREATE" ]]; then
    echo "relaunch $try/$RELAUNCH: the slice is '${s:-gone}'; creating it again as a queued resource"
    bash "$HERE/delete_tpu.sh" "$NAME" "$ZONE" --queued ${PROJECT:+--project "$PROJECT"} || true
    bash "$HERE/create_tpu.sh" "$NAME" "$ZONE" "$RECREATE" --queued ${PROVISION[@]+"${PROVISION[@]}"} \
      ${PROJECT:+--project "$PROJECT"}
    bash "$HERE/install.sh" "$NAME" "$ZONE" ${PROJECT:+--project "$PROJECT"}
  else
    echo "the slice is '${s:-gone}' (preempted?): recreate it (launch/create_tpu.sh ... --queued --spot," \
         "launch/install.sh), then run this again: training resumes from $WORKDIR; or pass --recreate TYPE" >&2
    exit "$rc"
  fi
done
