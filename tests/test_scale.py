"""Many subjects: a real (local, one-node) SLURM cluster, incremental re-runs, resume after a kill."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import slurm_cluster
from conftest import REPO

TINY = str(REPO / "configs" / "tiny.yaml")
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def _two_demo_subjects(workdir: Path) -> list[str]:
    """Two subjects from the built-in demo clip (the second is the first, renamed)."""
    from pipeline import demo

    src = workdir / "data" / "demo" / "demo.mp4"
    if not src.exists():
        demo.run(src)
    (workdir / "data" / "demo2").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, workdir / "data" / "demo2" / "demo2.mp4")
    return ["demo", "demo2"]


def _targets(subjects: list[str]) -> list[str]:
    return [f"results/{s}/ingest/meta.json" for s in subjects]


def _deterministic_outputs(workdir: Path, subject: str) -> dict:
    """Artifacts that must be identical wherever the job ran (timing-free fields only)."""
    meta = json.loads((workdir / "results" / subject / "ingest" / "meta.json").read_text())
    meta.pop("source", None)
    return {"meta": meta, "audio": (workdir / "results" / subject / "ingest" / "audio.wav").read_bytes()}


def _watch_squeue(env: dict, seen: set, stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["squeue", "-h", "-o", "%j|%T"], capture_output=True, text=True, env=env).stdout
        seen.update(line for line in out.splitlines() if line.strip())
        time.sleep(0.5)


def test_slurm_two_subjects_match_local_run(tmp_path):
    why = slurm_cluster.available()
    if why:
        pytest.fail(f"SLURM test needs slurm-wlm and munge ({why}); .ci/run installs them")
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    subjects = _two_demo_subjects(local)
    shutil.copytree(local / "data", cluster / "data")

    subprocess.run([*SNAKEMAKE, "--directory", str(local), *_targets(subjects), "--cores", "2",
                    "--configfile", TINY], check=True, capture_output=True)

    seen: set[str] = set()
    stop = threading.Event()
    with slurm_cluster.local_slurm(tmp_path / "slurm") as env:
        watcher = threading.Thread(target=_watch_squeue, args=(env, seen, stop), daemon=True)
        watcher.start()
        proc = subprocess.run(
            [*SNAKEMAKE, "--directory", str(cluster), *_targets(subjects), "--profile", str(REPO / "profiles" / "slurm"),
             "--configfile", TINY, "--jobs", "4", "--slurm-status-command", "squeue", "--slurm-no-account",
             "--slurm-init-seconds-before-status-checks", "1"],
            capture_output=True, text=True, env=env, timeout=900)
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seen, "no job was ever visible in squeue"
    for s in subjects:
        assert _deterministic_outputs(cluster, s) == _deterministic_outputs(local, s), s
        assert (cluster / "logs" / "ingest_video" / f"{s}.log").is_file()
