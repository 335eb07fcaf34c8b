"""Time and peak memory of ingest -> crop -> landmarks on long and large inputs (issue #24), through Snakemake.

    .venv/bin/python bench/bench_inputs.py [--workdir DIR] [--minutes 10] [--uhd-seconds 20] [--cores 2]

Builds three subjects from the shared clips with the bundled ffmpeg (in a scratch working directory, never
committed): ``cnn71`` (talk_dfrf_cnn_en as it is, 71 s), ``long10`` (the same clip looped to ``--minutes``) and
``uhd60`` (talk_mimictalk_german_de upscaled to 3840x2160 at 60 fps, ``--uhd-seconds`` long), then runs
``snakemake results/<s>/landmarks/landmarks.parquet --configfile configs/tiny.yaml`` on them. Reported per rule and
subject: wall time and max RSS from Snakemake's ``benchmarks/<rule>/<s>.tsv`` (its sampler looks every 0.5 s for
15 s, then every 30 s) and the peak of this script's own sampler (the job's whole process tree, every 0.2 s).
The TSVs (bench/results/inputs/snakemake_tsv/<rule>/<s>.tsv) and a JSON summary (inputs.json) are kept;
BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from pipeline.core import media
from pipeline.core.layout import ResultsLayout

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "bench" / "results" / "inputs"
RULES = ("ingest_video", "crop_faces", "detect_landmarks")


def ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def build_subjects(data: Path, minutes: float, uhd_seconds: float) -> dict[str, Path]:
    videos = {s: data / s / f"{s}.mp4" for s in ("cnn71", "long10", "uhd60")}
    for v in videos.values():
        v.parent.mkdir(parents=True, exist_ok=True)
    cnn, german = SHARED / "talk_dfrf_cnn_en.mp4", SHARED / "talk_mimictalk_german_de.mp4"
    if not videos["cnn71"].exists():
        shutil.copyfile(cnn, videos["cnn71"])
    if not videos["long10"].exists():
        ffmpeg("-stream_loop", "-1", "-i", str(cnn), "-t", str(minutes * 60), "-c:v", "libx264", "-preset", "ultrafast",
               "-crf", "18", "-c:a", "aac", str(videos["long10"]))
    if not videos["uhd60"].exists():
        ffmpeg("-i", str(german), "-t", str(uhd_seconds), "-vf", "scale=2160:2160:flags=bicubic,pad=3840:2160:840:0,fps=60",
               "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-c:a", "aac", str(videos["uhd60"]))
    return videos


class TreeSampler(threading.Thread):
    """Every ``interval`` s: the summed RSS of each job's process tree (the job = the ``python -m pipeline...``
    process and everything under it, ffmpeg and landmark workers included), keyed by (module, subject)."""

    def __init__(self, root_pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval, self.peak_mb = psutil.Process(root_pid), interval, {}
        self.stop = threading.Event()

    @staticmethod
    def _job(proc: psutil.Process) -> tuple[str, str] | None:
        for p in [proc, *proc.parents()]:
            try:
                cmd = p.cmdline()
            except psutil.Error:
                return None
            if "-m" in cmd and cmd[cmd.index("-m") + 1].startswith("pipeline."):
                outdir = cmd[cmd.index("--outdir") + 1] if "--outdir" in cmd else ""
                return cmd[cmd.index("-m") + 1], Path(outdir).parent.name
        return None

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            totals: dict[tuple[str, str], float] = {}
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                return
            for p in procs:
                try:
                    key, rss = self._job(p), p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if key:
                    totals[key] = totals.get(key, 0.0) + rss
            for key, mb in totals.items():
                self.peak_mb[key] = max(self.peak_mb.get(key, 0.0), mb)


MODULE = {"ingest_video": "pipeline.preprocess.ingest", "crop_faces": "pipeline.preprocess.crop",
          "detect_landmarks": "pipeline.preprocess.landmarks"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="", help="keep the scratch working directory here (default: a temp dir)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--uhd-seconds", type=float, default=20.0)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_inputs_"))
    t0 = time.perf_counter()
    videos = build_subjects(workdir / "data", args.minutes, args.uhd_seconds)
    print(f"clips built in {time.perf_counter() - t0:.0f} s under {workdir}", flush=True)
    results = ResultsLayout("results")
    targets = [str(results.subject(s).landmarks.table) for s in videos]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                             "--cores", str(args.cores), "--configfile", str(REPO / "configs" / "tiny.yaml"), "--", *targets],
                            env=env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    sampler.stop.set()
    sampler.join()
    if rc != 0:
        sys.exit(f"snakemake failed (exit {rc}); logs under {workdir / 'logs'}")

    rows = []
    for s, video in videos.items():
        info = media.probe(video)
        for rule in RULES:
            tsv = workdir / "benchmarks" / rule / f"{s}.tsv"
            with open(tsv, newline="") as f:
                rec = next(csv.DictReader(f, delimiter="\t"))
            dest = OUT / "snakemake_tsv" / rule / f"{s}.tsv"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tsv, dest)
            rows.append({"subject": s, "rule": rule, "source": f"{info.video.width}x{info.video.height} "
                         f"{info.video.fps:.0f} fps {info.video.duration_sec:.0f} s", "seconds": float(rec["s"]),
                         "snakemake_max_rss_mb": float(rec["max_rss"]) if rec["max_rss"] != "NA" else None,
                         "sampled_peak_rss_mb": round(sampler.peak_mb.get((MODULE[rule], s), 0.0), 1)})
    machine = (f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
               f"{psutil.virtual_memory().total / 2**30:.0f} GiB")
    (OUT / "inputs.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"machine: {machine}")
    print("| subject | source | rule | time (s) | peak RSS, job tree (MB) | Snakemake max_rss (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subject']} | {r['source']} | {r['rule']} | {r['seconds']:.1f} | {r['sampled_peak_rss_mb']:.0f} | "
              f"{r['snakemake_max_rss_mb']} |")


if __name__ == "__main__":
    main()
