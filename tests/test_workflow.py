"""The Snakemake workflow itself: lint-clean, a dry run of the whole DAG, the demo run for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

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


def test_demo_runs_through_snakemake(tmp_path):
    """README command 1 in miniature: the built-in demo through the furthest stage that exists."""
    snakemake(tmp_path, "results/demo/ingest/meta.json", "--cores", "2", "--configfile", str(REPO / "configs" / "tiny.yaml"))
    meta = json.loads((tmp_path / "results/demo/ingest/meta.json").read_text())
    assert meta["n_frames"] == 300 and meta["fps"] == 25
    assert (tmp_path / "logs/ingest_video/demo.log").is_file()
    assert (tmp_path / "benchmarks/ingest_video/demo.tsv").is_file()
    # a second run has nothing to do
    proc = snakemake(tmp_path, "results/demo/ingest/meta.json", "--cores", "2", "-n",
                     "--configfile", str(REPO / "configs" / "tiny.yaml"))
    assert "Nothing to be done" in proc.stdout + proc.stderr
