#!/usr/bin/env bash
# One GPU call of the [head-v2] measurement: train the head for a wall-clock budget, train the torso, render the
# test split from its own audio (stage-1 landmarks) and score it like the issue's table.
#
#   bench/gpu_head_eval.sh SUBJECT_DIR OUT_DIR MINUTES [STAGE2_JSON] [EVAL_EVERY]
#
# SUBJECT_DIR: a copy of results/<s> as bench/gpu_train_head.sh describes, plus parsing/torso.npz,
# tracking/tracks.parquet, crop/video.mp4, aus/aus.json and stage1/pred/self.parquet (what the torso and the
# render read); the frame cache stage2/{frames,labels,cache} is made here when missing (OpenCV decode, ~8 s).
# Writes under OUT_DIR: head/ (bench.log, metrics.json with the eval curve), torso.log, render.log and
# eval/ (render_eval.json: PSNR per region and the outline band, head-only frames/s; frames.tar: the JPEG
# frames, to score blinks and sync with pipeline.evaluate on the CPU machine). Env: PYTHON (default python3).
set -euo pipefail
if [[ $# -lt 3 ]]; then
    sed -n '2,13p' "$0"; exit 2
fi
s=$1; out=$2; minutes=$3; extra=${4:-'{"amp": true}'}; every=${5:-1000000}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out/eval"
if [[ ! -f "$s/stage2/cache.json" ]]; then
    "$py" -m pipeline.stage2.cache --video "$s/crop/video.mp4" --labels "$s/parsing/labels.npz" \
        --outdir "$s/stage2" --config '{"image_size": 0}' > "$out/cache.log" 2>&1
fi
EVAL_EVERY=$every PYTHON=$py bash "$repo/bench/gpu_train_head.sh" "$s" "$s/stage2" "$minutes" "$extra" > /dev/null 2>&1 \
    || { tail -20 "$s/stage2/bench.log"; exit 1; }
cp "$s/stage2/bench.log" "$s/stage2/metrics.json" "$s/stage2/head.json" "$out/" && tail -12 "$out/bench.log"
t0=$(date +%s)
"$py" -m pipeline.torso.train --crop-video "$s/crop/video.mp4" --torso "$s/parsing/torso.npz" \
    --background "$s/parsing/background.png" --tracks "$s/tracking/tracks.parquet" \
    --transforms "$s/tracking/transforms.json" --outdir "$s/torso" --config '{"steps": 2000, "device": "cuda"}' \
    > "$out/torso.log" 2>&1
echo "torso: $(( $(date +%s) - t0 )) s"
"$py" -m pipeline.render video --subject-dir "$s" --out "$s/video.npz" --config '{"device": "cuda"}' \
    > "$out/render.log" 2>&1
"$py" "$repo/bench/gpu_eval_render.py" --subject-dir "$s" --frames "$s/video.npz" --out "$out/eval" \
    --fps-frames 24 > "$out/eval.log" 2>&1
"$py" - "$out/eval/render_eval.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)}, indent=1)[:3000])
PY
