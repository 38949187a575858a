#!/usr/bin/env bash
# Installs wc_jax on every worker of a TPU VM / pod slice: a Python 3.12 venv (~/wc_venv) made
# by uv, `uv pip install -e ".[tpu]"`, then `python -m wc_jax.doctor --expect=tpu`, which fails
# the install on any worker where JAX does not see its TPU (launch/worker_install.sh).
#
#   launch/install.sh NAME ZONE [--from GIT_URL[@REF]] [--project P] [--extras tpu] [--python 3.12]
#
# Without --from, this checkout (uncommitted changes included, .git excluded) is packed
# into a tarball and copied to every worker; with --from, every worker clones the URL
# (optionally at REF). Either way it lands in ~/wc_jax, installed into the venv ~/wc_venv.
# The TPU VM images ship Python 3.10; jax >= 0.7 needs >= 3.11, hence uv's own 3.12.
#
# Not run here: written without network access or gcloud; checked with `bash -n` and
# DRY_RUN=1 only (see launch/lib.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="usage: launch/install.sh NAME ZONE [--from GIT_URL[@REF]] [--project P] [--extras tpu] [--python 3.12]"

if [[ $# -lt 2 || "$1" == -* || "$2" == -* ]]; then
  usage_exit "$USAGE"
fi
NAME="$1" ZONE="$2"
shift 2
FROM="" PROJECT="" EXTRAS="tpu" PY="3.12"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from) [[ $# -ge 2 ]] || bad_arg "--from needs a value" "$USAGE"; FROM="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || bad_arg "--project needs a value" "$USAGE"; PROJECT="$2"; shift 2 ;;
    --extras) [[ $# -ge 2 ]] || bad_arg "--extras needs a value" "$USAGE"; EXTRAS="$2"; shift 2 ;;
    --python) [[ $# -ge 2 ]] || bad_arg "--python needs a value" "$USAGE"; PY="$2"; shift 2 ;;
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
EXPECT=tpu
if [[ "$EXTRAS" != *tpu* ]]; then EXPECT=any; fi
INSTALL="WC_PYTHON=$PY bash ~/wc_jax/launch/worker_install.sh ~/wc_jax '$EXTRAS' $EXPECT"
run "${SSH[@]}" "--command=set -e; $FETCH && $INSTALL"
