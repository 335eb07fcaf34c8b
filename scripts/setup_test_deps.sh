#!/usr/bin/env bash
# System packages the test suite needs beyond .venv: a real SLURM (slurm-wlm + munge) for the
# cluster test. Installed with apt-get when missing and we are root; otherwise says what to do.
set -euo pipefail
if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing slurm-wlm and munge for the SLURM test (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
else
  echo "setup: slurm-wlm and munge are missing; install them (e.g. sudo apt-get install slurm-wlm munge)" \
       "or the SLURM test will fail" >&2
fi
