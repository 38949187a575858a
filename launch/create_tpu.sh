#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice for wc_jax.
#
#   launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE [--version RUNTIME] [--project P]
#                        [--spot | --preemptible] [--network NET] [--subnetwork SUBNET]
#
#   launch/create_tpu.sh wc-v5p us-east5-a v5p-16            # a 2-host v5p pod slice
#   launch/create_tpu.sh wc-v6e us-east1-d v6e-8 --spot      # one host, 8 chips
#
# ACCELERATOR_TYPE is gcloud's (v4-8, v5litepod-8, v5p-16, v6e-8, ...); the runtime
# version defaults to the one for that TPU generation. Then: launch/install.sh, launch/run.sh.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/create_tpu.sh NAME ZONE ACCELERATOR_TYPE [--version RUNTIME] [--project P] [--spot | --preemptible] [--network NET] [--subnetwork SUBNET]"

if [[ $# -lt 3 || "$1" == -* || "$2" == -* || "$3" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2" TYPE="$3"
shift 3
VERSION="" PROJECT="" EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --version) [[ $# -ge 2 ]] || bad_arg "--version needs a value" "$USAGE"; VERSION="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --network|--subnetwork)
      [[ $# -ge 2 ]] || bad_arg "$1 needs a value" "$USAGE"; EXTRA+=("$1=$2"); shift 2 ;;
    --spot|--preemptible) EXTRA+=("$1"); shift ;;
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
need_gcloud
ARGS=(gcloud compute tpus tpu-vm create "$NAME" "--zone=$ZONE" "--accelerator-type=$TYPE" "--version=$VERSION")
if [[ ${#EXTRA[@]} -gt 0 ]]; then
  ARGS+=("${EXTRA[@]}")
fi
if [[ -n "$PROJECT" ]]; then
  ARGS+=("$(project_flag "$PROJECT")")
fi
run "${ARGS[@]}"
run gcloud compute tpus tpu-vm describe "$NAME" "--zone=$ZONE" --format="value(state,acceleratorType,networkEndpoints[].ipAddress)" ${PROJECT:+"$(project_flag "$PROJECT")"}
echo "next: launch/install.sh $NAME $ZONE && launch/run.sh $NAME $ZONE configs/hunyuan8b.py gs://BUCKET/run"
