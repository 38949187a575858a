#!/usr/bin/env bash
# Deletes a TPU VM / pod slice (stops the billing; the workdir in gs:// stays).
#
#   launch/delete_tpu.sh NAME ZONE [--project P] [--queued]
#
# --queued: NAME is a queued resource (launch/create_tpu.sh --queued); it is deleted with its node.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/delete_tpu.sh NAME ZONE [--project P] [--queued]"

if [[ $# -lt 2 || "$1" == -* || "$2" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2"
shift 2
PROJECT="" QUEUED=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    *) bad_arg "unknown option $1" "$USAGE" ;;
  esac
done
need_gcloud
if [[ "$QUEUED" == "1" ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" "--zone=$ZONE" --force --quiet ${PROJECT:+"$(project_flag "$PROJECT")"}
else
  run gcloud compute tpus tpu-vm delete "$NAME" "--zone=$ZONE" --quiet ${PROJECT:+"$(project_flag "$PROJECT")"}
fi
