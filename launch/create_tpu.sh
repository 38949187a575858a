#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice for wc_jax.
#
#   launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE [--version RUNTIME] [--project P]
#                        [--queued] [--spot | --preemptible | --reserved] [--network NET] [--subnetwork SUBNET]
#
#   launch/create_tpu.sh wc-v5p us-east5-a v5p-16                    # a 2-host v5p pod slice
#   launch/create_tpu.sh wc-v6e us-east1-d v6e-8 --spot              # one host, 8 chips, Spot
#   launch/create_tpu.sh wc-v5p us-east5-a v5p-32 --queued --spot    # a queued resource (Spot)
#
# --queued asks through queued resources (`gcloud compute tpus queued-resources create NAME
# --node-id=NAME ...`): the request waits until capacity is there (the way to get Spot and
# large slices), and this script waits until it is ACTIVE. A Spot queued resource that gets
# preempted is SUSPENDED; launch/run.sh --recreate deletes and re-creates it.
#
# ACCELERATOR_TYPE is gcloud's (v4-8, v5litepod-8, v5p-16, v6e-8, ...); the runtime
# version defaults to the one for that TPU generation. Then: launch/install.sh, launch/run.sh.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE [--version RUNTIME] [--project P] [--queued] [--spot | --preemptible | --reserved] [--network NET] [--subnetwork SUBNET]"

if [[ $# -lt 3 || "$1" == -* || "$2" == -* || "$3" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2" TYPE="$3"
shift 3
VERSION="" PROJECT="" EXTRA=() QUEUED=0 PROVISION=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --version) [[ $# -ge 2 ]] || bad_arg "--version needs a value" "$USAGE"; VERSION="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --network|--subnetwork)
      [[ $# -ge 2 ]] || bad_arg "$1 needs a value" "$USAGE"; EXTRA+=("$1=$2"); shift 2 ;;
    --spot|--preemptible|--reserved) PROVISION+=("$1"); shift ;;
    --queued) QUEUED=1; shift ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    *) bad_arg "unknown option $1" "$USAGE" ;;
  esac
done
if [[ ! "$TYPE" =~ ^v[0-9]+[a-z]*(litepod)?-[0-9]+$ ]]; then
  bad_arg "ACCELERATOR_TYPE must look like v4-8, v5litepod-16, v5p-32 or v6e-8, got '$TYPE'" "$USAGE"
fi
if [[ -z "$VERSION" ]]; then
  case "$TYPE" in
    v4-*) VERSION="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) bad_arg "no default runtime for $TYPE; pass --version" "$USAGE" ;;
  esac
fi
if [[ "$QUEUED" == "1" && " ${PROVISION[*]-} " == *" --preemptible "* ]]; then
  bad_arg "--preemptible is the old TPU VM flag; a queued resource takes --spot or --reserved" "$USAGE"
fi
if [[ "$QUEUED" == "0" && " ${PROVISION[*]-} " == *" --reserved "* ]]; then
  bad_arg "--reserved needs --queued" "$USAGE"
fi
need_gcloud
if [[ "$QUEUED" == "1" ]]; then
  ARGS=(gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" "--zone=$ZONE"
        "--accelerator-type=$TYPE" "--runtime-version=$VERSION")
else
  ARGS=(gcloud compute tpus tpu-vm create "$NAME" "--zone=$ZONE" "--accelerator-type=$TYPE" "--version=$VERSION")
fi
if [[ ${#PROVISION[@]} -gt 0 ]]; then
  ARGS+=("${PROVISION[@]}")
fi
if [[ ${#EXTRA[@]} -gt 0 ]]; then
  ARGS+=("${EXTRA[@]}")
fi
if [[ -n "$PROJECT" ]]; then
  ARGS+=("$(project_flag "$PROJECT")")
fi
run "${ARGS[@]}"
if [[ "$QUEUED" == "1" && "${DRY_RUN:-0}" != "1" ]]; then
  echo "waiting for the queued resource $NAME to become ACTIVE (capacity permitting; Ctrl-C leaves the request queued)"
  while true; do
    STATE="$(gcloud compute tpus queued-resources describe "$NAME" "--zone=$ZONE" --format="value(state.state)" \
             ${PROJECT:+"$(project_flag "$PROJECT")"})"
    case "$STATE" in
      ACTIVE) break ;;
      FAILED|SUSPENDED) echo "error: queued resource $NAME is $STATE" >&2; exit 1 ;;
      *) echo "  $(date -u +%H:%M:%S) $STATE"; sleep 60 ;;
    esac
  done
fi
run gcloud compute tpus tpu-vm describe "$NAME" "--zone=$ZONE" --format="value(state,acceleratorType,networkEndpoints[].ipAddress)" ${PROJECT:+"$(project_flag "$PROJECT")"}
echo "next: launch/install.sh $NAME $ZONE && launch/run.sh $NAME $ZONE configs/hunyuan8b.py gs://BUCKET/run"
