"""Video and audio I/O: ffmpeg (from the imageio-ffmpeg wheel) through argument lists, PyAV for probing.

No shell strings anywhere: every ffmpeg call is ``subprocess.run([...])`` with the exit code
checked. ffprobe is not shipped by imageio-ffmpeg, so stream metadata (start times, frame
counts, codecs) comes from PyAV, which bundles the same libav* libraries.

Frames are streamed through pipes (``iter_frames`` / ``VideoWriter``), never held all in RAM.
``read_frames_cv2`` decodes with OpenCV's own decoder instead, for the GPU machines that have no ffmpeg.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.core.artifacts import atomic_output
from pipeline.core.errors import PipelineError


class MediaError(PipelineError):
    """A media file cannot be used; the message names the file."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], path_for_errors: Path | str, *, stdin: bytes | None = None) -> bytes:
    """Run ffmpeg with ``args``; return stdout; raise MediaError with ffmpeg's last words on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    if stdin is not None:
        cmd.remove("-nostdin")
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise MediaError(path_for_errors, "ffmpeg failed: " + (" | ".join(tail) or f"exit {proc.returncode}"))
    return proc.stdout


# ----------------------------------------------------------------------------- probing

HDR_TRANSFERS = {16: "PQ (SMPTE ST 2084)", 18: "HLG (ARIB STD-B67)"}  # AVColorTransferCharacteristic values


@dataclass(frozen=True)
class VideoStream:
    codec: str
    width: int             # as stored (before the display rotation)
    height: int
    fps: float
    n_frames: int          # counted from the stream header or estimated from duration × fps
    start_sec: float
    duration_sec: float
    rotation: int = 0      # display rotation, degrees counter-clockwise, 0/90/180/270 (phone videos: 90 or 270)
    pix_fmt: str = ""      # decoded pixel format, e.g. yuv420p, yuv420p10le
    color_trc: int = 0     # transfer characteristic (AVColorTransferCharacteristic; 16 PQ, 18 HLG)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, i.e. after the rotation ffmpeg applies when decoding."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


@dataclass(frozen=True)
class AudioStream:
    codec: str
    sample_rate: int
    channels: int
    start_sec: float
    duration_sec: float
    index: int = 0         # among the file's audio streams (ffmpeg's ``0:a:<index>``)


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    video: VideoStream | None
    audio: AudioStream | None   # the first audio stream
    duration_sec: float
    audio_streams: tuple[AudioStream, ...] = ()


def _seconds(value, time_base) -> float:
    if value is None or time_base is None:
        return 0.0
    return float(value * Fraction(time_base))


def _first_frame(container, stream):
    """The first decodable frame of ``stream`` (rotation and colour tags live there), or None."""
    import av

    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError:  # a damaged file: ingest's decode check names it
        return None
    return None


def probe(path: Path | str) -> MediaInfo:
    """Describe the first video stream and every audio stream of ``path``; MediaError if it cannot be opened.

    Decodes the first video frame for what only frames carry in PyAV: the display rotation (the
    display-matrix tag of phone videos) and the colour transfer (HDR)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            video = None
            container_dur = (container.duration or 0) / 1_000_000
            videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            if videos:
                s = videos[0]
                rate = s.average_rate or s.guessed_rate or s.base_rate
                fps = float(rate) if rate else 0.0
                dur = _seconds(s.duration, s.time_base) or container_dur
                frames = int(s.frames) if s.frames else int(round(dur * fps))
                first = _first_frame(container, s)
                rotation = int(round(first.rotation)) % 360 if first is not None else 0
                video = VideoStream(
                    codec=s.codec_context.name, width=s.codec_context.width, height=s.codec_context.height,
                    fps=fps, n_frames=frames, start_sec=_seconds(s.start_time, s.time_base), duration_sec=dur,
                    rotation=rotation, pix_fmt=first.format.name if first is not None else "",
                    color_trc=int(first.color_trc or 0) if first is not None else 0,
                )
            audios = tuple(AudioStream(
                codec=s.codec_context.name, sample_rate=int(s.codec_context.sample_rate or 0),
                channels=int(s.codec_context.channels or 0), start_sec=_seconds(s.start_time, s.time_base),
                duration_sec=_seconds(s.duration, s.time_base) or container_dur, index=i,
            ) for i, s in enumerate(container.streams.audio))
    except av.FFmpegError as exc:  # InvalidDataError, etc.
        raise MediaError(path, f"not a readable media file ({exc.strerror or exc})") from exc
    return MediaInfo(path=path, video=video, audio=audios[0] if audios else None, duration_sec=container_dur,
                     audio_streams=audios)


# ----------------------------------------------------------------------------- audio

def read_audio(path: Path | str, sample_rate: int = 16000, stream: int = 0) -> np.ndarray:
    """Decode audio stream ``stream`` (0 = the first) to mono float32 in [-1, 1] at ``sample_rate`` (any input format)."""
    raw = run_ffmpeg(
        ["-i", str(path), "-map", f"0:a:{int(stream)}", "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-"],
        path,
    )
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: Path | str, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono PCM s16 WAV atomically."""
    import soundfile as sf

    pcm = np.clip(np.round(np.asarray(samples, np.float32) * 32767.0), -32768, 32767).astype(np.int16)
    with atomic_output(path) as tmp:
        sf.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")


# ----------------------------------------------------------------------------- video

def iter_frames(path: Path | str, width: int, height: int, *, vf: str | None = None,
                chunk: int = 32, start_frame: int = 0, n_frames: int | None = None,
                fps: float = 25.0) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames [k, H, W, 3] in chunks of up to ``chunk`` frames, streaming from ffmpeg.

    ``width``/``height`` are the frame size after the optional filter ``vf``. ``start_frame`` > 0 seeks
    (input seeking, frame-accurate for the constant-``fps`` videos the pipeline writes: decoding starts at
    the keyframe before it, not at frame 0); ``n_frames`` stops after that many frames.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    if start_frame > 0:  # half a frame early: the first frame kept is start_frame whatever the rounding
        cmd += ["-ss", f"{(start_frame - 0.5) / fps:.6f}"]
    cmd += ["-i", str(path), "-map", "0:v:0"]
    if vf:
        cmd += ["-vf", vf]
    if n_frames is not None:
        cmd += ["-frames:v", str(int(n_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frame_bytes = width * height * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        while True:
            buf = proc.stdout.read(frame_bytes * chunk)
            if not buf:
                break
            n = len(buf) // frame_bytes
            if n * frame_bytes != len(buf):
                raise MediaError(path, f"decoder returned a partial frame ({len(buf)} bytes)")
            yield np.frombuffer(buf, np.uint8).reshape(n, height, width, 3)
    finally:
        if proc.stdout:
            proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0:
        raise MediaError(path, f"ffmpeg decode failed: {err.strip().splitlines()[-1:] or rc}")


def read_frames_cv2(path: Path | str, size: int, n_expected: int | None = None,
                    stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames of ``path`` area-resized to ``size``², one at a time, with OpenCV (no ffmpeg binary).

    ``stop``: decode only frames ``0 .. stop - 1`` (MediaError if the video is shorter); ``n_expected``: the
    whole video must have exactly that many frames."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise MediaError(path, "OpenCV cannot open the video")
    i = 0
    try:
        while stop is None or i < stop:
            ok, bgr = cap.read()
            if not ok:
                break
            if bgr.shape[0] != size or bgr.shape[1] != size:
                bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    if stop is not None and i < stop:
        raise MediaError(path, f"ends at frame {i}, frame {stop - 1} was asked for")
    if n_expected is not None and i != n_expected:
        raise MediaError(path, f"decoded {i} frames, expected {n_expected}")


class VideoWriter:
    """Stream uint8 RGB frames into an H.264 mp4 (atomically renamed into place on close).

    ``crf=0`` is lossless; the default 12 is visually lossless. Use as a context manager.
    """

    def __init__(self, path: Path | str, width: int, height: int, fps: int = 25, crf: int = 12,
                 preset: str = "medium", audio: Path | str | None = None):
        self.path = Path(path)
        self.width, self.height, self.n = width, height, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}{self.path.suffix}")
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
        if audio is not None:
            cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "160k", "-shortest"]
        pix = "yuv444p" if crf == 0 else "yuv420p"
        cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", pix,
                "-movflags", "+faststart", str(tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"{self.path}: frame shape {frames.shape[1:]} != {(self.height, self.width, 3)}")
        assert self._proc.stdin is not None
        self._proc.stdin.write(frames.tobytes())
        self.n += len(frames)

    def close(self, ok: bool = True) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        rc = self._proc.wait()
        if ok and rc == 0 and self._tmp.exists():
            os.replace(self._tmp, self.path)
            return
        self._tmp.unlink(missing_ok=True)
        if ok:
            raise MediaError(self.path, f"ffmpeg encode failed: {err.strip() or rc}")

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
