#!/usr/bin/env bash
# Build (or confirm) the project's virtual environment from the lock: the exact version of every package.
# Idempotent and quick when nothing changed: a stamp holds the hash of the lock files and the torch build.
#   PYTHON=python3.11 scripts/setup.sh      # choose the interpreter (its version and platform pick the lock)
#   VENV=/path/to/venv scripts/setup.sh     # choose where the venv goes
#   TORCH_BUILD=cuda scripts/setup.sh       # torch's CUDA build from PyPI (GPU machines); default cpu
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
#                                           # where the CPU build comes from, on a machine whose pip has no
#                                           # local copy of it (PyPI's Linux torch is the CUDA build)
# The lock lives in requirements/lock/<tag>/ (made by scripts/lock.sh from the direct dependencies in requirements/*.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_BUILD=${TORCH_BUILD:-cpu}
case "$TORCH_BUILD" in cpu|cuda) ;; *) echo "setup: TORCH_BUILD must be cpu or cuda, not '$TORCH_BUILD'" >&2; exit 2;; esac
py=$VENV/bin/python
[ -x "$py" ] || py=$PYTHON
tag=$("$py" -c 'import platform, sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{sys.platform}_{platform.machine()}")')
lock=requirements/lock/$tag
if [ ! -f "$lock/common.txt" ]; then
  echo "setup: no lock for $tag in requirements/lock/ (have: $(cd requirements/lock && ls -d */ | tr -d / | tr '\n' ' '))." >&2
  echo "setup: use one of those Python versions (PYTHON=python3.11), or make a lock for this one with" \
       "'PYTHON=$py scripts/lock.sh' (resolves requirements/*.txt) and review it." >&2
  exit 2
fi
stamp="$VENV/.setup-stamp"
want=$(cat "$lock/common.txt" "$lock/torch-$TORCH_BUILD.txt" pyproject.toml | sha256sum | cut -d' ' -f1)-$TORCH_BUILD
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "setup: $VENV is up to date ($tag, torch $TORCH_BUILD)"
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# 1. Every locked package at its exact version, without resolving anything (the lock is complete; mediapipe's
#    declared opencv-contrib is left out on purpose, see requirements/nodeps.txt). --no-deps also keeps a
#    package from replacing the locked torch build.
index=()
[ -n "${TORCH_INDEX_URL:-}" ] && index=(--extra-index-url "$TORCH_INDEX_URL")
"${pip[@]}" --no-deps "${index[@]}" -r "$lock/common.txt" -r "$lock/torch-$TORCH_BUILD.txt"
# 2. nothing beside the lock: packages an older set-up left (or the other torch build's) are removed.
extra=$("$VENV/bin/python" - "$lock/common.txt" "$lock/torch-$TORCH_BUILD.txt" <<'EOF'
import importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(l.split("==")[0]) for f in sys.argv[1:] for l in open(f) if "==" in l and not l.startswith("#")}
have = {norm(d.metadata["Name"]) for d in md.distributions()}
print(" ".join(sorted(have - locked - {"pip", "talkinghead-pipeline"})))
EOF
)
if [ -n "$extra" ]; then
  echo "setup: removing packages that are not in the lock: $extra"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip uninstall --quiet --yes $extra
fi
# 3. the project itself, editable.
"${pip[@]}" --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, mediapipe, cv2, av, snakemake; print('setup: torch', torch.__version__, '| mediapipe', mediapipe.__version__, '| opencv', cv2.__version__)"
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s ($tag, torch $TORCH_BUILD)"
