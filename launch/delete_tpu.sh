#!/usr/bin/env bash
# Deletes a TPU VM / pod slice (stops the billing; the workdir in gs:// stays).
#
#   launch/delete_tpu.sh NAME ZONE [--project P]
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/delete_tpu.sh NAME ZONE [--project P]"

if [[ $# -lt 2 || "$1" == -* || "$2" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2"
shift 2
PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    *) bad_arg "unknown option $1" "$USAGE" ;;
  esac
done
need_gcloud
run gcloud compute tpus tpu-vm delete "$NAME" "--zone=$ZONE" --quiet ${PROJECT:+"$(project_flag "$PROJECT")"}
