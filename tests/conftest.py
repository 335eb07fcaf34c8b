"""Shared fixtures: the real media of ../shared/data, and a per-session cache of processed clips.

Tests that need the real clips use ``shared_data`` (or ``clip`` / ``processed``). When the folder is
absent they skip with a message, unless REQUIRE_SHARED_DATA=1 (set by .ci/run), where they fail.
Stages are run once per clip per session through their modules' ``run()`` functions and cached in
``processed`` so later stages' tests reuse earlier artifacts instead of recomputing them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))

CLIPS = [
    "talk_dfrf_cnn_en",            # 71 s, 25 fps, 512², mp3 audio
    "talk_dfrf_macron_fr",         # 50 s, 30 fps, video starts 80 ms after audio
    "talk_mimictalk_german_de",    # 20 s
    "talk_mimictalk_trump_en",     # 10 s
    "talk_sadtalker_katiehill_en", # 8 s, mpeg4 part 2, tight crop
    "talk_videoretalking_4_en",    # 6.6 s, 30 fps, 700², upper body
]
SPEECH = [
    "speech_dreamtalk_german1_de",
    "speech_genefacepp_macron_fr",
    "speech_musetalk_eng_en",
    "speech_sadtalker_chinese_news_zh",
    "speech_sadtalker_hdtf_radio31_en",
]


def _need_shared() -> Path:
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    msg = f"real test media not found at {SHARED_DATA} (set SHARED_DATA=...)"
    if os.environ.get("REQUIRE_SHARED_DATA") == "1":
        pytest.fail(msg + " and REQUIRE_SHARED_DATA=1")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need_shared()


def run_in_triton_interpreter(script: str) -> None:
    """Run ``script`` (Python that prints "interpreter parity ok") with ``TRITON_INTERPRET=1``: Triton kernels on
    CPU tensors, a developer check of their arithmetic where ``triton`` is installed but there is no GPU.
    Skips where CUDA is present (the compiled kernels are tested there) or ``triton`` is not installed (it
    is no CI dependency)."""
    import importlib.util
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the compiled kernels are tested instead")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (pip install triton for this check)")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "interpreter parity ok" in res.stdout


def clip_path(name: str) -> Path:
    return _need_shared() / f"{name}.mp4"


def speech_path(name: str) -> Path:
    return _need_shared() / f"{name}.wav"


class Processed:
    """Lazily runs stages on real clips into one session folder; each (stage, clip) runs once."""

    def __init__(self, root: Path):
        self.root = root
        self._done: dict[tuple[str, str], object] = {}

    def _once(self, stage: str, clip: str, fn):
        key = (stage, clip)
        if key not in self._done:
            self._done[key] = fn()
        return self._done[key]

    def dir(self, clip: str) -> Path:
        return self.root / clip

    def ingest(self, clip: str) -> dict:
        from pipeline.preprocess import ingest

        return self._once("ingest", clip, lambda: ingest.run(clip_path(clip), self.dir(clip) / "ingest"))

    CROP_SIZE = 256  # tests crop at 256 px (512 in production) to stay within the CI time budget

    def crop(self, clip: str) -> dict:
        """crop_faces on the ingested clip -> <dir>/crop/; returns the crop.json dict."""
        from pipeline.preprocess import crop
        from pipeline.core.config import CropConfig

        def build():
            self.ingest(clip)
            d = self.dir(clip)
            return crop.run(d / "ingest" / "video.mp4", d / "ingest" / "meta.json", d / "crop",
                            CropConfig(size=self.CROP_SIZE))

        return self._once("crop", clip, build)

    def landmarks(self, clip: str) -> dict:
        """detect_landmarks on the clip's crop -> <dir>/landmarks/; returns the run summary."""
        from pipeline.preprocess import landmarks

        def build():
            self.crop(clip)
            d = self.dir(clip)
            return landmarks.run(d / "crop" / "video.mp4", d / "crop" / "crop.json", d / "ingest" / "meta.json",
                                 d / "landmarks")

        return self._once("landmarks", clip, build)

    def parsing(self, clip: str) -> dict:
        """parse_faces on the clip's crop + landmarks -> <dir>/parsing/; returns the stats.json dict."""
        from pipeline.preprocess.parsing import parse as parsing

        def build():
            self.landmarks(clip)  # also runs crop
            d = self.dir(clip)
            return parsing.run(d / "crop" / "video.mp4", d / "landmarks" / "landmarks.parquet", d / "parsing")

        return self._once("parsing", clip, build)

    def tracking(self, clip: str) -> dict:
        """track_face on the clip's landmarks -> <dir>/tracking/; returns the metrics.json dict."""
        from pipeline.preprocess.tracking import track as tracking
        from pipeline.core.config import TrackingConfig

        def build():
            self.landmarks(clip)  # also runs ingest and crop
            d = self.dir(clip)
            return tracking.run(d / "landmarks" / "landmarks.parquet", d / "tracking", TrackingConfig(),
                                crop_meta=d / "crop" / "crop.json", meta=d / "ingest" / "meta.json",
                                video=d / "crop" / "video.mp4")

        return self._once("tracking", clip, build)

    def sync(self, clip: str) -> dict:
        """measure_av_sync on the clip's audio, crop and landmarks -> <dir>/sync/; returns sync.json."""
        from pipeline.audio import sync

        def build():
            self.landmarks(clip)  # also runs ingest and crop
            d = self.dir(clip)
            return sync.run(d / "ingest" / "audio.wav", d / "ingest" / "meta.json", d / "crop" / "video.mp4",
                            d / "crop" / "crop.json", d / "landmarks" / "landmarks.parquet", d / "sync")

        return self._once("sync", clip, build)

    def audio(self, clip: str) -> dict:
        """extract_audio_features on the clip's own audio as the workflow feeds it (sync/audio.wav, aligned to the
        video) -> <dir>/audio/self.{npz,parquet}."""
        from pipeline.audio import features as audio_features

        def build():
            self.sync(clip)
            d = self.dir(clip)
            return audio_features.run(d / "sync" / "audio.wav", d / "audio" / "self.npz", d / "audio" / "self.parquet")

        return self._once("audio", clip, build)

    def stage1(self, clip: str) -> dict:
        """train_audio2lmk (tests' size) -> <dir>/stage1/; returns metrics.json."""
        from pipeline.core.config import Stage1Config
        from pipeline.stage1 import train

        def build():
            self.tracking(clip)
            self.audio(clip)
            d = self.dir(clip)
            return train.run(d / "audio" / "self.npz", d / "tracking" / "canonical.npz",
                             d / "tracking" / "transforms.json", d / "stage1",
                             Stage1Config(steps=300))

        return self._once("stage1", clip, build)

    def aus(self, clip: str) -> dict:
        """extract_aus on the clip's landmarks + canonical track -> <dir>/aus/; returns the aus.json dict."""
        from pipeline.preprocess import action_units

        def build():
            self.tracking(clip)  # also runs ingest, crop and landmarks
            d = self.dir(clip)
            return action_units.run(d / "landmarks" / "landmarks.parquet", d / "tracking" / "canonical.npz",
                                    d / "aus", meta=d / "ingest" / "meta.json")

        return self._once("aus", clip, build)

    def stage2(self, clip: str) -> dict:
        """cache_frames + train_head with the tiny profile (config.yaml + configs/tiny.yaml) -> <dir>/stage2/;
        returns metrics.json."""
        from pipeline.core.config import stage2_configs
        from pipeline.stage2 import cache, train

        def build():
            for stage in (self.parsing, self.tracking, self.audio, self.aus):
                stage(clip)
            d = self.dir(clip)
            mcfg, tcfg = stage2_configs(profile_section("stage2"))
            cache.run(d / "crop" / "video.mp4", d / "parsing" / "labels.npz", d / "stage2", tcfg)
            return train.run(d, d / "stage2", mcfg, tcfg)

        return self._once("stage2", clip, build)


def profile_section(section: str, profile: str | None = "tiny") -> dict:
    """One section of config.yaml with configs/<profile>.yaml overlaid (keys replaced one by one)."""
    import yaml

    cfg = dict(yaml.safe_load((REPO / "config.yaml").read_text())[section])
    if profile:
        cfg.update(yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text()).get(section) or {})
    return cfg


@pytest.fixture(scope="session")
def processed(tmp_path_factory) -> Processed:
    _need_shared()
    return Processed(tmp_path_factory.mktemp("processed"))
