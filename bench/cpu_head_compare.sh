#!/usr/bin/env bash
# The NeRF head and the Gaussian head (with and without density control) trained side by side on the CPU for the
# same wall-clock minutes, one thread each, so that other load on the machine slows all three alike.
#
#   bench/cpu_head_compare.sh SUBJECT_DIR OUT_DIR [MINUTES] [SIZE]
#
# SUBJECT_DIR: a preprocessed results/<s> (tracking, parsing, audio, aus, ingest, crop). Its crop is cached at SIZE
# px (default 128) into OUT_DIR/subject (links to SUBJECT_DIR's folders + its own stage2/ cache), and the three
# runs write OUT_DIR/{nerf,gs,gsd}/metrics.json; the table is printed at the end. The tiny profile's stage-2 keys
# with image_size SIZE, max_minutes MINUTES (default 6), threads 1, 20 test frames. BENCHMARKS.md has a result.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,10p' "$0"; exit 2
fi
src=$(cd "$1" && pwd); out=$2; minutes=${3:-6}; size=${4:-128}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out/subject"
for d in audio aus crop ingest landmarks parsing tracking; do
    [[ -e $src/$d && ! -e $out/subject/$d ]] && ln -s "$src/$d" "$out/subject/$d"
done
"$py" -m pipeline.stage2.cache --video "$out/subject/crop/video.mp4" --labels "$out/subject/parsing/labels.npz" \
    --outdir "$out/subject/stage2" --config "{\"image_size\": $size}" > "$out/cache.log" 2>&1
configs=$("$py" - "$repo" "$minutes" "$size" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1] + "/tests")
from conftest import profile_section
base = profile_section("stage2")
base.update(image_size=int(sys.argv[3]), steps=10**7, max_minutes=float(sys.argv[2]), eval_max_frames=20,
            log_every=20, threads=1, checkpoint_every=10**6)
gs = {**base, "head": "gaussians", "frames_per_batch": 2, "gaussians": {"count": 5000, "densify_every": 0}}
gsd = {**gs, "gaussians": {"count": 5000, "densify_every": 25, "max_count": 20000}}
for name, cfg in (("nerf", base), ("gs", gs), ("gsd", gsd)):
    print(name, json.dumps(cfg, separators=(",", ":")))
PY
)
while read -r name cfg; do
    "$py" -m pipeline.stage2.train --subject-dir "$out/subject" --outdir "$out/$name" --config "$cfg" \
        > "$out/$name.log" 2>&1 &
done <<< "$configs"
wait
"$py" - "$out" <<'PY'
import json, sys
print("| run | steps | CPU s | test head PSNR | SSIM | train head PSNR | Gaussians |")
for name in ("nerf", "gs", "gsd"):
    m = json.load(open(f"{sys.argv[1]}/{name}/metrics.json"))
    print(f"| {name} | {m['steps']} | {m['train_cpu_seconds']:.0f} | {m['psnr_head']:.2f} | {m['ssim_head']:.3f} | "
          f"{m['psnr_head_train']:.2f} | {m.get('gaussians', '')} |")
PY
