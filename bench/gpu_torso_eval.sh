#!/usr/bin/env bash
# Torso variants on one GPU call: train each torso config on a subject that already has a trained head, then render
# the test split with each variant and score it like [torso-v2]/[head-v2] (bench/gpu_eval_render.py).
#
#   bench/gpu_torso_eval.sh SUBJECT_DIR OUT_DIR TORSO_JSON [TORSO_JSON ...]
#
# SUBJECT_DIR: what bench/gpu_head_eval.sh used (a copy of results/<s> plus stage2/head.pt trained by it, and
# parsing/labels.npz, crop/crop.json). Each TORSO_JSON overrides torso keys (device cuda is added). Writes
# OUT_DIR/torso_<k>.json (metrics.json of variant k: test torso/neck PSNR with the true head, train seconds),
# OUT_DIR/render_eval_<k>.json (only when the subject has a head) and steps.log. Env: PYTHON (python3).
set -euo pipefail
if [[ $# -lt 3 ]]; then
    sed -n '2,10p' "$0"; exit 2
fi
s=$1; out=$2; shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
log="$out/steps.log"
k=0
for variant in "$@"; do
    cfg=$("$py" -c 'import json, sys; c = {"device": "cuda"}; c.update(json.loads(sys.argv[1])); print(json.dumps(c))' "$variant")
    echo "variant $k: $cfg" | tee -a "$log"
    "$py" -m pipeline.torso.train --crop-video "$s/crop/video.mp4" --torso "$s/parsing/torso.npz" \
        --labels "$s/parsing/labels.npz" --background "$s/parsing/background.png" \
        --tracks "$s/tracking/tracks.parquet" --transforms "$s/tracking/transforms.json" \
        --crop-meta "$s/crop/crop.json" --outdir "$s/torso_$k" --config "$cfg" >> "$log" 2>&1
    cp "$s/torso_$k/metrics.json" "$out/torso_$k.json"
    tail -1 "$log"
    k=$((k + 1))
done
if [[ ! -f "$s/stage2/head.pt" ]]; then
    echo "no $s/stage2/head.pt: variants trained, nothing rendered"; exit 0
fi
for ((j = 0; j < k; j++)); do
    rm -rf "$s/torso" && cp -r "$s/torso_$j" "$s/torso"
    "$py" -m pipeline.render video --subject-dir "$s" --out "$s/video.npz" --config '{"device": "cuda"}' >> "$log" 2>&1
    "$py" "$repo/bench/gpu_eval_render.py" --subject-dir "$s" --frames "$s/video.npz" --out "$s/eval" \
        --fps-frames 24 >> "$log" 2>&1
    cp "$s/eval/render_eval.json" "$out/render_eval_$j.json"
    "$py" - "$out/render_eval_$j.json" "$j" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
r = m["regions"]
print(f"variant {sys.argv[2]}:", {"full_frame": round(m["mean"]["psnr"], 2), "head": round(m["mean"]["psnr_head"], 2),
      **{k: (r[k]["psnr"], r[k]["sharpness"]) for k in ("background", "torso", "neck")},
      "seam_jump": m["head_torso"]["seam_jump"], "head_torso_fps": m["head_torso"]["frames_per_sec"]})
PY
done
