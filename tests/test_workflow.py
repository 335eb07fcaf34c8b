"""The Snakemake workflow itself: lint-clean, a dry run of the whole DAG, the demo run for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from pipeline.core import media
from pipeline.core.artifacts import SYNC_OFFSET

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_lint_is_clean(tmp_path):
    proc = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def _fake_subjects(root: Path, names: list[str]) -> None:
    for name in names:
        d = root / "data" / name
        d.mkdir(parents=True)
        (d / f"{name}.mp4").write_bytes(b"dry runs never read this")


def test_dry_run_whole_dag(tmp_path):
    _fake_subjects(tmp_path, ["alice", "bob_2"])
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert "ingest_video" in out
    # one job per subject and per rule of the DAG built so far
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--summary")
    for name in ["alice", "bob_2"]:
        assert f"results/{name}/ingest/meta.json" in proc.stdout


def test_misnamed_video_is_named_in_a_warning(tmp_path):
    """A video in data/<s>/ under another name than <s>.mp4 is no subject: the run names it instead of planning
    nothing without a word. (Through profiles/local, the optional local profile, which must parse.)"""
    _fake_subjects(tmp_path, ["alice"])
    (tmp_path / "data" / "carol").mkdir()
    (tmp_path / "data" / "carol" / "talk.mp4").write_bytes(b"dry runs never read this")
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "local"))
    out = proc.stdout + proc.stderr
    assert "Using profile" in out and "warning: data/carol/talk.mp4 is ignored" in out
    assert "results/alice/video.mp4" in out and "results/carol" not in out


def test_sample_sheet_rejects_bad_subject_name(tmp_path):
    sheet = tmp_path / "subjects.tsv"
    sheet.write_text("subject\tvideo\tnotes\nbad name!\tx.mp4\t\n")
    proc = snakemake(tmp_path, "-n", "--config", f"subjects_tsv={sheet}", check=False)
    assert proc.returncode != 0
    assert "bad name!" in proc.stdout + proc.stderr and "line 2" in proc.stdout + proc.stderr


def test_config_schema_rejects_typo(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "ingest={'fsp': 30}", check=False)
    assert proc.returncode != 0
    assert "'fsp' was unexpected" in proc.stdout + proc.stderr


TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """README command 1 on a fresh folder (tiny profile): the built-in demo from nothing to results/demo/video.mp4
    (ingest -> crop -> landmarks -> tracking -> parsing -> AUs -> audio -> stage 1 -> stage 2 -> torso -> render).
    About 2.5 min on an idle 2-core machine."""
    workdir = tmp_path_factory.mktemp("demo")
    snakemake(workdir, "results/demo/video.mp4", "--cores", "2", "--configfile", TINY)
    return workdir


def test_demo_end_to_end(demo):
    meta = json.loads((demo / "results/demo/ingest/meta.json").read_text())
    assert meta["n_frames"] == 300 and meta["fps"] == 25
    t0, t1 = meta["split"]["test"]
    for rule in ("ingest_video", "measure_av_sync", "train_head", "render_video"):
        assert (demo / f"logs/{rule}/demo.log").is_file() and (demo / f"benchmarks/{rule}/demo.tsv").is_file()
    # the lip-audio sync ran before the features: its decision logged once, its audio as long as the ingested one
    sync = SYNC_OFFSET.read(demo / "results/demo/sync/sync.json")
    assert (demo / "logs/measure_av_sync/demo.log").read_text().count(sync["decision"]) == 1
    assert len(media.read_audio(demo / "results/demo/sync/audio.wav")) == meta["n_frames"] * 640

    video = demo / "results/demo/video.mp4"
    info = media.probe(video)
    assert info.video is not None and info.audio is not None, "video.mp4 needs a video and an audio stream"
    assert info.audio.codec == "aac" and info.video.fps == pytest.approx(25)
    assert info.video.n_frames == t1 - t0, "video.mp4 is the test split, one frame per test frame"
    assert abs(info.video.duration_sec - (t1 - t0) / 25) < 1e-6
    assert abs(info.audio.duration_sec - info.video.duration_sec) <= 1 / 25, "audio and video differ by > 1 frame"
    stats = json.loads((demo / "results/demo/video.json").read_text())
    assert stats["head"] == "stage2/head.pt" and stats["n_frames"] == t1 - t0
    frames = np.concatenate(list(media.iter_frames(video, info.video.width, info.video.height)))
    assert len(frames) == t1 - t0
    assert frames.std(axis=0).mean() > 1.0, "the frames do not change over time"
    assert frames.std() > 10.0, "a flat image"

    # a second run has nothing to do
    proc = snakemake(demo, "results/demo/video.mp4", "--cores", "2", "-n", "--configfile", TINY)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_switching_the_head_reruns_the_head_and_what_follows_only(demo, tmp_path):
    """stage2.head: gaussians on the built demo: train_head and the render re-run, nothing upstream (a dry run)."""
    from test_scale import planned_jobs

    overlay = tmp_path / "gaussians.yaml"
    overlay.write_text("stage2:\n  head: gaussians\n  gaussians:\n    count: 1000\n")
    proc = snakemake(demo, "results/demo/video.mp4", "--cores", "2", "-n", "--configfile", TINY, str(overlay))
    assert planned_jobs(proc.stdout + proc.stderr) == {"train_head": 1, "render_video": 1}
    overlay.write_text("stage2:\n  gaussians:\n    count: 1000\n")      # the NeRF head does not read them
    proc = snakemake(demo, "results/demo/video.mp4", "--cores", "2", "-n", "--configfile", TINY, str(overlay))
    assert planned_jobs(proc.stdout + proc.stderr) == {}
    overlay.write_text("stage2:\n  train_mouth: stage1\n")         # stage 1's out-of-fold mouths, a new input
    proc = snakemake(demo, "results/demo/video.mp4", "--cores", "2", "-n", "--configfile", TINY, str(overlay))
    assert planned_jobs(proc.stdout + proc.stderr) == {"oof_audio2lmk": 1, "train_head": 1, "render_video": 1}


def test_demo_evaluation_and_report(demo):
    """The demo's own video.mp4 evaluated by the evaluate rule, the benchmark table, then `snakemake --report`
    with every evaluation plot (nothing upstream re-runs)."""
    args = ("--cores", "2", "--configfile", TINY, "--config", "benchmark_subjects=[demo]")
    proc = snakemake(demo, *args, "--", "results/benchmark.md")
    out = proc.stdout + proc.stderr
    assert "rule evaluate" in out and "rule benchmark_table" in out and "rule render_video" not in out
    m = json.loads((demo / "results/demo/eval/metrics.json").read_text())
    assert m["subject"] == "demo" and m["test_frames"] == 28 and 5 < m["psnr_db"] < 60 and 0 < m["ssim"] <= 1
    assert "| demo |" in (demo / "results/benchmark.md").read_text()
    report = demo / "report.html"
    snakemake(demo, *args, "--report", str(report), "--", "results/benchmark.md")
    html = report.read_text(errors="replace")
    for name in ("psnr.png", "mouth.png", "pose.png", "strip.png", "test_strip.png", "benchmark.csv", "metrics.json"):
        assert name in html, name
