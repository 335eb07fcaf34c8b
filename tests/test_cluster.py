"""The whole tiny DAG of two subjects through a real one-node SLURM (tests/slurm_cluster.py), issue #23.

One module-scoped run does all of it, to keep CI time down: `--profile profiles/slurm` builds video.mp4,
eval/metrics.json of demo and demo2 and results/benchmark.md; while it runs, one *running* job of demo2 is
`scancel`led, so the first command ends with demo finished and demo2 not; the same command again (with
`--rerun-incomplete`) finishes the DAG. Every job's submitted parameters are read back with
`scontrol show job` (the test cluster keeps finished jobs for an hour). The profile is profiles/slurm as a user
edits it (its EDIT partition lines switched on), given alone, as the README says: the jobs must land in its
partitions. The render stage runs with `device: cpu` (--config), so render_video must ask for no GPU while
train_head and train_torso ask for one. The `gpu` partition is down until two GPU jobs wait in it at once: proof
that the run does not cap GPU jobs in flight at one (as a profiles/default with `gpu=1` did). The outputs are
compared with a local run of the same DAG (`--cores 2`) of demo alone: demo2 is demo's video under another name,
so both cluster subjects are compared with it. Both runs use configs/tiny.yaml plus tests/cluster_overlay.yaml
(fewer training steps and tracking iterations, for the CI time of three subject DAGs; the DAG and every rule are
the tiny profile's).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import slurm_cluster
from conftest import REPO
from test_scale import SNAKEMAKE, TINY

from pipeline.core import media
from pipeline.preprocess import demo as demo_clip

SUBJECTS = ["demo", "demo2"]
TARGETS = [*(f"results/{s}/video.mp4" for s in SUBJECTS), "results/benchmark.md"]
GPU_RULES = {"train_head", "train_torso"}  # gpu=gpus(<section>) in their rules; their stages' device is auto
CPU_DEVICE = {"render_video": "render"}      # a GPU rule whose stage is set to `device: cpu`: asks for no GPU
OVERLAY = REPO / "tests" / "cluster_overlay.yaml"
CONFIG = ["--configfile", TINY, str(OVERLAY), "--config", *(f"{s}={{'device': 'cpu'}}" for s in CPU_DEVICE.values())]
# what the README adds on a cluster without accounting (and the test's small node); the profile comes alone
CLUSTER_ARGS = ["--max-threads", "2", "--slurm-status-command", "squeue", "--slurm-no-account",
                "--slurm-init-seconds-before-status-checks", "1"]


def edited_profile(dest: Path) -> Path:
    """profiles/slurm as a user edits it for a site whose partitions are `compute` and `gpu`: its commented
    slurm_partition lines (EDIT) switched on. The account and GPU-model lines stay off (no accounting here, and
    the test node's GPU has no model)."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    dest.mkdir(parents=True)
    edited = re.sub(r"^#(?=set-resources:|\s+- (\w+:)?slurm_partition=)", "", text, flags=re.M)
    (dest / "config.yaml").write_text(edited)
    return dest


def _partitions(profile: Path) -> tuple[str, dict[str, str]]:
    """(the default-resources partition, {rule: partition} from set-resources) of a profile."""
    cfg = yaml.safe_load((profile / "config.yaml").read_text())
    default = dict(r.split("=", 1) for r in cfg["default-resources"])["slurm_partition"]
    per_rule = {}
    for entry in cfg.get("set-resources") or []:
        rule, setting = entry.split(":", 1)
        key, value = setting.split("=", 1)
        if key == "slurm_partition":
            per_rule[rule] = value
    return default, per_rule


def _jobs(env: dict) -> list[dict[str, str]]:
    """Every job slurmctld still holds, as {field: value} from `scontrol show job -o`."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=env, check=True).stdout
    jobs = []
    for line in out.splitlines():
        if line.strip():
            jobs.append(dict(kv.split("=", 1) for kv in line.split() if "=" in kv))
    return jobs


def _rule_subject(job: dict[str, str]) -> tuple[str, str | None]:
    """(rule, subject) from the executor's comment 'rule_<rule>[_wildcards_<values joined by _>]': the subject is
    the first wildcard of every rule that has one (results/{subject}/...); the test's subjects hold no '_'."""
    comment = job.get("Comment", "")
    m = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", comment)
    assert m, f"not an executor comment: {comment!r}"
    return m.group(1), m.group(2).split("_")[0] if m.group(2) else None


def _cancel_one_running(env: dict, subject: str, proc: subprocess.Popen) -> dict[str, str]:
    """scancel the first job of ``subject`` seen RUNNING (retrying with the next if it finished first)."""
    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None:
        for job in _jobs(env):
            if job.get("JobState") == "RUNNING" and _rule_subject(job)[1] == subject:
                subprocess.run(["scancel", job["JobId"]], env=env)  # fails harmlessly if it just ended
                time.sleep(2)
                after = next(j for j in _jobs(env) if j["JobId"] == job["JobId"])
                if after["JobState"] == "CANCELLED":
                    return after
        time.sleep(0.3)
    raise AssertionError(f"no running job of {subject} could be cancelled")


def _gpu_jobs_queued_together(env: dict, proc: subprocess.Popen, wait_s: float = 900) -> list[str]:
    """With the `gpu` partition down, wait until two GPU jobs are queued at once (a run that capped GPU jobs in
    flight at one never submits the second), then bring the partition up; their ids ([] if never)."""
    deadline = time.time() + wait_s
    queued = []
    while time.time() < deadline and proc.poll() is None:
        queued = [j["JobId"] for j in _jobs(env) if j.get("JobState") == "PENDING" and "gpu" in j.get("TresPerJob", "")]
        if len(queued) >= 2:
            break
        time.sleep(1)
    subprocess.run(["scontrol", "update", "PartitionName=gpu", "State=UP"], env=env, check=True)
    return queued if len(queued) >= 2 else []


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.available()
    if why:
        pytest.fail(f"SLURM test needs slurm-wlm and munge ({why}); .ci/run installs them")
    root = tmp_path_factory.mktemp("cluster")
    work, local = root / "work", root / "local"
    profile = edited_profile(root / "profile")
    demo_clip.run(local / "data" / "demo" / "demo.mp4")
    for s in SUBJECTS:
        (work / "data" / s).mkdir(parents=True)
        shutil.copyfile(local / "data" / "demo" / "demo.mp4", work / "data" / s / f"{s}.mp4")
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(local), "results/demo/video.mp4", "results/benchmark.md",
                           "--cores", "2", *CONFIG], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local_out = proc.stdout + proc.stderr
    cmd = [*SNAKEMAKE, "--directory", str(work), *TARGETS, "--profile", str(profile), *CLUSTER_ARGS, *CONFIG]
    log = root / "first_run.log"
    with slurm_cluster.local_slurm(root / "slurm", mem_mb=16000) as env, log.open("w") as out:
        subprocess.run(["scontrol", "update", "PartitionName=gpu", "State=DOWN"], env=env, check=True)
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            cancelled = _cancel_one_running(env, "demo2", first)
            gpu_queued = _gpu_jobs_queued_together(env, first)
            first.wait(timeout=1800)
        finally:
            if first.poll() is None:
                first.kill()
        first_out = log.read_text()
        jobs_first = _jobs(env)
        finished = _mtimes(work / "results" / "demo")
        demo_done = (work / "results/demo/eval/metrics.json").is_file()
        second = subprocess.run([*cmd, "--rerun-incomplete"], capture_output=True, text=True, env=env, timeout=1800)
        jobs = _jobs(env)
    return {"work": work, "local": local, "profile": profile, "local_out": local_out, "cancelled": cancelled,
            "gpu_queued": gpu_queued, "first_rc": first.returncode, "first_out": first_out, "second": second,
            "jobs_first": jobs_first, "jobs": jobs, "finished": finished, "demo_done": demo_done}


def test_cancelled_job_then_rerun_incomplete_finishes_without_redoing_finished_subject(cluster):
    rule, subject = _rule_subject(cluster["cancelled"])
    assert subject == "demo2" and cluster["cancelled"]["JobState"] == "CANCELLED"
    assert cluster["first_rc"] != 0, "the first run should fail: one of its jobs was cancelled"
    assert cluster["demo_done"], f"demo was not finished by the first run (keep-going):\n{cluster['first_out'][-3000:]}"
    second = cluster["second"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    first_ids = {j["JobId"] for j in cluster["jobs_first"]}
    rerun = [_rule_subject(j) for j in cluster["jobs"] if j["JobId"] not in first_ids]
    assert (rule, "demo2") in rerun, f"the cancelled {rule} of demo2 was not redone: {rerun}"
    assert all(s != "demo" for _, s in rerun), f"the second run redid jobs of the finished subject: {rerun}"
    assert ("benchmark_table", None) in rerun
    assert _mtimes(cluster["work"] / "results" / "demo") == cluster["finished"], "a finished file of demo changed"
    for s in SUBJECTS:
        assert (cluster["work"] / f"results/{s}/eval/metrics.json").is_file()
        assert (cluster["work"] / f"logs/train_head/{s}.log").is_file()


def test_gpu_rules_request_a_gpu_and_cpu_rules_none(cluster):
    """The executor turns a rule's `gpu=N` resource into `sbatch --gpus=N`: slurmctld records TresPerJob=gres:gpu:N.
    A GPU rule whose stage is configured `device: cpu` (render_video here) has gpu=0 and asks for none. The test
    node's GPU is a gres token only (slurm_cluster.py): the jobs run on the CPU (device auto)."""
    seen = {}
    for job in cluster["jobs"]:
        rule, subject = _rule_subject(job)
        seen.setdefault(rule, []).append(job.get("TresPerJob", ""))
    assert GPU_RULES | set(CPU_DEVICE) <= set(seen), f"GPU rules missing from the jobs: {sorted(seen)}"
    for rule, tres in seen.items():
        if rule in GPU_RULES:
            assert all(t == "gres:gpu:1" for t in tres), (rule, tres)
        else:
            assert all("gpu" not in t for t in tres), (rule, tres)
    assert {"ingest_video", "crop_faces", "train_audio2lmk", "evaluate"} <= set(seen)


def test_jobs_carry_the_slurm_profiles_resources_alone(cluster):
    """`--profile <edited profiles/slurm>` alone: no workflow profile is read beside it (a profiles/default would
    replace the profile's keys one by one: its default-resources dropped the partitions, its `gpu=1` capped the GPU
    jobs in flight), every job lands in the partition the profile gives its rule (default-resources,
    set-resources), and two GPU jobs were queued at once. The local run's scheduler caps GPU jobs at one (the
    workflow's `gpu` cap, local-scoped, which a cluster run counts per job)."""
    assert "Using profile" in cluster["first_out"] and "workflow specific profile" not in cluster["first_out"]
    default, per_rule = _partitions(cluster["profile"])
    assert default == "compute" and per_rule["train_head"] == "gpu", "the EDIT lines were not switched on"
    for job in cluster["jobs"]:
        rule, subject = _rule_subject(job)
        assert job["Partition"] == per_rule.get(rule, default), (rule, subject, job["Partition"])
    assert len(cluster["gpu_queued"]) >= 2, "GPU jobs were never queued together: the run caps GPU jobs in flight"
    provided = re.search(r"Provided resources: .*\bgpu=(?:Resource\(\"gpu\", )?(\d+)", cluster["local_out"])
    assert provided and provided.group(1) == "1", "the local run does not cap GPU jobs at one"


def _json_numbers(d, prefix=""):
    """Numeric leaves of a JSON document, except timings and gaps. A gap (stage 2's generalisation_gap_db, train
    minus test head PSNR, ~0.06 dB) is the small difference of two compared figures (~13 dB): its relative error is
    ~200 times theirs (measured: 7e-5 relative on psnr_head_train made 1.8 % on the gap), so it is compared
    through them."""
    if isinstance(d, dict):
        for k, v in d.items():
            if not re.search(r"sec|time|elapsed|fps|rss|path|source|gap", k):  # timings, memory, paths, gaps
                yield from _json_numbers(v, f"{prefix}{k}.")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _json_numbers(v, f"{prefix}{i}.")
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield prefix.rstrip("."), float(d)


# Bit-identical between the SLURM and the local run (torch threads 2 in both), in both runs measured: preprocessing,
# audio, stage 1 and the torso (single-threaded-deterministic training).
EXACT = ["crop/boxes.parquet", "landmarks/landmarks.parquet", "tracking/tracks.parquet", "tracking/canonical.npz",
         "parsing/labels.npz", "aus/aus.parquet", "audio/self.npz", "audio/self.parquet", "stage1/metrics.json",
         "torso/metrics.json"]
# Stage 2 trains on one thread here (tests/cluster_overlay.yaml): two processes then gave bit-identical heads
# (2026-12-02). With two threads it is not bit-reproducible across processes now and then (scatter adds in another
# order; with stage2.deterministic true as well: two local runs differed by 2.5e-3 in a hash-table weight), so the
# tolerances below stay. Measured with two threads: one of two runs matched bit for bit, the other by 1e-7
# relative in the first losses, 5e-6 in head PSNR, 8e-5 absolute in occupancy density; a third (2026-12-02 14:25,
# both SLURM subjects identical to each other) by 1e-4 in a loss of the curve and 7e-5 in the training-frame head
# PSNR. What is measured on its renders moves more: the dlib-68 mouth distance by 7 % (0.849 vs 0.906 px) and, in
# a later run, 17 % in the benchmark table (0.79 vs 0.95 px), PSNR by 0.001 dB.
STAGE2, STAGE2_RTOL = ["stage2/metrics.json", "stage2/occupancy.npz"], 1e-3
EVAL, EVAL_RTOL = ["eval/metrics.json", "eval/frames.parquet"], 0.15
# Per frame, a landmark detector run on the 20-step head's near-random renders flips between two runs: two local
# runs of the same DAG (2026-12-02, stage2.deterministic true) differed by 0.28 px (54 %) in one frame's
# lmd_dlib_px while their mean moved 2 % (0.929 vs 0.948). So frames.parquet's detector columns are compared
# through their means in eval/metrics.json; its image metrics (PSNR, SSIM) frame by frame.
FRAME_DETECTOR_COLUMNS = ["lmd_dlib_px", "lmd_mesh_px", "mouth_open_render", "au45_render"]


def _equal(a: Path, b: Path, rtol: float, drop: tuple[str, ...] | list[str] = ()) -> bool:
    """Parquet (columns, rows, values; without the columns ``drop``), npz (keys, arrays) or JSON (numeric leaves)
    equal within ``rtol``."""
    if a.suffix == ".parquet":
        x, y = (pd.read_parquet(p).drop(columns=drop, errors="ignore") for p in (a, b))
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return False
        num = x.select_dtypes("number").columns
        return (x.drop(columns=num).equals(y.drop(columns=num))
                and np.allclose(x[num].to_numpy(float), y[num].to_numpy(float), rtol=rtol, atol=rtol, equal_nan=True))
    if a.suffix == ".npz":
        x, y = np.load(a), np.load(b)
        return sorted(x) == sorted(y) and all(
            np.array_equal(x[k], y[k]) if rtol == 0 or x[k].dtype.kind not in "fc"
            else np.allclose(x[k], y[k], rtol=rtol, atol=rtol, equal_nan=True) for k in x)
    x, y = dict(_json_numbers(json.loads(a.read_text()))), dict(_json_numbers(json.loads(b.read_text())))
    return x.keys() == y.keys() and all(np.isclose(x[k], y[k], rtol=rtol, atol=rtol, equal_nan=True) for k in x)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_cluster_outputs_match_local_run(cluster, subject):
    got, ref = cluster["work"] / "results" / subject, cluster["local"] / "results" / "demo"
    meta = json.loads((got / "ingest/meta.json").read_text())
    meta_ref = json.loads((ref / "ingest/meta.json").read_text())
    meta.pop("source", None), meta_ref.pop("source", None)
    assert meta == meta_ref
    assert (got / "ingest/audio.wav").read_bytes() == (ref / "ingest/audio.wav").read_bytes()
    for video in ("ingest/video.mp4", "crop/video.mp4", "video.mp4"):
        assert media.probe(got / video).video.n_frames == media.probe(ref / video).video.n_frames, video
    t0, t1 = meta["split"]["test"]
    assert media.probe(got / "video.mp4").video.n_frames == t1 - t0
    differ = [f for f in EXACT if not _equal(got / f, ref / f, rtol=0)]
    assert not differ, f"preprocessing differs between the SLURM and the local run: {differ}"
    differ = [f for f in STAGE2 if not _equal(got / f, ref / f, rtol=STAGE2_RTOL)]
    assert not differ, f"stage 2 differs beyond {STAGE2_RTOL} between the SLURM and the local run: {differ}"
    differ = [f for f in EVAL if not _equal(got / f, ref / f, rtol=EVAL_RTOL, drop=FRAME_DETECTOR_COLUMNS)]
    assert not differ, f"the evaluation differs beyond {EVAL_RTOL} between the SLURM and the local run: {differ}"
    # results/benchmark.md: the subject's row equals the local one but for the timings (numbers within EVAL_RTOL,
    # relative or absolute as _equal's JSON comparison: the dlib mouth distance is ~0.9 px)
    got_row, ref_row = _table_row(cluster["work"] / "results/benchmark.md", subject), _table_row(
        cluster["local"] / "results/benchmark.md", "demo")
    for col in ("FPS ↑", "Train time", "Subject"):
        got_row.pop(col), ref_row.pop(col)
    assert got_row.keys() == ref_row.keys() and "PSNR ↑" in got_row
    for col, ref_cell in ref_row.items():
        try:
            assert float(got_row[col]) == pytest.approx(float(ref_cell), rel=EVAL_RTOL, abs=EVAL_RTOL), col
        except ValueError:
            assert got_row[col] == ref_cell, col


def _table_row(md: Path, subject: str) -> dict[str, str]:
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines if line.startswith(f"| {subject} |"))
    return dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))
