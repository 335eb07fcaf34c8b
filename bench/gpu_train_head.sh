#!/usr/bin/env bash
# Train the stage-2 head NeRF for a fixed wall-clock budget at full resolution (default 512²) on a GPU machine
# and record test-split head PSNR/SSIM against time (metrics.json: "eval_curve", final "psnr_head", ...).
#
#   bench/gpu_train_head.sh SUBJECT_DIR OUT_DIR [MINUTES] [EXTRA_JSON]
#
# SUBJECT_DIR is a copy of results/<s> holding only what training reads (docs/stage2.md, "Files a training
# run needs"): stage2/{frames.npy,labels.npy,cache.json} made by cache_frames at the training size (made here
# from crop/video.mp4 and parsing/labels.npz when missing: `python -m pipeline.stage2.cache`, OpenCV decode, ~8 s
# for 1779 frames at 512²), tracking/{transforms.json,canonical.npz},
# parsing/background.png, audio/self.npz, aus/aus.parquet, ingest/meta.json. Needs python with torch, numpy,
# pandas, pyarrow, opencv (tqdm optional; no ffmpeg). EXTRA_JSON overrides stage2 keys, e.g. '{"amp": true}';
# with '{"head": "gaussians"}' gsplat comes from bench/gpu_gsplat_env.sh (carry .carry/wheels or its package).
# Env: PYTHON (default python), EVAL_EVERY (steps between test evaluations, default 2000).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,14p' "$0"; exit 2
fi
subject_dir=$1
out_dir=$2
minutes=${3:-20}
extra=${4:-"{}"}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
mkdir -p "$out_dir"
cfg=$("$py" - "$minutes" "$extra" "${EVAL_EVERY:-2000}" <<'PY'
import json, sys
cfg = {"image_size": 0, "device": "cuda", "steps": 10_000_000, "max_minutes": float(sys.argv[1]),
       "eval_every": int(sys.argv[3]), "eval_max_frames": 20, "checkpoint_every": 5000, "log_every": 200,
       "threads": 8}
cfg.update(json.loads(sys.argv[2]))
print(json.dumps(cfg))
PY
)
echo "config: $cfg" | tee "$out_dir/bench.log"
if [[ ! -f "$subject_dir/stage2/cache.json" ]]; then     # the frame cache at the training size (OpenCV decode, ~8 s)
    size=$("$py" -c 'import json, sys; print(json.loads(sys.argv[1])["image_size"])' "$cfg")
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" -m pipeline.stage2.cache --video "$subject_dir/crop/video.mp4" \
        --labels "$subject_dir/parsing/labels.npz" --outdir "$subject_dir/stage2" --config "{\"image_size\": $size}" \
        >> "$out_dir/bench.log" 2>&1
fi
if [[ $cfg == *'"head": "gaussians"'* ]]; then      # the Gaussian head rasterises with gsplat (docs/gaussians.md)
    source "$repo/bench/gpu_gsplat_env.sh" >> "$out_dir/bench.log" 2>&1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$out_dir/bench.log" 2>/dev/null || true
start=$(date +%s)
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" -m pipeline.stage2.train --subject-dir "$subject_dir" \
    --outdir "$out_dir" --config "$cfg" 2>&1 | tee -a "$out_dir/bench.log"
echo "wall seconds (incl. start-up and final evaluation): $(( $(date +%s) - start ))" | tee -a "$out_dir/bench.log"
"$py" - "$out_dir/metrics.json" <<'PY' | tee -a "$out_dir/bench.log"
import json, sys
m = json.load(open(sys.argv[1]))
print(f"steps {m['steps']} in {m['train_seconds']:.0f} s ({m['steps_per_sec']:.2f} steps/s) on {m['device']}")
print(f"test head PSNR {m['psnr_head']:.2f} dB (plate {m['psnr_head_baseline']:.2f} dB), SSIM {m['ssim_head']:.4f}")
print("eval curve (step, seconds, PSNR, SSIM):")
for e in m["eval_curve"]:
    print(f"  {e['step']:>8} {e['seconds']:>9.1f} {e['psnr_head']:7.2f} {e['ssim_head']:.4f}")
PY
