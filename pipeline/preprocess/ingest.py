"""Rule ``ingest_video``: any talking clip -> 25 fps constant-rate video, 16 kHz mono audio, meta.json.

What it guarantees downstream:

* ``video.mp4``: H.264, constant 25 fps, source resolution (rounded to even), timestamps honoured
  (frames are resampled by presentation time, so a 30 fps source keeps its timing);
* ``audio.wav``: 16 kHz mono PCM s16, sample 0 at the presentation time of video frame 0, exactly
  ``n_frames / 25`` seconds long. Container start-time offsets between audio and video streams
  (e.g. the Macron clip's video starts 80 ms after its audio) are corrected by dropping leading
  audio or prepending silence; the amount is recorded in ``meta.json``;
* ``meta.json``: :data:`pipeline.core.artifacts.INGEST_META`, including the train/test split (last 1/11).

Refused, with one line naming the file and nothing written: missing or unreadable file, no video
stream, no audio stream, shorter than ``min_duration_sec``, a decode that yields far fewer frames
than the header promises (truncated file).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import INGEST_META, Provenance, atomic_output, config_hash, file_sha256
from pipeline.core.cli import guarded, parser
from pipeline.core.config import IngestConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.layout import IngestFiles

log = logging.getLogger("pipeline.preprocess.ingest")


class IngestError(PipelineError):
    pass


def split_ranges(n_frames: int, test_fraction: float) -> dict[str, list[int]]:
    """Train/test frame ranges [start, stop): the last ``test_fraction`` of frames is the test split."""
    test_start = int(n_frames * (1.0 - test_fraction))
    return {"train": [0, test_start], "test": [test_start, n_frames]}


def align_audio(samples: np.ndarray, offset_sec: float, n_samples: int, sample_rate: int) -> tuple[np.ndarray, float]:
    """Shift audio so that sample 0 is video frame 0, then pad/trim to ``n_samples``.

    ``offset_sec = video_start - audio_start``: positive drops leading audio, negative prepends
    silence. Returns the aligned samples and the seconds of silence appended at the end.
    """
    shift = int(round(offset_sec * sample_rate))
    if shift > 0:
        samples = samples[shift:]
    elif shift < 0:
        samples = np.concatenate([np.zeros(-shift, np.float32), samples])
    pad = max(0, n_samples - len(samples))
    if pad:
        samples = np.concatenate([samples, np.zeros(pad, np.float32)])
    return samples[:n_samples], pad / sample_rate


def run(video: Path | str, outdir: Path | str, cfg: IngestConfig = IngestConfig()) -> dict:
    """Ingest ``video`` into ``outdir`` (video.mp4, audio.wav, meta.json); return the meta dict."""
    src, outdir = Path(video), Path(outdir)
    info = media.probe(src)
    if info.video is None:
        raise IngestError(src, "no video stream")
    if info.audio is None:
        raise IngestError(src, "no audio stream (a talking-head clip needs its speech)")
    v = info.video
    duration = v.duration_sec or v.n_frames / max(v.fps, 1e-6)
    if duration < cfg.min_duration_sec:
        raise IngestError(src, f"too short: {duration:.2f} s < {cfg.min_duration_sec} s")
    if duration < cfg.warn_duration_sec:
        log.warning("%s: only %.1f s of video; NeRF quality improves with 1-5 minutes", src, duration)

    expected = int(round(duration * cfg.fps))
    offset = v.start_sec - info.audio.start_sec
    log.info("%s: %dx%d %.3f fps %s, %.2f s; audio %s %d Hz start offset %.3f s",
             src, v.width, v.height, v.fps, v.codec, duration, info.audio.codec, info.audio.sample_rate, offset)

    with ExitStack() as stack:  # all three files appear together or not at all
        files = IngestFiles(outdir)
        tmp_video = stack.enter_context(atomic_output(files.video))
        tmp_audio = stack.enter_context(atomic_output(files.audio))
        tmp_meta = stack.enter_context(atomic_output(files.meta))

        vf = f"setpts=PTS-STARTPTS,fps={cfg.fps},scale=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1"
        media.run_ffmpeg(["-i", str(src), "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", vf,
                          "-c:v", "libx264", "-preset", "fast", "-crf", str(cfg.crf), "-pix_fmt", "yuv420p",
                          "-movflags", "+faststart", str(tmp_video)], src)
        out = media.probe(tmp_video).video
        n_frames = out.n_frames if out else 0
        if n_frames < cfg.min_decoded_fraction * expected:
            raise IngestError(src, f"undecodable or truncated: decoded {n_frames} of {expected} expected frames")
        if n_frames / cfg.fps < cfg.min_duration_sec:
            raise IngestError(src, f"too short after decoding: {n_frames} frames")

        n_samples = int(round(n_frames / cfg.fps * cfg.sample_rate))
        samples, padded = align_audio(media.read_audio(src, cfg.sample_rate), offset, n_samples, cfg.sample_rate)
        if padded > 0.5:
            log.warning("%s: audio ends %.2f s before the video; padded with silence", src, padded)
        media.write_wav(tmp_audio, samples, cfg.sample_rate)
        # write_wav renamed its own temp into tmp_audio; the ExitStack renames tmp_audio at the end.

        meta = {
            "source": str(src),
            "source_sha256": file_sha256(src),
            "source_fps": float(v.fps),
            "source_frames": int(v.n_frames),
            "source_size": [int(v.width), int(v.height)],
            "fps": int(cfg.fps),
            "n_frames": int(n_frames),
            "duration_sec": n_frames / cfg.fps,
            "sample_rate": int(cfg.sample_rate),
            "video_start_sec": float(v.start_sec),
            "audio_start_sec": float(info.audio.start_sec),
            "audio_offset_applied_sec": round(offset, 6),
            "audio_padded_end_sec": round(padded, 6),
            "split": split_ranges(n_frames, cfg.test_fraction),
        }
        INGEST_META.write(tmp_meta, meta, Provenance(meta["source_sha256"], config_hash(cfg)))
    log.info("%s: %d frames at %d fps -> %s", src, n_frames, cfg.fps, outdir)
    return meta


def main(argv: list[str] | None = None) -> None:
    args = parser("Ingest a talking clip: 25 fps video, 16 kHz mono audio, meta.json.", ["video", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.video, args.outdir, from_mapping(IngestConfig, args.config, "ingest")))


if __name__ == "__main__":
    main()
