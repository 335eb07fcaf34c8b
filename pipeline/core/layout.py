"""Where a subject's files lie: the one definition of every path under ``results/<s>/``.

:class:`SubjectLayout` names each file of one subject, grouped by the stage folder that writes it::

    s = SubjectLayout("results/alice")
    s.crop.video              # results/alice/crop/video.mp4
    s.audio.features("self")  # results/alice/audio/self.npz
    s.stage2.head             # results/alice/stage2/head.pt

Who takes their paths from here:

* the rules: workflow/rules/common.smk defines ``S = ResultsLayout("results").subject("{subject}")`` and every
  input and output pattern is an attribute of it (``S.crop.video``: the ``{subject}`` wildcard stays in the path);
* a stage module writes into the folder its rule passes as ``--outdir`` through that folder's class
  (``CropFiles(outdir).boxes``), so the module and the rule name the same files; modules given explicit
  input paths by their rule (crop, landmarks, tracking, parsing, AUs, audio, stage 1, the torso) read those;
* modules that read a whole subject folder (stage-2 training and its data, render, evaluate, export) take
  ``SubjectLayout(subject_dir)``;
* :data:`RELATIVE` = ``SubjectLayout(".")`` gives the paths inside a subject folder (``stage2/head.pt``):
  the names of the artifact contracts (:mod:`pipeline.core.artifacts`), the files a GPU machine needs
  (``pipeline.stage2.data.REQUIRED_FILES``), the head a render used (``video.json``).

:class:`ResultsLayout` adds what spans subjects: the shared stage-1 pre-training and the benchmark table.
Nothing here touches the disk; the contracts of the files (schemas, keys, fields) are in
:mod:`pipeline.core.artifacts`.
"""

from __future__ import annotations

from pathlib import Path

SELF_AUDIO = "self"  # the subject's own audio among audio/<clip>.*: a driving wav cannot take this name


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"``{name}`` in this folder")


class Folder:
    """One stage folder of a subject, called ``NAME``; its files are properties (paths under :attr:`path`)."""

    NAME = ""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class IngestFiles(Folder):
    """``ingest/`` (rule ingest_video)."""

    NAME = "ingest"
    video = _file("video.mp4")           # 25 fps constant-rate H.264
    audio = _file("audio.wav")           # 16 kHz mono, sample 0 = video frame 0
    meta = _file("meta.json")            # INGEST_META: split, offsets, source sha256


class CropFiles(Folder):
    """``crop/`` (rule crop_faces)."""

    NAME = "crop"
    video = _file("video.mp4")           # the fixed square face crop
    boxes = _file("boxes.parquet")       # CROP_BOXES
    meta = _file("crop.json")            # CROP_META


class LandmarksFiles(Folder):
    """``landmarks/`` (rule detect_landmarks)."""

    NAME = "landmarks"
    table = _file("landmarks.parquet")   # LANDMARKS
    sheet = _file("contact_sheet.png")


class TrackingFiles(Folder):
    """``tracking/`` (rule track_face)."""

    NAME = "tracking"
    tracks = _file("tracks.parquet")     # TRACKS
    face_model = _file("face_model.npz") # FACE_MODEL
    canonical = _file("canonical.npz")   # CANONICAL_LANDMARKS
    transforms = _file("transforms.json")  # TRANSFORMS
    metrics = _file("metrics.json")      # TRACKING_METRICS
    overlay = _file("overlay.png")
    pose = _file("pose.png")


class ParsingFiles(Folder):
    """``parsing/`` (rule parse_faces)."""

    NAME = "parsing"
    labels = _file("labels.npz")         # PARSING_LABELS
    torso = _file("torso.npz")           # PARSING_TORSO
    background = _file("background.png") # the background plate
    sheet = _file("contact_sheet.png")
    stats = _file("stats.json")          # PARSING_STATS


class AusFiles(Folder):
    """``aus/`` (rule extract_aus)."""

    NAME = "aus"
    table = _file("aus.parquet")         # AUS
    stats = _file("aus.json")            # AUS_STATS


class AudioFiles(Folder):
    """``audio/`` (rule extract_audio_features): one pair per clip, ``self`` = the subject's own audio."""

    NAME = "audio"
    def features(self, clip: str = SELF_AUDIO) -> Path:
        return self.path / f"{clip}.npz"       # AUDIO_FEATURES

    def frames(self, clip: str = SELF_AUDIO) -> Path:
        return self.path / f"{clip}.parquet"   # AUDIO_FRAMES


class SyncFiles(Folder):
    """``sync/`` (rule measure_av_sync): the lip-audio offset and the subject's audio aligned to the video."""

    NAME = "sync"
    offset = _file("sync.json")          # SYNC_OFFSET: measured offset, reliability, applied correction
    audio = _file("audio.wav")           # ingest/audio.wav shifted by the applied correction (same length): the
                                         # audio every later stage reads (features, render's mux, export)


class Stage1Files(Folder):
    """``stage1/`` (rules train_audio2lmk, predict_landmarks, oof_audio2lmk; also the shared pre-trained model's
    folder)."""

    NAME = "stage1"
    model = _file("model.pt")            # Audio2Landmarks state dict
    basis = _file("basis.npz")           # STAGE1_BASIS
    meta = _file("model.json")           # STAGE1_MODEL
    metrics = _file("metrics.json")      # STAGE1_METRICS
    mouth_plot = _file("mouth_test.png")
    oof = _file("oof.parquet")           # STAGE1_PRED: each frame predicted by a model that did not train on it

    def pred(self, clip: str = SELF_AUDIO) -> Path:
        return self.path / "pred" / f"{clip}.parquet"  # STAGE1_PRED


class Stage2Files(Folder):
    """``stage2/`` (rules cache_frames, train_head)."""

    NAME = "stage2"
    frames = _file("frames.npy")         # STAGE2_FRAMES
    labels = _file("labels.npy")         # STAGE2_LABELS
    cache = _file("cache.json")          # STAGE2_CACHE
    head = _file("head.pt")              # the head field's state dict
    head_meta = _file("head.json")       # STAGE2_HEAD
    occupancy = _file("occupancy.npz")   # STAGE2_OCCUPANCY
    metrics = _file("metrics.json")      # STAGE2_METRICS
    strip = _file("test_strip.png")
    checkpoint = _file("checkpoint.pt")  # resumable training state


class TorsoFiles(Folder):
    """``torso/`` (rule train_torso)."""

    NAME = "torso"
    model = _file("torso.pt")            # TorsoNet state dict
    meta = _file("torso.json")           # TORSO_MODEL
    metrics = _file("metrics.json")      # TORSO_METRICS


class EvalFiles(Folder):
    """``eval/`` (rule evaluate)."""

    NAME = "eval"
    PLOTS = ("psnr", "mouth", "pose", "strip")
    metrics = _file("metrics.json")      # EVAL_METRICS
    frames = _file("frames.parquet")     # EVAL_FRAMES

    def plot(self, name: str) -> Path:
        return self.path / "plots" / f"{name}.png"


class ExportFiles(Folder):
    """``export/`` (rule export_ernerf)."""

    NAME = "export"
    ernerf = _file("ernerf")             # the ER-NeRF / TalkingGaussian dataset folder
    ernerf_stats = _file("ernerf.json")  # EXPORT_ERNERF_STATS (beside the folder: ER-NeRF globs *.json in it)


def render_stats(video: Path | str) -> Path:
    """The RENDER_STATS document of a rendered video: beside it, ``.json`` for its suffix."""
    return Path(video).with_suffix(".json")


STAGE_FOLDERS = (IngestFiles, CropFiles, LandmarksFiles, TrackingFiles, ParsingFiles, AusFiles, SyncFiles, AudioFiles,
                 Stage1Files, Stage2Files, TorsoFiles, EvalFiles, ExportFiles)


class SubjectLayout:
    """Every path under one subject's folder ``root`` (``results/<s>``): one attribute per stage folder of
    :data:`STAGE_FOLDERS`, named like it (``s.crop`` is ``CropFiles(root / "crop")``), and the rendered videos at the
    top (:attr:`video`, :meth:`drive`)."""

    ingest: IngestFiles
    crop: CropFiles
    landmarks: LandmarksFiles
    tracking: TrackingFiles
    parsing: ParsingFiles
    aus: AusFiles
    sync: SyncFiles
    audio: AudioFiles
    stage1: Stage1Files
    stage2: Stage2Files
    torso: TorsoFiles
    eval: EvalFiles
    export: ExportFiles

    def __init__(self, root: Path | str):
        self.root = Path(root)
        for folder in STAGE_FOLDERS:
            setattr(self, folder.NAME, folder(self.root / folder.NAME))

    def __repr__(self) -> str:
        return f"SubjectLayout({str(self.root)!r})"

    @property
    def video(self) -> Path:
        """The test split re-synthesised from its own audio (rule render_video)."""
        return self.root / "video.mp4"

    @property
    def video_stats(self) -> Path:
        return render_stats(self.video)

    def drive(self, clip: str) -> Path:
        """The head driven by ``data/audio/<clip>.wav`` (rule drive_video)."""
        return self.root / "drive" / f"{clip}.mp4"

    def drive_stats(self, clip: str) -> Path:
        return render_stats(self.drive(clip))


assert [f.NAME for f in STAGE_FOLDERS] == list(SubjectLayout.__annotations__), "one attribute per stage folder"

RELATIVE = SubjectLayout(".")  # paths inside a subject folder, e.g. RELATIVE.stage2.head == Path("stage2/head.pt")


class ResultsLayout:
    """``results/``: one :class:`SubjectLayout` per subject, plus what spans subjects."""

    def __init__(self, root: Path | str = "results"):
        self.root = Path(root)

    def subject(self, name: str) -> SubjectLayout:
        return SubjectLayout(self.root / name)

    @property
    def pretrain(self) -> Stage1Files:
        """The cross-subject stage-1 model (rule pretrain_audio2lmk, config stage1.pretrain)."""
        return Stage1Files(self.root / "_shared" / "stage1_pretrain")

    @property
    def benchmark_md(self) -> Path:
        return self.root / "benchmark.md"

    @property
    def benchmark_csv(self) -> Path:
        return self.root / "benchmark.csv"
