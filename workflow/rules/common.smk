# Shared helpers: subjects, where their files lie, per-stage config params, code-change triggers, the python to call.
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(workflow.basedir)  # the checkout; results/, logs/ go to the working directory
# Jobs call `python -m pipeline.<group>.<module>`: make that the interpreter running Snakemake (the
# project's .venv), also on cluster nodes, where each job re-reads this file.
envvars:
    "PATH",


os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

# Every path under results/ comes from pipeline/core/layout.py, the one place that names a subject's files:
# S.<stage>.<file> is a pattern with the {subject} wildcard (e.g. S.crop.video = results/{subject}/crop/video.mp4).
from pipeline.core.layout import SELF_AUDIO, ResultsLayout
from pipeline.core.samples import SUBJECT_PATTERN, read_sample_sheet

RESULTS = ResultsLayout("results")
S = RESULTS.subject("{subject}")


def _sheet_subjects():
    """Rows of the optional sample sheet (pipeline/core/samples.py): {subject: video path}."""
    sheet = config.get("subjects_tsv") or ""
    return read_sample_sheet(sheet) if sheet else {}


def _folder_subjects():
    """Every data/<s>/<s>.mp4 whose name is a valid subject."""
    root = Path(config["data_dir"])
    found = {}
    for p in sorted(root.glob("*/*.mp4")):
        if p.stem == p.parent.name and re.fullmatch(SUBJECT_PATTERN, p.stem):
            found[p.stem] = str(p)
    return found


SUBJECT_VIDEOS = {**_folder_subjects(), **_sheet_subjects()}
SUBJECTS = sorted(SUBJECT_VIDEOS)


VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


def _warn_unused_videos():
    """A video under data/<folder>/ that is no subject's (e.g. data/alice/talk.mp4): say so, or the run plans
    nothing for it without a word."""
    used = {Path(v).resolve() for v in SUBJECT_VIDEOS.values()}
    for p in sorted(Path(config["data_dir"]).glob("*/*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.resolve() not in used:
            print(f"warning: {p} is ignored: a subject's video is {config['data_dir']}/<s>/<s>.mp4 (<s> matching "
                  f"{SUBJECT_PATTERN}); rename it, or list it in a sample sheet (subjects_tsv)", file=sys.stderr)


_warn_unused_videos()


def source_video(wildcards):
    """The input video of a subject: the sample sheet's path, else data/<s>/<s>.mp4."""
    return SUBJECT_VIDEOS.get(wildcards.subject, f"{config['data_dir']}/{wildcards.subject}/{wildcards.subject}.mp4")


# "{name}" in a string param is a wildcard to Snakemake (JSON's own braces never look like one)
_WILDCARD_LIKE = re.compile(r"\{\s*[.\w]+\s*[,}]")


def stage_config(section, drop=()):
    """One config section as compact JSON, given to the rules as a param, evaluated once when they are read
    (``cfg=stage_config("crop")``); changing it re-runs the jobs using it. Keys in ``drop`` are left out (settings
    the job does not use, e.g. the other head's). A value that looks like a wildcard (``{name}``, e.g. in a path)
    is handed over through a function, which Snakemake passes on verbatim."""
    data = {k: v for k, v in config.get(section, {}).items() if k not in drop}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return text if not _WILDCARD_LIKE.search(text) else (lambda wildcards: text)


def subject_dir(wildcards):
    """Param: the subject's folder results/<s>, the --subject-dir of modules that read a whole subject."""
    return str(RESULTS.subject(wildcards.subject).root)


def stage_dir(stage):
    """Param: one stage folder of the subject, the module's --outdir (``stage_dir("crop")``: results/<s>/crop)."""
    return lambda wildcards: str(getattr(RESULTS.subject(wildcards.subject), stage).path)


def gpus(section):
    """GPUs a job asks for (SLURM --gpus), from a config section: none when its device is cpu."""
    return 0 if config[section]["device"] == "cpu" else 1


# The `gpu` resource is capped at one unless the command line gives `--resources gpu=N`: a local run on a
# one-GPU workstation runs one GPU job at a time (Workflow.register_resource, the call Snakemake makes for its own
# mutex resources; not in its documentation). Its scope is "local" (Snakemake's documented resource_scopes): on a
# cluster executor the limit of a local resource applies to each submitted job, not to the jobs in flight, so SLURM
# gets every ready GPU job at once and places them (tests/test_cluster.py). There is no profiles/default: no
# profile is read beside profiles/slurm.
resource_scopes:
    gpu="local",


if "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", 1)


def code(*modules):
    """Source files of the pipeline modules behind a job; editing one re-runs its jobs (mtime trigger)."""
    return [str(REPO / "pipeline" / f"{m.replace('.', '/')}.py") for m in modules]


# --- audio features (workflow/rules/audio.smk): SELF_AUDIO ("self") is the subject's own audio, any other
# <clip> a driving wav data/audio/<clip>.wav (docs/artifacts.md, audio/).


def driving_clips():
    """Names of the driving wavs data/audio/<clip>.wav (valid names, 'self' excluded)."""
    root = Path(config["data_dir"]) / "audio"
    return sorted(p.stem for p in root.glob("*.wav") if re.fullmatch(SUBJECT_PATTERN, p.stem) and p.stem != SELF_AUDIO)


def audio_features_targets(subject):
    """Own-audio features plus those of every driving clip, for ``subject`` (stage 1, render)."""
    return expand(str(S.audio.features("{clip}")), subject=subject, clip=[SELF_AUDIO, *driving_clips()])


def audio_source(wildcards):
    """Input of extract_audio_features: sync/audio.wav (the subject's audio aligned to its video by
    measure_av_sync) for 'self', else data/audio/<clip>.wav."""
    if wildcards.clip == SELF_AUDIO:
        return str(RESULTS.subject(wildcards.subject).sync.audio)
    return f"{config['data_dir']}/audio/{wildcards.clip}.wav"


def final_targets(wildcards):
    """What `snakemake` builds by default: the test-split video of every subject (render.smk)."""
    return expand(str(S.video), subject=SUBJECTS)


def stage1_pretrained(wildcards):
    """The pre-trained model a subject fine-tunes from (none unless stage1.pretrain is on)."""
    return str(RESULTS.pretrain.meta) if config["stage1"]["pretrain"] else []


def stage1_oof(wildcards):
    """Stage 1's out-of-fold predictions, which train_head reads with stage2.train_mouth: stage1 (else none)."""
    return str(S.stage1.oof).format(subject=wildcards.subject) \
        if config.get("stage2", {}).get("train_mouth", "tracked") == "stage1" else []


def benchmark_metrics(wildcards):
    """eval/metrics.json of the subjects in results/benchmark.* (config benchmark_subjects; empty = all)."""
    chosen = config.get("benchmark_subjects") or SUBJECTS
    unknown = sorted(set(chosen) - set(SUBJECTS))
    if unknown:
        raise ValueError(f"benchmark_subjects: no data for {unknown} (subjects: {SUBJECTS})")
    return expand(str(S.eval.metrics), subject=chosen)
