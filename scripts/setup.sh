#!/usr/bin/env bash
# Build (or confirm) the project's virtual environment: pinned versions, torch first.
# Idempotent and quick when nothing changed: a stamp holds the hash of the requirement files.
#   PYTHON=python3.11 scripts/setup.sh      # choose the interpreter (>= 3.11)
#   VENV=/path/to/venv scripts/setup.sh     # choose where the venv goes
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.setup-stamp"
want=$(cat requirements/torch.txt requirements/base.txt requirements/nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# 1. torch alone and pinned: anything resolved later is constrained to it (no surprise CUDA builds).
"${pip[@]}" -r requirements/torch.txt
# 2. everything else, constrained to that torch.
"${pip[@]}" -c requirements/torch.txt -r requirements/base.txt
# 3. wheels we take without their declared dependencies (mediapipe would pull opencv-contrib).
"${pip[@]}" --no-deps -r requirements/nodeps.txt
# 4. the project itself, editable.
"${pip[@]}" --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, mediapipe, cv2, av, snakemake; print('setup: torch', torch.__version__, '| mediapipe', mediapipe.__version__, '| opencv', cv2.__version__)"
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s"
