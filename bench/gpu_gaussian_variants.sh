#!/usr/bin/env bash
# Several short Gaussian-head trainings in one GPU call, each scored on the audio-driven test split like [head-v2]
# (bench/gpu_eval_render.py). The Gaussian head reaches its plateau within 2 minutes on talk_dfrf_cnn_en
# (BENCHMARKS.md), so 2-minute variants compare configurations at a third of a full run's cost.
#
#   bench/gpu_gaussian_variants.sh SUBJECT_DIR OUT_DIR MINUTES JSON [JSON ...]
#
# SUBJECT_DIR as bench/gpu_head_eval.sh describes (e.g. .carry/cnn; carry .carry/gsplat_sm90.tar.xz too). Each
# JSON holds stage-2 keys over '{"head": "gaussians"}', e.g. '{}' '{"audio_region": 0.6}' '{"gaussians":
# {"hidden_dim": 128}}'; '{"head": "nerf", "amp": true}' trains the NeRF head instead, for a same-call comparison.
# The torso is trained once (default config, bench/gpu_torso_eval.sh: OUT_DIR/torso_0.json) before the first
# render. Writes OUT_DIR/variants.jsonl (one line per variant: its config, steps, teacher-forced test and train
# head PSNR, eval curve, Gaussians, and the audio-driven head / region PSNR and sharpness, head-only frames/s) and
# OUT_DIR/steps.log. A failing variant is logged and the next one runs. Then bench/gpu_render_speed.py times the
# last head and the synthesis split into its parts (head, torso, compositing, seam, host copy), and profiles
# them: OUT_DIR/render_speed.json and render_profile.txt. Env: PYTHON (python3), EVAL_EVERY (steps between
# teacher-forced evaluations, 1500), RENDER_SPEED (1; 0 skips the timing), POSE_LAG (0; 1 runs bench/pose_lag.py on
# each variant's head -> OUT_DIR/pose_lag_K.json, with gsplat set up as for the training), NERF_PROBE (0; 1 runs
# bench/nerf_speed_probe.py --sweep on each NeRF variant's head -> OUT_DIR/nerf_probe_K.json: where its render time
# goes, compiled, and with other marching settings; about 1 minute a head).
set -uo pipefail
if [[ $# -lt 4 ]]; then
    sed -n '2,20p' "$0"; exit 2
fi
s=$1; out=$2; minutes=$3; shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/steps.log"
source "$repo/bench/gpu_gsplat_env.sh" >> "$log" 2>&1 || { echo "gsplat unavailable (see $log)"; exit 1; }
if [[ ! -f "$s/torso/torso.json" ]]; then     # the default torso, trained once (no head yet: nothing rendered)
    rm -f "$s/stage2/head.pt"
    PYTHON=$py bash "$repo/bench/gpu_torso_eval.sh" "$s" "$out" '{}' > /dev/null \
        && cp -r "$s/torso_0" "$s/torso" || { echo "torso training failed (see $log)"; exit 1; }
fi
k=0
for variant in "$@"; do
    cfg=$("$py" -c 'import json, sys; c = {"head": "gaussians"}; c.update(json.loads(sys.argv[1])); print(json.dumps(c))' \
          "$variant")
    echo "variant $k: $cfg" | tee -a "$log"
    # a fresh run: no checkpoint or head of the previous variant
    rm -f "$s"/stage2/{checkpoint.pt,head.pt,head.json,occupancy.npz,metrics.json}
    if EVAL_EVERY=${EVAL_EVERY:-1500} PYTHON=$py bash "$repo/bench/gpu_train_head.sh" "$s" "$s/stage2" "$minutes" "$cfg" \
            > /dev/null 2>&1 \
        && "$py" -m pipeline.render video --subject-dir "$s" --out "$s/video.npz" --config '{"device": "cuda"}' \
            >> "$log" 2>&1 \
        && "$py" "$repo/bench/gpu_eval_render.py" --subject-dir "$s" --frames "$s/video.npz" --out "$s/eval_$k" \
            --fps-frames 24 >> "$log" 2>&1; then
        "$py" - "$cfg" "$s/stage2/metrics.json" "$s/eval_$k/render_eval.json" <<'PY' | tee -a "$out/variants.jsonl"
import json, sys
m, r = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print(json.dumps({"config": json.loads(sys.argv[1]), "steps": m["steps"], "steps_per_sec": m["steps_per_sec"],
                  "gaussians": m.get("gaussians"), "test_head_teacher_forced": round(m["psnr_head"], 2),
                  "train_head": round(m["psnr_head_train"], 2), "eval_curve": m["eval_curve"],
                  "head_audio_driven": round(r["mean"]["psnr_head"], 2), "full_frame": round(r["mean"]["psnr"], 2),
                  "regions": {k: [v["psnr"], v["sharpness"]] for k, v in r["regions"].items()},
                  "head_only_fps": r["head_only"]["frames_per_sec"],
                  "head_torso_fps": r["head_torso"]["frames_per_sec"]}))
PY
        if [[ ${NERF_PROBE:-0} == 1 && $cfg == *'"nerf"'* ]]; then
            PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" "$repo/bench/nerf_speed_probe.py" --subject-dir "$s" \
                --out "$out/nerf_probe_$k.json" --train-steps 0 --variants eager,compile --sweep >> "$log" 2>&1 \
                || echo "variant $k: nerf_speed_probe failed" | tee -a "$log"
        fi
        if [[ ${POSE_LAG:-0} == 1 ]]; then
            PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" "$repo/bench/pose_lag.py" --subject-dir "$s" \
                --out "$out/pose_lag_$k.json" >> "$log" 2>&1 || echo "variant $k: pose_lag failed" | tee -a "$log"
        fi
    else
        echo "variant $k failed:" | tee -a "$log"
        tail -5 "$s/stage2/bench.log" 2> /dev/null | tee -a "$log"
    fi
    k=$((k + 1))
done
if [[ ${RENDER_SPEED:-1} == 1 && -f "$s/stage2/head.pt" ]]; then
    "$py" "$repo/bench/gpu_render_speed.py" --subject-dir "$s" --device cuda --out "$out/speed" >> "$log" 2>&1 \
        && cp "$out/speed/render_speed.json" "$out/speed/render_profile.txt" "$out/" && rm -rf "$out/speed"
    tail -2 "$log"
fi
