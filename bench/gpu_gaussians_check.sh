#!/usr/bin/env bash
# First GPU call for the Gaussian head (issue #25): gsplat built (or unpacked), the parity tests of the torch
# reference against it, a short Gaussian-head training at full size, its head render speed.
#
#   bench/gpu_gaussians_check.sh SUBJECT_DIR OUT_DIR [MINUTES]
#
# Carry .carry/wheels (gsplat and pytest wheels, `pip download` on the CPU machine) or .carry/gsplat_sm90.tar.xz,
# and SUBJECT_DIR as bench/gpu_head_eval.sh describes (e.g. .carry/cnn). Writes into OUT_DIR (the device tool
# brings back 8 files): gsplat.log, parity.log, bench.log + metrics.json (the training, MINUTES default 1),
# render_speed.json + speed.log (bench/gpu_render_speed.py: the head render over batch sizes), and
# gsplat_sm90.tar.xz when gsplat was compiled here (copy it to .carry/ for the next call).
# A failing step is recorded in its log and the next steps still run. Env: PYTHON (python3).
set -uo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,12p' "$0"; exit 2
fi
s=$1; out=$2; minutes=${3:-1}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
OUT=$out source "$repo/bench/gpu_gsplat_env.sh" > "$out/gsplat.log" 2>&1 || { cat "$out/gsplat.log"; exit 1; }
cat "$out/gsplat.log"
if ! "$py" -c "import pytest" 2> /dev/null; then     # the GPU image may have no pytest
    "$py" -m pip install -q --no-index --no-deps --find-links "$repo/.carry/wheels" --target /tmp/gsplat_pkg \
        pytest pluggy iniconfig exceptiongroup tomli >> "$out/gsplat.log" 2>&1
fi
(cd "$repo" && "$py" -m pytest -q -rs tests/test_gaussians_reference.py) > "$out/parity.log" 2>&1
tail -3 "$out/parity.log"
EVAL_EVERY=${EVAL_EVERY:-1000000} PYTHON=$py bash "$repo/bench/gpu_train_head.sh" "$s" "$s/stage2" "$minutes" \
    '{"head": "gaussians"}' > /dev/null 2>&1
cp "$s/stage2/bench.log" "$out/" 2> /dev/null && tail -6 "$out/bench.log"
cp "$s/stage2/metrics.json" "$out/" 2> /dev/null
"$py" "$repo/bench/gpu_render_speed.py" --subject-dir "$s" --device cuda --out "$out/speed" > "$out/speed.log" 2>&1
tail -2 "$out/speed.log"
cp "$out/speed/render_speed.json" "$out/" 2> /dev/null
rm -rf "$out/speed"
