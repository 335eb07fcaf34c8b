"""How far the test suite's thresholds on *trained* results sit from what training reaches.

Each figure that a test compares with a threshold after a training run is measured here over several seeds
and torch thread counts 1 and 2 (the CPU tiny size the tests use, on the real clips they use), so that every
threshold can be set well inside the range and the range written next to it (BENCHMARKS.md, "Test margins").

    .venv/bin/python bench/test_margins.py --out bench/results/test_margins.json
    .venv/bin/python bench/test_margins.py --only sphere,conditioning --seeds 0 1 2 3 4

Real clips come from ../shared/data (SHARED_DATA overrides); preprocessing is shared between the runs
(``--work`` keeps it between invocations).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import Processed, profile_section, speech_path  # noqa: E402
from pipeline.core.layout import SELF_AUDIO, SubjectLayout  # noqa: E402

THREADS = (1, 2)


def sphere(seed: int, _: Processed) -> dict:
    from test_stage2_fit import sphere_fit_psnr

    trained, untrained = sphere_fit_psnr(seed)
    return {"held_out_psnr_db": trained, "untrained_psnr_db": untrained}


def conditioning(seed: int, _: Processed) -> dict:
    from test_stage2_fit import landmark_conditioning_fit

    r = landmark_conditioning_fit(seed + 1)     # the test's seed is 1
    return {"cond_minus_plain_db": r["psnr_cond"] - r["psnr_plain"],
            "spot_move_error_ratio": abs(r["moved"] - r["moved_gt"]) / r["moved_gt"]}


def stage1(seed: int, processed: Processed, threads: int) -> dict:
    """The conftest stage-1 run (300 steps) with another seed / thread count, on the three long clips, and the
    cnn model driven by the three foreign-language wavs of test_drive_with_other_languages."""
    import soundfile as sf

    from pipeline.core.artifacts import STAGE1_PRED, fixed_list_column
    from pipeline.audio.features import run as audio_run
    from pipeline.core.config import Stage1Config
    from pipeline.core.metrics import best_lag, mouth_opening, rms_envelope
    from pipeline.stage1 import predict, train

    out = {}
    for clip in ("talk_dfrf_cnn_en", "talk_dfrf_macron_fr", "talk_mimictalk_german_de"):
        processed.tracking(clip)
        processed.audio(clip)
        d = processed.dir(clip)
        s = SubjectLayout(d)
        run_dir = d / f"stage1_s{seed}_t{threads}"
        m = train.run(s.audio.features(SELF_AUDIO), s.tracking.canonical, s.tracking.transforms,
                      run_dir, Stage1Config(steps=300, seed=seed, threads=threads))
        out[f"{clip}.mean_shape_minus_lmd_px"] = m["lmd_px_mean_shape"] - m["lmd_px"]
        out[f"{clip}.linear_minus_lmd_px"] = m["lmd_px_linear"] - m["lmd_px"]
        out[f"{clip}.mouth_corr"] = m["mouth_corr"]
        if clip == "talk_dfrf_cnn_en":
            for wav in ("speech_genefacepp_macron_fr", "speech_sadtalker_chinese_news_zh", "speech_dreamtalk_german1_de"):
                feats = processed.root / "_wavs" / f"{wav}.npz"
                if not feats.exists():
                    audio_run(speech_path(wav), feats, feats.with_suffix(".parquet"))
                n = predict.run(feats, run_dir, run_dir / f"{wav}.parquet")
                lms = fixed_list_column(STAGE1_PRED.read(run_dir / f"{wav}.parquet"), "landmarks", (478, 3))
                samples, sr = sf.read(str(speech_path(wav)), always_2d=True)
                _, r = best_lag(mouth_opening(lms), rms_envelope(samples.mean(1), sr, 25, n), 2)
                out[f"drive.{wav}.mouth_energy_r"] = r
    return out


def stage2(seed: int, processed: Processed, threads: int) -> dict:
    """The conftest tiny stage-2 run on katiehill with another seed / thread count."""
    import shutil

    from pipeline.core.config import stage2_configs
    from pipeline.stage2 import cache, train

    clip = "talk_sadtalker_katiehill_en"
    processed.stage2(clip)                       # preprocessing + the frame cache
    d = processed.dir(clip)
    mcfg, tcfg = stage2_configs(profile_section("stage2"))
    tcfg = dataclasses.replace(tcfg, seed=seed, threads=threads)
    out_dir = d / f"stage2_s{seed}_t{threads}"
    if not out_dir.exists():                    # the run's own folder, with a copy of the frame cache
        out_dir.mkdir()
        cached = SubjectLayout(d).stage2
        for f in (cached.frames, cached.labels, cached.cache):
            shutil.copy(f, out_dir)
    m = train.run(d, out_dir, mcfg, tcfg)
    curve = [c["psnr"] for c in m["curve"]]
    return {"test_minus_plate_db": m["psnr_head"] - m["psnr_head_baseline"],
            "train_minus_plate_db": m["psnr_head_train"] - m["psnr_head_baseline"],
            "generalisation_gap_db": m["generalisation_gap_db"],
            "curve_rise_db": max(curve) - curve[0]}


def torso(seed: int, processed: Processed, threads: int) -> dict:
    """tests/test_torso_render.py's torso run with another seed / thread count."""
    from pipeline.torso import train as torso_mod
    from pipeline.core.config import TorsoConfig
    from test_torso_render import CLIP, TORSO_CFG

    processed.parsing(CLIP)
    processed.tracking(CLIP)
    d = processed.dir(CLIP)
    s = SubjectLayout(d)
    cfg = TorsoConfig(**{**TORSO_CFG, "seed": seed, "threads": threads})
    m = torso_mod.run(s.crop.video, s.parsing.torso, s.parsing.labels, s.parsing.background, s.tracking.tracks,
                      s.tracking.transforms, s.crop.meta, d / f"torso_s{seed}_t{threads}", cfg)
    return {"torso_minus_mean_db": m["psnr_torso_neck_db"] - m["psnr_torso_neck_mean_db"],
            "alpha_iou_minus_mean": m["alpha_iou"] - m["alpha_iou_mean"]}


def tracking(seed: int, _: Processed) -> dict:
    import tempfile

    from test_tracking import recovery_errors

    with tempfile.TemporaryDirectory() as tmp:
        return recovery_errors(Path(tmp), seed)


SYNTHETIC = {"sphere": sphere, "conditioning": conditioning, "tracking": tracking}     # thread count set with torch.set_num_threads
REAL = {"stage1": stage1, "stage2": stage2, "torso": torso}      # thread count through the stage's config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join([*SYNTHETIC, *REAL]))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/test_margins"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "test_margins.json")
    args = ap.parse_args()
    processed = Processed(args.work)
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    for name in args.only.split(","):
        for threads in THREADS:
            for seed in args.seeds:
                t0 = time.perf_counter()
                if name in SYNTHETIC:
                    torch.set_num_threads(threads)
                    figures = SYNTHETIC[name](seed, processed)
                else:
                    figures = REAL[name](seed, processed, threads)
                secs = time.perf_counter() - t0
                rows = [r for r in rows if (r["test"], r["seed"], r["threads"]) != (name, seed, threads)]
                rows.append({"test": name, "seed": seed, "threads": threads, "seconds": round(secs, 1),
                             "figures": {k: round(float(v), 4) for k, v in figures.items()}})
                print(name, f"seed {seed} threads {threads}:", json.dumps(rows[-1]["figures"]), f"({secs:.0f} s)",
                      flush=True)
                write(args.out, rows)
    print(summary(rows))


def summary(rows: list[dict]) -> str:
    """A markdown table: each figure's min / max over the rows that measured it."""
    figs: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        for k, v in r["figures"].items():
            figs.setdefault((r["test"], k), []).append(v)
    lines = ["| test | figure | runs | min | max |", "|---|---|---|---|---|"]
    for (test, k), vals in sorted(figs.items()):
        lines.append(f"| {test} | {k} | {len(vals)} | {min(vals):.3f} | {max(vals):.3f} |")
    return "\n".join(lines)


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": f"{platform.node()} {platform.machine()}, torch {torch.__version__}, numpy {np.__version__}",
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
