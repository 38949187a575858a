#!/usr/bin/env bash
# Shared helpers for the launch/ scripts (sourced, not run).
#
# NOTE: the launch scripts drive Google Cloud (gcloud compute tpus tpu-vm ...). They were
# written where there is no network and no gcloud, so they have only been checked with
# `bash -n` and DRY_RUN=1 (tests/test_multihost.py), never run against a real project.
#
# DRY_RUN=1  prints every command instead of running it (no gcloud needed).

set -euo pipefail

# usage TEXT: prints TEXT (the script's usage) to stderr and exits 2.
usage_exit() {
  printf '%s\n' "$1" >&2
  exit 2
}

# bad_arg MESSAGE USAGE: names what was wrong, then the usage; exits 2.
bad_arg() {
  printf 'error: %s\n' "$1" >&2
  usage_exit "$2"
}

# show ARGS...: the command as one line, quoting words that the shell would split.
show() {
  local out="" a
  for a in "$@"; do
    if [[ -z "$a" || "$a" =~ [[:space:]\"\'\$\&\;\|\<\>\(\)\*\?\`] ]]; then
      out+=" '${a//\'/\'\\\'\'}'"
    else
      out+=" $a"
    fi
  done
  printf '+%s\n' "$out"
}

# run ARGS...: prints the command, then runs it unless DRY_RUN=1.
run() {
  show "$@"
  if [[ "${DRY_RUN:-0}" != "1" ]]; then
    "$@"
  fi
}

# need_gcloud: gcloud must be installed (skipped in a dry run).
need_gcloud() {
  if [[ "${DRY_RUN:-0}" != "1" ]] && ! command -v gcloud >/dev/null 2>&1; then
    printf 'error: gcloud not found; install the Google Cloud SDK and run `gcloud auth login`\n' >&2
    exit 1
  fi
}

# project_flag PROJECT: "--project=PROJECT", or nothing for gcloud's default project.
project_flag() {
  if [[ -n "$1" ]]; then
    printf -- '--project=%s' "$1"
  fi
}
