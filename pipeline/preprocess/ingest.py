"""Rule ``ingest_video``: any talking clip -> 25 fps constant-rate video, 16 kHz mono audio, meta.json.

What it guarantees downstream:

* ``video.mp4``: H.264 8-bit 4:2:0, constant 25 fps, timestamps honoured (frames are resampled by
  presentation time, so a 30 fps or variable-rate source keeps its timing); upright (a phone video's
  display rotation is applied); the source resolution rounded to even, scaled down to ``max_side`` on the
  long side (4K -> 1920); 10-bit sources dithered to 8 bits, HDR (PQ/HLG) tone-mapped to BT.709;
* ``audio.wav``: 16 kHz mono PCM s16, sample 0 at the presentation time of video frame 0, exactly
  ``n_frames / 25`` seconds long. Container start-time offsets between audio and video streams
  (e.g. the Macron clip's video starts 80 ms after its audio) are corrected by dropping leading
  audio or prepending silence; the amount is recorded in ``meta.json``. With several audio streams the
  speech is the loudest in 300-3400 Hz (a silent commentary track loses), or ``audio_stream``; the levels
  and the choice are logged and recorded;
* ``meta.json``: :data:`pipeline.core.artifacts.INGEST_META`, including the train/test split (last 1/11).

Frames and audio never pass through Python whole: ffmpeg transcodes file to file (the video) and the
audio, 2 bytes a sample at 16 kHz, is the only thing read into memory.

Refused, with one line naming the file and nothing written: missing or unreadable file, no video
stream, no audio stream, shorter than ``min_duration_sec``, a decode that yields far fewer frames
than the header promises (truncated file), a display rotation that is not a multiple of 90 degrees,
an ``audio_stream`` the file does not have, speech audio that is digital silence.
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


SPEECH_BAND_HZ = (300.0, 3400.0)
SILENCE_PEAK = 1e-4           # peak amplitude below this (-80 dBFS) is digital silence, not speech
HDR_TO_SDR = ("zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=mobius:desat=0,"
              "zscale=t=bt709:m=bt709:r=tv")  # HLG made from SDR footage comes back within ~3.5/255 a channel


def speech_level_db(samples: np.ndarray, sample_rate: int, segment: int = 16384, batch: int = 16) -> float:
    """Mean power of ``samples`` in the speech band (``SPEECH_BAND_HZ``), dBFS, floored at -150 (silence).

    Averaged over ``segment``-sample pieces, ``batch`` at a time: memory stays a few MB whatever the length
    (one FFT of a whole 10-minute track took the ingest process to 1.6 GB)."""
    x = np.asarray(samples, np.float32)
    if len(x) < segment:
        x = np.concatenate([x, np.zeros(segment - len(x), np.float32)])
    n = len(x) // segment
    band = np.fft.rfftfreq(segment, 1.0 / sample_rate)
    band = (band >= SPEECH_BAND_HZ[0]) & (band <= SPEECH_BAND_HZ[1])
    window = np.hanning(segment).astype(np.float32)  # keeps hum below the band out of it
    total = 0.0
    for i in range(0, n, batch):
        spec = np.fft.rfft(x[i * segment:min(n, i + batch) * segment].reshape(-1, segment) * window, axis=1)[:, band]
        total += float((spec.real ** 2 + spec.imag ** 2).sum())
    power = 2.0 * total / (n * segment * float((window ** 2).sum()))
    return max(-150.0, float(10 * np.log10(power))) if power > 0 else -150.0


def speech_audio(src: Path, info: media.MediaInfo, cfg: IngestConfig) -> tuple[int, np.ndarray, list[float]]:
    """The speech stream: ``cfg.audio_stream``, else the loudest in the speech band. Returns its index, its samples
    (mono, ``cfg.sample_rate``) and every stream's level (dBFS, those decoded)."""
    streams = info.audio_streams
    if cfg.audio_stream >= len(streams):
        raise IngestError(src, f"audio_stream {cfg.audio_stream} requested, the file has {len(streams)} audio stream(s)")
    candidates = [cfg.audio_stream] if cfg.audio_stream >= 0 else range(len(streams))
    best, best_samples, levels = -1, np.zeros(0, np.float32), []
    for i in candidates:
        samples = media.read_audio(src, cfg.sample_rate, stream=i)
        levels.append(round(speech_level_db(samples, cfg.sample_rate), 2))
        if best < 0 or levels[-1] > max(levels[:-1]):
            best, best_samples = i, samples
    if len(candidates) > 1:
        log.info("%s: %d audio streams, speech-band levels %s dBFS: using stream %d (ingest.audio_stream picks another)",
                 src, len(streams), levels, best)
    else:
        log.info("%s: using audio stream %d of %d", src, best, len(streams))
    if not len(best_samples) or np.abs(best_samples).max() < SILENCE_PEAK:
        raise IngestError(src, f"audio stream {best} is silent (peak below {20 * np.log10(SILENCE_PEAK):.0f} dBFS)")
    return best, best_samples, levels


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Frame size of ingest/video.mp4: ``width`` x ``height`` scaled to fit ``max_side`` (0 = no cap), even."""
    f = min(1.0, max_side / max(width, height)) if max_side else 1.0
    return max(2, int(width * f) // 2 * 2), max(2, int(height * f) // 2 * 2)


def video_filter(v: media.VideoStream, cfg: IngestConfig) -> tuple[str, tuple[int, int], str]:
    """ffmpeg -vf of the transcode (ffmpeg has already applied the rotation), the output size, the HDR transfer."""
    hdr = media.HDR_TRANSFERS.get(v.color_trc, "")
    w, h = output_size(*v.display_size, cfg.max_side)
    parts = ["setpts=PTS-STARTPTS", f"fps={cfg.fps}"] + ([HDR_TO_SDR] if hdr else [])
    parts += [f"scale={w}:{h}:flags=area" if (w, h) != tuple(v.display_size) else "scale=trunc(iw/2)*2:trunc(ih/2)*2",
              "setsar=1"]
    return ",".join(parts), (w, h), hdr


def run(video: Path | str, outdir: Path | str, cfg: IngestConfig = IngestConfig()) -> dict:
    """Ingest ``video`` into ``outdir`` (video.mp4, audio.wav, meta.json); return the meta dict."""
    src, outdir = Path(video), Path(outdir)
    info = media.probe(src)
    if info.video is None:
        raise IngestError(src, "no video stream")
    if info.audio is None:
        raise IngestError(src, "no audio stream (a talking-head clip needs its speech)")
    v = info.video
    if v.rotation % 90:
        raise IngestError(src, f"display rotation {v.rotation} degrees is not a multiple of 90")
    duration = v.duration_sec or v.n_frames / max(v.fps, 1e-6)
    if duration < cfg.min_duration_sec:
        raise IngestError(src, f"too short: {duration:.2f} s < {cfg.min_duration_sec} s")
    if duration < cfg.warn_duration_sec:
        log.warning("%s: only %.1f s of video; NeRF quality improves with 1-5 minutes", src, duration)

    expected = int(round(duration * cfg.fps))
    vf, size, hdr = video_filter(v, cfg)
    log.info("%s: %dx%d (rotation %d) %.3f fps %s %s%s, %.2f s -> %dx%d at %d fps", src, v.width, v.height,
             v.rotation, v.fps, v.codec, v.pix_fmt, f" HDR {hdr}, tone-mapped" if hdr else "", duration, *size, cfg.fps)
    stream, samples, levels = speech_audio(src, info, cfg)
    audio = info.audio_streams[stream]
    offset = v.start_sec - audio.start_sec
    log.info("%s: audio stream %d: %s %d Hz, start offset %.3f s", src, stream, audio.codec, audio.sample_rate, offset)

    with ExitStack() as stack:  # all three files appear together or not at all
        files = IngestFiles(outdir)
        tmp_video = stack.enter_context(atomic_output(files.video))
        tmp_audio = stack.enter_context(atomic_output(files.audio))
        tmp_meta = stack.enter_context(atomic_output(files.meta))

        media.run_ffmpeg(["-i", str(src), "-map", "0:V:0", "-an", "-sn", "-dn", "-vf", vf,
                          "-c:v", "libx264", "-preset", "fast", "-crf", str(cfg.crf), "-pix_fmt", "yuv420p",
                          "-movflags", "+faststart", str(tmp_video)], src)
        out = media.probe(tmp_video).video
        n_frames = out.n_frames if out else 0
        if n_frames < cfg.min_decoded_fraction * expected:
            raise IngestError(src, f"undecodable or truncated: decoded {n_frames} of {expected} expected frames")
        if n_frames / cfg.fps < cfg.min_duration_sec:
            raise IngestError(src, f"too short after decoding: {n_frames} frames")

        n_samples = int(round(n_frames / cfg.fps * cfg.sample_rate))
        samples, padded = align_audio(samples, offset, n_samples, cfg.sample_rate)
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
            "audio_start_sec": float(audio.start_sec),
            "audio_offset_applied_sec": round(offset, 6),
            "audio_padded_end_sec": round(padded, 6),
            "split": split_ranges(n_frames, cfg.test_fraction),
            "source_rotation": int(v.rotation),
            "source_pix_fmt": v.pix_fmt,
            "source_hdr": hdr,
            "size": [int(out.width), int(out.height)] if out else list(size),
            "audio_stream": int(stream),
            "audio_stream_levels_db": levels,
        }
        INGEST_META.write(tmp_meta, meta, Provenance(meta["source_sha256"], config_hash(cfg)))
    log.info("%s: %d frames at %d fps -> %s", src, n_frames, cfg.fps, outdir)
    return meta


def main(argv: list[str] | None = None) -> None:
    args = parser("Ingest a talking clip: 25 fps video, 16 kHz mono audio, meta.json.", ["video", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.video, args.outdir, from_mapping(IngestConfig, args.config, "ingest")))


if __name__ == "__main__":
    main()
