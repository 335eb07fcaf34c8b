"""Many subjects: a real (local, one-node) SLURM cluster, incremental re-runs, resume after a kill."""

from __future__ import annotations

import json
import os
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
    from pipeline.preprocess import demo

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


# ----------------------------------------------------------------------------- incremental / resume

PREPROCESS = ["landmarks/landmarks.parquet", "audio/self.npz"]


def _run(workdir: Path, targets: list[str], *extra: str, overlay: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    configs = [TINY, str(overlay)] if overlay else [TINY]
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *targets, *extra, "--cores", "2",
                           "--configfile", *configs], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> job count ({} when nothing is to be done)."""
    jobs, inside = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            inside = True
            continue
        if inside and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def demo_built(tmp_path_factory) -> Path:
    """The demo subject built through preprocessing once (tiny profile)."""
    workdir = tmp_path_factory.mktemp("incremental")
    _run(workdir, [f"results/demo/{t}" for t in PREPROCESS])
    return workdir


def test_noop_rerun_has_nothing_to_do(demo_built):
    proc = _run(demo_built, [f"results/demo/{t}" for t in PREPROCESS], "-n")
    assert planned_jobs(proc.stdout + proc.stderr) == {}
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_param_change_reruns_that_stage_and_descendants_only(demo_built):
    overlay = demo_built / "overlay.yaml"
    overlay.write_text("landmarks:\n  max_gap: 4\n")
    proc = _run(demo_built, [f"results/demo/{t}" for t in PREPROCESS], "-n", overlay=overlay)
    # the lip-audio sync reads the landmarks, and the own-audio features read the sync's aligned audio
    assert planned_jobs(proc.stdout + proc.stderr) == {"detect_landmarks": 1, "measure_av_sync": 1,
                                                       "extract_audio_features": 1}
    overlay.write_text("audio:\n  n_mels: 64\n")
    proc = _run(demo_built, [f"results/demo/{t}" for t in PREPROCESS], "-n", overlay=overlay)
    assert planned_jobs(proc.stdout + proc.stderr) == {"extract_audio_features": 1}


def test_code_change_reruns_that_stage_and_descendants_only(demo_built):
    """Editing a module re-runs its rules (Snakemake compares content, so a bare touch does not)."""
    module = REPO / "pipeline" / "preprocess" / "crop.py"
    original, st = module.read_bytes(), module.stat()
    try:
        module.write_bytes(original + b"\n# an edit\n")
        os.utime(module, (time.time() + 5, time.time() + 5))
        proc = _run(demo_built, [f"results/demo/{t}" for t in PREPROCESS], "-n")
    finally:
        module.write_bytes(original)
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert planned_jobs(proc.stdout + proc.stderr) == {"crop_faces": 1, "detect_landmarks": 1, "measure_av_sync": 1,
                                                       "extract_audio_features": 1}


def test_resume_after_kill_keeps_finished_work(tmp_path):
    """SIGKILL the whole workflow mid-run; --rerun-incomplete finishes without redoing finished jobs."""
    targets = [f"results/demo/{t}" for t in PREPROCESS]
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), *targets, "--cores", "1", "--configfile", TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    crop = tmp_path / "results/demo/crop/video.mp4"
    started = tmp_path / "logs/detect_landmarks/demo.log"  # with one core, crop_faces has finished by then
    deadline = time.time() + 600
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started.exists() and crop.exists(), "the landmarks stage never started"
    time.sleep(1.0)  # landmark detection is running now
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_mtime = crop.stat().st_mtime_ns
    _run(tmp_path, targets, "--unlock")  # a killed Snakemake leaves its lock behind
    out = _run(tmp_path, targets, "--rerun-incomplete")
    assert crop.stat().st_mtime_ns == finished_mtime, "a finished artifact was recomputed"
    for t in targets:
        assert (tmp_path / t).is_file()
    assert "crop_faces" not in planned_jobs(out.stdout + out.stderr)
