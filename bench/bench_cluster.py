"""Many tiny subjects through the one-node SLURM on localhost vs locally (issue #23): wall time, jobs, peak memory.

    PYTHONPATH=. .venv/bin/python bench/bench_cluster.py --subjects 4 [--overlay tests' OVERLAY as a file]

Both runs build video.mp4 and eval/metrics.json of every subject plus results/benchmark.md on the tiny profile,
each in a fresh folder (the subjects are the built-in demo clip under several names). Local: `--cores 2`. SLURM:
`--profile profiles/slurm` on tests/slurm_cluster.py's one-node cluster (this machine's CPUs, a gres GPU token).
Peak memory per job is Snakemake's `benchmark:` max_rss of each job (benchmarks/<rule>/<subject>.tsv).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import slurm_cluster  # noqa: E402

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
TINY = str(REPO / "configs" / "tiny.yaml")


def _subjects(work: Path, n: int) -> list[str]:
    from pipeline.preprocess import demo

    src = work / "data" / "demo" / "demo.mp4"
    demo.run(src)
    names = ["demo"] + [f"demo{i}" for i in range(2, n + 1)]
    for name in names[1:]:
        (work / "data" / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, work / "data" / name / f"{name}.mp4")
    return names


def _targets(names: list[str]) -> list[str]:
    from pipeline.core.layout import ResultsLayout

    results = ResultsLayout("results")
    return [*(str(results.subject(s).video) for s in names), str(results.benchmark_md)]


def _job_rss(work: Path) -> dict[str, list[float]]:
    """rule -> max_rss (MB) of each of its jobs, from the benchmark files."""
    out: dict[str, list[float]] = {}
    for tsv in sorted((work / "benchmarks").glob("*/*.tsv")):
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss = row.get("max_rss", "NA")
        out.setdefault(tsv.parent.name, []).append(float(rss) if rss not in ("NA", "-") else float("nan"))
    return out


def _requests(env: dict) -> dict[str, str]:
    """rule -> what its SLURM jobs asked for (mem, time limit, CPUs, GPUs), from `scontrol show job -o`."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=env).stdout
    req = {}
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        rule = re.sub(r"^rule_|_wildcards_.*$", "", f.get("Comment", ""))
        req[rule] = f"{f.get('MinMemoryNode')} {f.get('TimeLimit')} cpus={f.get('NumCPUs')} {f.get('TresPerJob', '')}"
    return req


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and the number of jobs Snakemake ran (its last 'N of N steps' line)."""
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    steps = re.findall(r"(\d+) of (\d+) steps", proc.stdout + proc.stderr)
    return time.time() - t, int(steps[-1][1]) if steps else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster.json")
    ap.add_argument("--only", choices=["local", "slurm"], default=None)
    ap.add_argument("--overlay", type=Path, default=None, help="a config overlaid on configs/tiny.yaml")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    configs = ["--configfile", TINY, *([str(args.overlay.resolve())] if args.overlay else [])]
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        root = Path(tmp)
        if args.only in (None, "local"):
            work = root / "local"
            names = _subjects(work, args.subjects)
            wall, jobs = _run([*SNAKEMAKE, "--directory", str(work), *_targets(names), "--cores", "2", *configs])
            results["local"] = {"wall_s": round(wall, 1), "jobs": jobs, "max_rss_mb": _job_rss(work),
                                "load_after": os.getloadavg()}
        if args.only in (None, "slurm"):
            work = root / "slurm"
            names = _subjects(work, args.subjects)
            with slurm_cluster.local_slurm(root / "cluster", mem_mb=16000) as env:
                wall, jobs = _run([*SNAKEMAKE, "--directory", str(work), *_targets(names), "--profile",
                                   str(REPO / "profiles" / "slurm"), *configs, "--max-threads", "2",
                                   "--slurm-status-command", "squeue", "--slurm-no-account",
                                   "--slurm-init-seconds-before-status-checks", "1"], env=env)
                requests = _requests(env)
            results["slurm"] = {"wall_s": round(wall, 1), "jobs": jobs, "max_rss_mb": _job_rss(work),
                                "requested": requests, "load_after": os.getloadavg()}
    results["subjects"] = args.subjects
    results["overlay"] = args.overlay.read_text() if args.overlay else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("| run | wall (s) | jobs |")
    print("|---|---|---|")
    for k in ("local", "slurm"):
        if k in results:
            print(f"| {k} | {results[k]['wall_s']} | {results[k]['jobs']} |")
    print("\n| rule | local max_rss MB (max over jobs) | SLURM max_rss MB | SLURM request |")
    print("|---|---|---|---|")
    for rule in sorted(set(results.get("local", {}).get("max_rss_mb", {})) | set(results.get("slurm", {}).get("max_rss_mb", {}))):
        cells = [f"{max(results[k]['max_rss_mb'].get(rule, [float('nan')])):.0f}" if k in results else "-"
                 for k in ("local", "slurm")]
        req = results.get("slurm", {}).get("requested", {}).get(rule, "-")
        print(f"| {rule} | {' | '.join(cells)} | {req} |")


if __name__ == "__main__":
    main()
