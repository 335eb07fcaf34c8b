#!/usr/bin/env bash
# One GPU call of the [head-v2] measurement: train the head for a wall-clock budget, train the torso, render the
# test split from its own audio (stage-1 landmarks) and score it like the issue's table.
#
#   bench/gpu_head_eval.sh SUBJECT_DIR OUT_DIR MINUTES [STAGE2_JSON] [EVAL_EVERY]
#
# SUBJECT_DIR: a copy of results/<s> as bench/gpu_train_head.sh describes, plus parsing/torso.npz,
# tracking/tracks.parquet, crop/{video.mp4,crop.json}, aus/aus.json and stage1/pred/self.parquet (what the torso and the
# render read; with '{"train_mouth": "stage1"}' also stage1/oof.parquet); the frame cache stage2/{frames,labels,cache}
# is made when missing (bench/gpu_train_head.sh).
# The torso, render and scoring are bench/gpu_torso_eval.sh with one variant (TORSO_CONFIG, default '{}').
# Writes six files into OUT_DIR (the device tool brings back 8): bench.log and metrics.json (the head run, its eval
# curve), steps.log (torso, render, scoring), torso_0.json (the torso's metrics.json), render_eval_0.json
# (PSNR and sharpness per region and the outline band, head-only frames/s) and frames.tar (the JPEG frames, to
# score blinks and sync with pipeline.evaluate on the CPU machine: bench/gpu_eval_render.py's frames_to_npz, then
# python -m pipeline.render mux). Env: PYTHON (python3), TORSO_CONFIG; TEACHER_FORCED=1 also renders the split with the
# tracked mouth instead of stage 1's (bench/teacher_forced_pred.py) and scores it as render_eval_tf.json: what the
# head draws with the true mouth, beside what it draws from the audio; KEEP_HEAD=1 copies the trained head
# (stage2/{head.pt,head.json,occupancy.npz}) to OUT_DIR/head/.
set -euo pipefail
if [[ $# -lt 3 ]]; then
    sed -n '2,15p' "$0"; exit 2
fi
s=$1; out=$2; minutes=$3; extra=${4:-'{"amp": true}'}; every=${5:-1000000}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
log="$out/steps.log"
if [[ $extra == *gaussians* ]]; then     # gsplat for training and rendering the Gaussian head (docs/gaussians.md)
    source "$repo/bench/gpu_gsplat_env.sh" >> "$log" 2>&1
fi
EVAL_EVERY=$every PYTHON=$py bash "$repo/bench/gpu_train_head.sh" "$s" "$s/stage2" "$minutes" "$extra" > /dev/null 2>&1 \
    || { tail -20 "$s/stage2/bench.log"; exit 1; }
cp "$s/stage2/bench.log" "$s/stage2/metrics.json" "$out/" && tail -12 "$out/bench.log"
torso_cfg=${TORSO_CONFIG:-'{}'}
PYTHON=$py bash "$repo/bench/gpu_torso_eval.sh" "$s" "$out" "$torso_cfg"
cp "$s/eval/frames.tar" "$out/"
if [[ ${TEACHER_FORCED:-0} == 1 ]]; then
    pred="$s/stage1/pred/self.parquet"
    cp "$pred" "$s/stage1/pred/self_audio.parquet"
    "$py" "$repo/bench/teacher_forced_pred.py" --subject-dir "$s" --pred "$s/stage1/pred/self_audio.parquet" \
        --out "$pred" >> "$log" 2>&1
    "$py" -m pipeline.render video --subject-dir "$s" --out "$s/video_tf.npz" --config '{"device": "cuda"}' >> "$log" 2>&1
    "$py" "$repo/bench/gpu_eval_render.py" --subject-dir "$s" --frames "$s/video_tf.npz" --out "$s/eval_tf" \
        --fps-frames 24 >> "$log" 2>&1
    cp "$s/eval_tf/render_eval.json" "$out/render_eval_tf.json"
    mv "$s/stage1/pred/self_audio.parquet" "$pred"
    "$py" -c 'import json, sys; m = json.load(open(sys.argv[1])); r = m["regions"]
print("teacher-forced:", {"head": round(m["mean"]["psnr_head"], 2), **{k: r[k]["psnr"] for k in ("face", "hair", "lips", "mouth", "eyes")}})' \
        "$out/render_eval_tf.json"
fi
if [[ ${KEEP_HEAD:-0} == 1 ]]; then
    mkdir -p "$out/head" && cp "$s"/stage2/{head.pt,head.json,occupancy.npz} "$out/head/"
fi
