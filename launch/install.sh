#!/usr/bin/env bash
# Installs wc_jax (pip install -e ".[tpu]") on every worker of a TPU VM / pod slice.
#
#   launch/install.sh NAME ZONE [--from GIT_URL[@REF]] [--project P] [--extras tpu]
#
# Without --from, this checkout (uncommitted changes included, .git excluded) is packed
# into a tarball and copied to every worker; with --from, every worker clones the URL
# (optionally at REF). Either way it lands in ~/wc_jax, installed into the venv ~/wc_venv.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/install.sh NAME ZONE [--from GIT_URL[@REF]] [--project P] [--extras tpu]"

if [[ $# -lt 2 || "$1" == -* || "$2" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2"
shift 2
FROM="" PROJECT="" EXTRAS="tpu"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from) [[ $# -ge 2 ]] || bad_arg "--from needs a value" "$USAGE"; FROM="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --extras) [[ $# -ge 2 ]] || bad_arg "--extras needs a value" "$USAGE"; EXTRAS="$2"; shift 2 ;;
    -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
    *) bad_arg "unknown option $1" "$USAGE" ;;
  esac
done
if [[ -n "$FROM" && ! "$FROM" =~ ^(https://|ssh://|git://|git@|file://) ]]; then
  bad_arg "--from must be a git URL (https://, ssh://, git://, git@host:...), got '$FROM'" "$USAGE"
fi
need_gcloud
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "--zone=$ZONE" --worker=all)
SCP=(gcloud compute tpus tpu-vm scp "--zone=$ZONE" --worker=all)
if [[ -n "$PROJECT" ]]; then
  SSH+=("$(project_flag "$PROJECT")")
  SCP+=("$(project_flag "$PROJECT")")
fi

if [[ -z "$FROM" ]]; then
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  TARBALL="$(mktemp -d)/wc_jax.tar.gz"
  run tar -czf "$TARBALL" -C "$ROOT" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' .
  run "${SCP[@]}" "$TARBALL" "$NAME:~/wc_jax.tar.gz"
  FETCH="rm -rf ~/wc_jax && mkdir -p ~/wc_jax && tar -xzf ~/wc_jax.tar.gz -C ~/wc_jax"
else
  URL="$FROM" REF=""
  if [[ "$FROM" =~ ^(.+)@([^@:/]+)$ ]]; then   # URL@REF (git@host:path has a ':' after its '@')
    URL="${BASH_REMATCH[1]}" REF="${BASH_REMATCH[2]}"
  fi
  FETCH="rm -rf ~/wc_jax && git clone $URL ~/wc_jax${REF:+ && git -C ~/wc_jax checkout $REF}"
fi
VENV="(python3 -m venv ~/wc_venv || (sudo apt-get update && sudo apt-get install -y python3-venv && python3 -m venv ~/wc_venv))"
INSTALL="source ~/wc_venv/bin/activate && pip install -U pip && cd ~/wc_jax && pip install -e '.[$EXTRAS]'"
CHECK="python -c 'import jax, wc_jax; print(\"wc_jax\", wc_jax.__version__, \"jax\", jax.__version__)'"
run "${SSH[@]}" "--command=set -e; $FETCH && $VENV && $INSTALL && $CHECK"
