#!/usr/bin/env bash
# System packages the test suite needs beyond .venv: a real SLURM (slurm-wlm + munge) for the
# cluster test, at the versions of requirements/lock/apt-debian12.txt. Installed with apt-get when missing
# and we are root; otherwise says what to do.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
  exit 0
fi
mapfile -t pins < <(grep -v '^#' requirements/lock/apt-debian12.txt | grep .)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${pins[*]} for the SLURM test (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends "${pins[@]}" >/dev/null; then
    names=("${pins[@]%%=*}")
    echo "setup: WARNING: the locked versions (${pins[*]}) are no longer offered (a Debian update?);" \
         "installing the current ${names[*]} instead: update requirements/lock/apt-debian12.txt" >&2
    apt-get install -y -qq --no-install-recommends "${names[@]}" >/dev/null
  fi
  dpkg-query -W -f 'setup: ${Package} ${Version}\n' "${pins[@]%%=*}"
else
  echo "setup: slurm-wlm and munge are missing; install them (e.g. sudo apt-get install ${pins[*]})" \
       "or the SLURM test will fail" >&2
fi
