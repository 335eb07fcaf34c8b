"""Rule ``extract_audio_features``: any speech file -> per-video-frame audio features.

One module serves the subject's own audio (``sync/audio.wav``: ``ingest/audio.wav`` aligned to the video by rule
``measure_av_sync``) and any driving clip (``data/audio/<clip>.wav``); both become ``audio/<clip>.npz`` +
``audio/<clip>.parquet`` (:data:`pipeline.core.artifacts.AUDIO_FEATURES`, :data:`pipeline.core.artifacts.AUDIO_FRAMES`).

Everything is computed on one 50 Hz grid (feature frame ``j`` is centred at ``t = j / 50`` s,
``1 + n_samples // 320`` frames at 16 kHz):

* log-mel: 80 bins, 25 ms Hann window, 20 ms hop (librosa, centred frames), in dB;
* RMS energy over the same 25 ms windows;
* f0 and voicing: Praat's autocorrelation pitch (praat-parselmouth);
* formants F1-F3 and bandwidths B1-B3: Praat's Burg tracker, ``max_formant_hz`` ceiling
  (5500 Hz suits most voices; ~5000 Hz for low male voices), read back as one table (no per-frame
  Python calls into Praat) and interpolated linearly onto the grid.

Video frame ``i`` (presentation time ``i / fps``) is feature frame ``2i``; its window is the
16 feature frames ``[2i - 8, 2i + 8)`` (AD-NeRF / ER-NeRF convention), zero-padded only beyond the
clip's ends; the number of padded frames is stored. Formants and f0 are NaN on unvoiced frames in
the Parquet table; in the model features they are filled by linear interpolation between voiced
frames (held at the ends) and then normalised per clip (``normalize: clip``: every column but
``voiced`` z-scored, formants and f0 with statistics of voiced frames only — Lobanov's speaker
normalisation), so the windows are always finite. Learned encoders live in
:mod:`pipeline.audio.encoders`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import AUDIO_FEATURES, AUDIO_FRAMES, Provenance, config_hash, file_sha256
from pipeline.core.cli import guarded, parser
from pipeline.core.config import AudioConfig, from_mapping
from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline.audio.features")

SAMPLE_RATE = 16000
FEATURES_PER_VIDEO_FRAME = 2     # 50 Hz features for 25 fps video
WIN_SEC = 0.025                  # analysis window of mel and RMS
N_FFT = 512
SCALAR_COLUMNS = ["f1_hz", "f2_hz", "f3_hz", "log_b1", "log_b2", "log_b3", "log_f0", "voiced", "rms_db"]


class AudioFeatureError(PipelineError):
    pass


@dataclass
class Grid:
    """The 50 Hz feature grid of one clip and its relation to video frames."""

    n_samples: int
    hop: int            # samples per feature frame (320 at 16 kHz / 25 fps)
    n_feat: int         # feature frames: 1 + n_samples // hop (centred frames)
    n_video: int        # video frames: round(duration * fps)

    @classmethod
    def of(cls, n_samples: int, fps: int, sample_rate: int = SAMPLE_RATE) -> "Grid":
        hop = sample_rate // (FEATURES_PER_VIDEO_FRAME * fps)
        return cls(n_samples, hop, 1 + n_samples // hop, int(round(n_samples / sample_rate * fps)))

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.n_feat) * (self.hop / SAMPLE_RATE)


# ----------------------------------------------------------------------------- spectral features

def log_mel(y: np.ndarray, grid: Grid, cfg: AudioConfig) -> np.ndarray:
    """[n_feat, n_mels] log-mel power in dB (re 1.0 full scale)."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=y, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=grid.hop, win_length=int(WIN_SEC * SAMPLE_RATE),
        window="hann", center=True, pad_mode="constant", n_mels=cfg.n_mels, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz,
        power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T[: grid.n_feat].astype(np.float32)


def rms_energy(y: np.ndarray, grid: Grid) -> np.ndarray:
    """[n_feat] RMS amplitude (full scale = 1) over 25 ms windows centred on the grid."""
    import librosa

    r = librosa.feature.rms(y=y, frame_length=int(WIN_SEC * SAMPLE_RATE), hop_length=grid.hop,
                            center=True, pad_mode="constant")[0]
    return r[: grid.n_feat].astype(np.float32)


# ----------------------------------------------------------------------------- Praat

def _interp_nan(t_src: np.ndarray, v_src: np.ndarray, t_dst: np.ndarray) -> np.ndarray:
    """Linear interpolation that keeps NaN where either neighbour is NaN; NaN outside the source range."""
    if len(t_src) == 0:
        return np.full((len(t_dst),) + v_src.shape[1:], np.nan, np.float32)
    if len(t_src) == 1:
        out = np.full((len(t_dst),) + v_src.shape[1:], np.nan, np.float32)
        out[np.abs(t_dst - t_src[0]) <= 0.01] = v_src[0]
        return out
    dt = t_src[1] - t_src[0]
    pos = (t_dst - t_src[0]) / dt
    i0 = np.clip(np.floor(pos).astype(int), 0, len(t_src) - 2)
    w = np.clip(pos - i0, 0.0, 1.0)
    w = w.reshape((-1,) + (1,) * (v_src.ndim - 1))
    out = (1 - w) * v_src[i0] + w * v_src[i0 + 1]
    outside = (pos < -0.5) | (pos > len(t_src) - 0.5)
    out[outside] = np.nan
    return out.astype(np.float32)


def praat_tracks(y: np.ndarray, grid: Grid, cfg: AudioConfig) -> dict[str, np.ndarray]:
    """f0 (Hz, NaN unvoiced), voicing, F1-F3 and B1-B3 (Hz, NaN where Praat found none) on the grid."""
    import parselmouth
    from parselmouth.praat import call

    snd = parselmouth.Sound(y.astype(np.float64), sampling_frequency=SAMPLE_RATE)
    t = grid.times
    step = grid.hop / SAMPLE_RATE

    pitch = snd.to_pitch_ac(time_step=step, pitch_floor=cfg.pitch_floor_hz, pitch_ceiling=cfg.pitch_ceiling_hz)
    f0_src = pitch.selected_array["frequency"].astype(np.float64)
    pt = np.asarray(pitch.xs())
    f0 = np.full(grid.n_feat, np.nan, np.float32)
    if len(pt):
        k = np.rint((t - pt[0]) / pitch.dt).astype(int)
        inside = (k >= 0) & (k < len(pt))
        vals = f0_src[np.clip(k, 0, len(pt) - 1)]
        f0[inside & (vals > 0)] = vals[inside & (vals > 0)]
    voiced = np.isfinite(f0)

    formant = snd.to_formant_burg(time_step=step, max_number_of_formants=cfg.n_formants_tracked,
                                  maximum_formant=cfg.max_formant_hz, window_length=WIN_SEC,
                                  pre_emphasis_from=50.0)
    # One Praat table of every frame (time, F1, B1, F2, B2, ...), parsed in one go.
    table = call(formant, "Down to Table", False, True, 6, False, 3, True, 3, True)
    text = call(table, "List", False)
    arr = np.genfromtxt(io.StringIO(text), delimiter="\t", skip_header=1, missing_values="--undefined--",
                        filling_values=np.nan, dtype=np.float64, ndmin=2)
    if arr.size == 0:
        arr = np.zeros((0, 8))
    ft = arr[:, 0]
    fb = arr[:, 2:8]  # F1 B1 F2 B2 F3 B3 (column 1 is nformants)
    on_grid = _interp_nan(ft, fb, t)
    out = {"f0_hz": f0, "voiced": voiced}
    for k in range(3):
        out[f"f{k + 1}_hz"] = on_grid[:, 2 * k]
        out[f"b{k + 1}_hz"] = on_grid[:, 2 * k + 1]
    return out


# ----------------------------------------------------------------------------- assembling

def _fill_time(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill NaN by linear interpolation over time (ends held); all-NaN -> zeros. Returns (filled, n_filled)."""
    bad = ~np.isfinite(v)
    if not bad.any():
        return v, 0
    if bad.all():
        return np.zeros_like(v), int(bad.sum())
    idx = np.arange(len(v))
    out = v.copy()
    out[bad] = np.interp(idx[bad], idx[~bad], v[~bad])
    return out, int(bad.sum())


def frame_features(tracks: dict[str, np.ndarray], mel: np.ndarray, rms: np.ndarray,
                   cfg: AudioConfig) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """[n_feat, D] finite features + column names + the (mean, std) normalisation applied."""
    voiced = tracks["voiced"]
    scal = {}
    for k in (1, 2, 3):
        f = np.where(voiced, tracks[f"f{k}_hz"], np.nan)
        b = np.where(voiced, tracks[f"b{k}_hz"], np.nan)
        scal[f"f{k}_hz"] = f
        scal[f"log_b{k}"] = np.log(np.maximum(b, 1.0))
    scal["log_f0"] = np.log(tracks["f0_hz"])
    scal["voiced"] = voiced.astype(np.float32)
    scal["rms_db"] = 20.0 * np.log10(np.maximum(rms, 1e-5))

    cols = [f"mel_{i:02d}" for i in range(mel.shape[1])] + SCALAR_COLUMNS
    feats = np.zeros((len(mel), len(cols)), np.float32)
    feats[:, : mel.shape[1]] = mel
    mean = np.zeros(len(cols), np.float32)
    std = np.ones(len(cols), np.float32)
    n_mel = mel.shape[1]
    if cfg.normalize == "clip":
        mean[:n_mel], std[:n_mel] = mel.mean(0), mel.std(0)
    for c, name in enumerate(SCALAR_COLUMNS, start=n_mel):
        v = scal[name].astype(np.float64)
        finite = np.isfinite(v)
        if cfg.normalize == "clip" and name != "voiced" and finite.any():
            mean[c], std[c] = v[finite].mean(), v[finite].std()
        filled, n_filled = _fill_time(v)
        if n_filled and name != "voiced":
            log.debug("%s: %d of %d frames filled by interpolation", name, n_filled, len(v))
        if not finite.any():  # nothing measured at all: the fill is the normalised mean (0)
            filled = np.full_like(v, mean[c])
        feats[:, c] = filled
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    feats = (feats - mean) / std
    return feats.astype(np.float32), cols, mean, std


def window_indices(n_video: int, n_feat: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices [n_video, window] into the feature sequence (-1 = zero pad) and the valid mask."""
    centre = FEATURES_PER_VIDEO_FRAME * np.arange(n_video)
    idx = centre[:, None] + np.arange(-(window // 2), window - window // 2)[None, :]
    valid = (idx >= 0) & (idx < n_feat)
    return np.where(valid, idx, -1), valid


def gather(seq: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """seq[idx] with zeros where idx == -1."""
    padded = np.concatenate([seq, np.zeros((1,) + seq.shape[1:], seq.dtype)], axis=0)
    return padded[np.where(idx < 0, len(seq), idx)]


def run(audio: Path | str, npz: Path | str, table: Path | str, cfg: AudioConfig = AudioConfig()) -> dict:
    """Extract features of ``audio`` (any format ffmpeg reads) into ``npz`` and ``table``; return a summary."""
    src = Path(audio)
    if not src.is_file():
        raise AudioFeatureError(src, "audio file not found")
    if cfg.encoder != "none":
        from pipeline.audio.encoders import check

        check(cfg)  # a missing checkpoint fails before any work
    y = media.read_audio(src, SAMPLE_RATE)
    grid = Grid.of(len(y), cfg.fps)
    if grid.n_video < 1 or len(y) < int(WIN_SEC * SAMPLE_RATE):
        raise AudioFeatureError(src, f"too short for audio features: {len(y) / SAMPLE_RATE:.3f} s")
    if not np.isfinite(y).all():
        raise AudioFeatureError(src, "decoded samples contain NaN/inf")
    log.info("%s: %.2f s -> %d video frames, %d feature frames", src, len(y) / SAMPLE_RATE, grid.n_video, grid.n_feat)

    mel = log_mel(y, grid, cfg)
    rms = rms_energy(y, grid)
    tracks = praat_tracks(y, grid, cfg)
    feats, cols, mean, std = frame_features(tracks, mel, rms, cfg)

    idx, valid = window_indices(grid.n_video, grid.n_feat, cfg.window)
    arrays = {
        "features": gather(feats, idx),
        "frame_idx": np.arange(grid.n_video, dtype=np.int32),
        "columns": np.array(cols, dtype=str),
        "valid": valid,
        # zero feature frames before the clip's first / after its last feature frame
        "pad_start": np.int32(cfg.window // 2),
        "pad_end": np.int32(max(0, FEATURES_PER_VIDEO_FRAME * (grid.n_video - 1) + cfg.window - cfg.window // 2
                                - grid.n_feat)),
        "feat_mean": mean,
        "feat_std": std,
        "fps": np.int32(cfg.fps),
    }
    if cfg.encoder != "none":
        from pipeline.audio.encoders import encode

        enc = encode(y, grid.n_feat, cfg)  # [n_feat, H] on the same 50 Hz grid
        pair = FEATURES_PER_VIDEO_FRAME * np.arange(grid.n_video)[:, None] + np.arange(2)[None, :]  # (2i, 2i+1)
        pair[pair >= enc.shape[0]] = -1
        arrays["encoder"] = gather(enc.astype(np.float32), pair)
        arrays["encoder_name"] = np.array(cfg.encoder)

    t_video = np.arange(grid.n_video) / cfg.fps
    at = FEATURES_PER_VIDEO_FRAME * np.arange(grid.n_video)  # grid frame of each video frame (< n_feat)
    voiced = tracks["voiced"][at]

    def masked(name: str) -> np.ndarray:
        return np.where(voiced, tracks[name][at], np.nan).astype(np.float32)

    columns = {"frame_idx": arrays["frame_idx"], "t_sec": t_video, "rms": rms[at], "f0_hz": masked("f0_hz"),
               "voiced": voiced}
    for k in (1, 2, 3):
        columns[f"f{k}_hz"] = masked(f"f{k}_hz")
    for k in (1, 2, 3):
        columns[f"b{k}_hz"] = masked(f"b{k}_hz")

    prov = Provenance(file_sha256(src), config_hash(cfg))
    AUDIO_FEATURES.write(npz, arrays, prov)
    AUDIO_FRAMES.write(table, columns, prov)
    summary = {"n_frames": grid.n_video, "dim": feats.shape[1], "voiced_fraction": float(voiced.mean()),
               "pad_start": int(arrays["pad_start"]), "pad_end": int(arrays["pad_end"]),
               "encoder_shape": list(arrays["encoder"].shape) if "encoder" in arrays else None}
    log.info("%s -> %s: %s", src, npz, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parser("Audio features (log-mel, formants, f0, energy; optional learned encoder) per video frame.",
                  ["audio", "npz", "table"]).parse_args(argv)
    guarded(lambda: run(args.audio, args.npz, args.table, from_mapping(AudioConfig, args.config, "audio")))


if __name__ == "__main__":
    main()
