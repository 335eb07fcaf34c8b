"""Rule ``benchmark_table``: the ``eval/metrics.json`` of any set of subjects -> ``results/benchmark.md`` (with
notes on what is missing and why) and ``results/benchmark.csv``, one row per subject, as in the ER-NeRF /
TalkingGaussian tables. ``python -m pipeline.evaluate.table --metrics M... --md OUT.md --csv OUT.csv`` (also
``python -m pipeline.evaluate table ...``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from pipeline.core.artifacts import EVAL_METRICS, ArtifactError, atomic_output
from pipeline.core.cli import guarded

TABLE_COLUMNS = (  # (csv column, markdown header, metrics.json getter, format)
    ("subject", "Subject", lambda m: m["subject"], "{}"),
    ("psnr_db", "PSNR ↑", lambda m: m["psnr_db"], "{:.2f}"),
    ("ssim", "SSIM ↑", lambda m: m["ssim"], "{:.4f}"),
    ("lpips", "LPIPS ↓", lambda m: m["lpips"], "{:.4f}"),
    ("lmd_mesh_px", "LMD mesh ↓", lambda m: m["lmd_mesh_px"], "{:.2f}"),
    ("lmd_dlib_px", "LMD dlib-68 ↓", lambda m: m["lmd_dlib_px"], "{:.2f}"),
    ("sync_offset_frames", "Sync offset (frames)", lambda m: m["sync_offset_frames"], "{:+d}"),
    ("blink_au45_mae", "Blink AU45 MAE ↓", lambda m: m["blink"]["au45_mae"], "{:.3f}"),
    ("blink_count_error", "Blink count err ↓", lambda m: m["blink"]["count_error"], "{:d}"),
    ("render_fps", "FPS ↑", lambda m: m["render_fps"], "{:.2f}"),
    ("train_seconds", "Train time", lambda m: m["train_seconds"], "{:.0f} s"),
    ("psnr_head_db", "PSNR head ↑", lambda m: m["psnr_head_db"], "{:.2f}"),
    ("size", "Size", lambda m: m["size"], "{:d}"),
    ("test_frames", "Test frames", lambda m: m["test_frames"], "{:d}"),
)


def run(metrics: list[Path | str], out_md: Path | str, out_csv: Path | str) -> list[dict]:
    """One row per subject's eval/metrics.json -> a markdown table (with notes) and a CSV."""
    docs = sorted((EVAL_METRICS.read(p) for p in metrics), key=lambda m: m["subject"])
    if not docs:
        raise ArtifactError(out_md, "no eval/metrics.json given")
    rows = [{c: get(m) for c, _, get, _ in TABLE_COLUMNS} for m in docs]
    with atomic_output(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c, *_ in TABLE_COLUMNS])
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    lines = ["| " + " | ".join(h for _, h, _, _ in TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("–" if r[c] is None else fmt.format(r[c]) for c, _, _, fmt in TABLE_COLUMNS) + " |")
    notes = ["", "PSNR/SSIM: mean over the test split's frames (full frame; 'PSNR head': parsing labels 3-7). "
             "LMD: mouth landmark distance in px at the render size, each frame's mouth centroid removed "
             "(mediapipe 478-point lips; dlib 68-point predictor, points 48-67). Sync offset: frames, > 0 audio late, "
             "0 ideal. FPS: render speed (video.json). '–': not available (reason below)."]
    for m in docs:
        why = []
        if m["lpips"] is None:
            why.append(f"LPIPS {m['lpips_note']}")
        if m["sync_offset_frames"] is None:
            why.append(f"sync not measurable ({m['sync']['render']['reason']})")
        if m["render_fps"] is None:
            why.append("FPS: no video.json beside the video")
        if m["train_seconds"] is None:
            missing = [k for k, v in m["train_seconds_parts"].items() if v is None]
            why.append(f"train time: no metrics.json of {', '.join(missing)}")
        if why:
            notes.append(f"- {m['subject']}: " + "; ".join(why))
    with atomic_output(out_md) as tmp:
        tmp.write_text("\n".join(lines + notes) + "\n")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Tabulate the eval/metrics.json of any set of subjects.")
    p.add_argument("--metrics", nargs="+", required=True, help="results/<subject>/eval/metrics.json ...")
    p.add_argument("--md", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args(argv)
    guarded(lambda: run(args.metrics, args.md, args.csv))


if __name__ == "__main__":
    main()
