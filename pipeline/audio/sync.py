"""Rule ``measure_av_sync``: the subject's lip-audio offset, measured before anything trains, and corrected.

Inputs: ``ingest/audio.wav`` and ``ingest/meta.json``, ``crop/video.mp4`` and ``crop/crop.json``,
``landmarks/landmarks.parquet``. Outputs: ``sync/sync.json`` (:data:`~pipeline.core.artifacts.SYNC_OFFSET`) and
``sync/audio.wav``, the ingested audio moved by the applied correction, of exactly the same length. Every later
reader of the subject's own audio reads ``sync/audio.wav``: the audio features (``audio/self.*``, hence stage 1 and
stage 2), the render's mux (``video.mp4``, hence evaluate) and the ER-NeRF export. One file carries the alignment,
so nothing downstream shifts anything, and a changed correction re-runs exactly the stages that read the audio.

The detector is the evaluate step's (:func:`pipeline.core.metrics.sync_offset`): the mouth's signal
(:func:`~pipeline.core.metrics.sync_visual`: the dark share of the mouth box on each crop frame) against the log
energy of the speech bands (:func:`~pipeline.core.metrics.sync_audio`), Pearson r per lag, the chance level of the
search's peak from unrelated pairings of the same signals (a 5 % false-positive rate against foreign speech,
measured by ``bench/sync_false_positives.py``; ``chance_r`` and ``p_value``) and the agreement of the windows that
are informative on their own. Here it runs on the whole clip, not only the test split.

Decision (``sync`` config):

* ``offset_frames`` set: that correction, whatever the detector says (its finding is still recorded);
* ``correct: auto`` (default): a reliable offset with 1 <= |offset| <= ``max_frames`` is corrected; 0 needs
  nothing; a larger one, or an unreliable measurement, is left alone with one warning naming the file;
* ``correct: off``: the offset is reported, the audio copied unchanged.

A correction of k frames (k > 0: the audio trails the video) drops the first k / fps seconds of audio and pads the
end with as much silence (k < 0: silence first, the end dropped), so video frame i is paired with the sound that
was recorded at i + k. A silent track (peak below ``silence_dbfs``), audio without speech (music: no relation
above chance) or a clip too short to measure gives no correction and one warning; both outputs are still written
(the audio unchanged), atomically, and a failure before that leaves neither.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import (CROP_META, INGEST_META, LANDMARKS, N_LANDMARKS, SYNC_OFFSET, Provenance,
                                     atomic_output, config_hash, fixed_list_column)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import SyncConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.layout import SyncFiles
from pipeline.core.metrics import band_envelope, mouth_darkness, sync_audio, sync_offset, sync_visual
from pipeline.core.progress import progress

log = logging.getLogger("pipeline.audio.sync")
SAMPLE_RATE = 16000
SUMMARY = ("offset_frames", "best_lag", "peak_r", "r_at_zero", "null_r95", "p_value", "agreement", "speech_frames",
           "reliable", "reason")


class SyncError(PipelineError):
    pass


def visual_signals(video: Path, size: int, landmarks: Path, n_frames: int, fps: int) -> np.ndarray:
    """[N, 1] mouth signal of the crop video (:func:`~pipeline.core.metrics.sync_visual`)."""
    pts = fixed_list_column(LANDMARKS.read(landmarks), "landmarks", (N_LANDMARKS, 3)).astype(np.float64)
    if len(pts) != n_frames:
        raise SyncError(landmarks, f"{len(pts)} rows, ingest has {n_frames} frames")
    dark = np.full(n_frames, np.nan)
    i = 0
    frames = (f for chunk in media.iter_frames(video, size, size, fps=fps) for f in chunk)
    for i, frame in enumerate(progress(frames, total=n_frames, desc="sync", unit="frame", mininterval=5), start=1):
        if i > n_frames:
            raise SyncError(video, f"more than the {n_frames} frames the ingest has")
        dark[i - 1] = mouth_darkness(frame, pts[i - 1])
    if i != n_frames:
        raise SyncError(video, f"{i} frames decoded, ingest has {n_frames}")
    return sync_visual(dark, pts)


def measure(visual: np.ndarray, pcm: np.ndarray, fps: int, cfg: SyncConfig) -> dict:
    """The detector on int16 ``pcm``; a silent track is refused before it (reason given, nothing reliable)."""
    y = pcm.astype(np.float32) / 32768.0
    n = len(visual)
    peak = float(np.abs(y).max()) if len(y) else 0.0
    peak_db = 20 * np.log10(peak) if peak > 0 else -np.inf
    if peak_db < cfg.silence_dbfs:
        return {"offset_frames": None, "best_lag": None, "peak_r": None, "r_at_zero": None, "null_r95": None,
                "p_value": None, "agreement": None, "speech_frames": 0, "reliable": False, "curve": [],
                "reason": f"silent audio track (peak {peak_db:.1f} dBFS < {cfg.silence_dbfs:g})"}
    env = band_envelope(y, SAMPLE_RATE, fps, n, cfg.band_lo_hz, cfg.band_hi_hz)
    bands = sync_audio(y, SAMPLE_RATE, fps, n, cfg.band_lo_hz, cfg.band_hi_hz)
    return sync_offset(visual, bands, speech=env, **cfg.detector())


def shift_audio(pcm: np.ndarray, frames: int, samples_per_frame: int) -> np.ndarray:
    """``pcm`` moved earlier by ``frames`` video frames (later when negative), zero-filled, same length."""
    k = frames * samples_per_frame
    out = np.zeros_like(pcm)
    if k >= 0:
        out[:max(0, len(pcm) - k)] = pcm[k:]
    else:
        out[-k:] = pcm[:len(pcm) + k]
    return out


def describe(found: dict) -> str:
    """'audio trails video by 3 frames (r 0.46, chance 0.15)' for a reliable result."""
    k = found["offset_frames"]
    where = ("in sync with video" if k == 0 else
             f"audio {'trails' if k > 0 else 'leads'} video by {abs(k)} frame{'s' if abs(k) != 1 else ''}")
    return f"{where} (r {found['peak_r']:.2f}, chance {found['null_r95']:.2f})"


def decide(found: dict, cfg: SyncConfig, name: str) -> tuple[int, str, str, bool]:
    """(shift_frames, mode, decision line, warn) from the detector's ``found`` and the config."""
    if cfg.offset_frames is not None:
        seen = describe(found) if found["reliable"] else f"detector: not measurable ({found['reason']})"
        return cfg.offset_frames, "explicit", f"audio shifted by {cfg.offset_frames:+d} frames as set by " \
                                              f"sync.offset_frames; {seen}", False
    if not found["reliable"]:
        return 0, cfg.correct, (f"{name}: lip-audio offset not measurable ({found['reason']}): "
                                "audio left as it is"), True
    k = found["offset_frames"]
    if k == 0:
        return 0, cfg.correct, f"{describe(found)}: nothing to correct", False
    if cfg.correct == "off":
        return 0, cfg.correct, f"{describe(found)}: not corrected (sync.correct: off)", False
    if abs(k) > cfg.max_frames:
        return 0, cfg.correct, (f"{name}: {describe(found)}: not corrected, beyond sync.max_frames "
                                f"{cfg.max_frames} (set sync.offset_frames to apply it)"), True
    return k, cfg.correct, f"{describe(found)}: corrected", False


def _summary(found: dict) -> dict:
    return {k: found.get(k) for k in SUMMARY}


def read_pcm(audio: Path | str) -> np.ndarray:
    """The 16 kHz mono int16 samples of a WAV (``ingest/audio.wav``, ``sync/audio.wav``); anything else is an
    error naming the file."""
    import soundfile as sf

    audio = Path(audio)
    if not audio.is_file():
        raise SyncError(audio, "audio file not found")
    pcm, sr = sf.read(str(audio), dtype="int16", always_2d=True)
    if sr != SAMPLE_RATE or pcm.shape[1] != 1:
        raise SyncError(audio, f"{sr} Hz x {pcm.shape[1]} channels, expected 16 kHz mono (ingest/audio.wav)")
    return pcm[:, 0]


def run(audio: Path | str, meta: Path | str, video: Path | str, crop_meta: Path | str, landmarks: Path | str,
        outdir: Path | str, cfg: SyncConfig = SyncConfig()) -> dict:
    """Measure the lip-audio offset of one subject -> ``outdir``/{sync.json, audio.wav}; return sync.json."""
    import soundfile as sf

    audio, video, landmarks = Path(audio), Path(video), Path(landmarks)
    out = SyncFiles(outdir)
    info = INGEST_META.read(meta)
    fps, n = int(info["fps"]), int(info["n_frames"])
    spf = SAMPLE_RATE // fps
    pcm = read_pcm(audio)
    if abs(len(pcm) - n * spf) > spf:
        raise SyncError(audio, f"{len(pcm)} samples, ingest's {n} frames need {n * spf}")
    if cfg.offset_frames is not None and abs(cfg.offset_frames) >= n:
        raise SyncError(audio, f"sync.offset_frames {cfg.offset_frames} is not shorter than the clip ({n} frames)")

    visual = visual_signals(video, int(CROP_META.read(crop_meta)["size"]), landmarks, n, fps)
    found = measure(visual, pcm, fps, cfg)
    shift, mode, line, warn = decide(found, cfg, f"{audio} (from {info['source']})")
    aligned = shift_audio(pcm, shift, spf)
    after = _summary(found) if shift == 0 else _summary(measure(visual, aligned, fps, cfg))
    (log.warning if warn else log.info)("%s", line)
    if shift:
        log.info("after the correction: best lag %+d frames, r %.2f (chance %s), reliable %s", after["best_lag"],
                 after["peak_r"], after["null_r95"], after["reliable"])
    doc = {"audio": str(audio), "fps": fps, "n_frames": n, "offset_frames": found["offset_frames"],
           "best_lag": found["best_lag"], "peak_r": found["peak_r"], "chance_r": found["null_r95"],
           "p_value": found["p_value"],
           "agreement": found["agreement"], "reliable": bool(found["reliable"]), "reason": found["reason"],
           "mode": mode, "shift_frames": int(shift), "corrected": bool(shift), "decision": line,
           "detector": found, "after": after if after["best_lag"] is not None else None, "config": asdict(cfg)}
    prov = Provenance(str(info.get("source_sha256", "unknown")), config_hash(cfg))
    with atomic_output(out.audio) as tmp_wav, atomic_output(out.offset) as tmp_json:  # both or neither
        sf.write(str(tmp_wav), aligned, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        SYNC_OFFSET.write(tmp_json, doc, prov)
    return doc


def main(argv: list[str] | None = None) -> None:
    args = parser("Measure the lip-audio offset and write the subject's audio aligned to the video.",
                  ["audio", "meta", "video", "crop_meta", "landmarks", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.audio, args.meta, args.video, args.crop_meta, args.landmarks, args.outdir,
                        from_mapping(SyncConfig, args.config, "sync")))


if __name__ == "__main__":
    main()
