"""The built-in demo subject: a talking clip made only from what the installed packages ship.

The picture is scikit-image's public-domain astronaut photo (NASA portrait of Eileen Collins).
The sound is speech-like audio synthesised here by a source-filter model: a glottal pulse train at
a drifting f0, shaped by three formant resonators per vowel, with fricative/plosive noise onsets,
grouped into syllables and phrases with pauses. The face is animated from the same syllable
track: the jaw drops with each vowel's openness, the head sways and nods, the eyes blink. So the
demo clip has the property the whole pipeline relies on: mouth motion that follows the audio.

``python -m pipeline.preprocess.demo --out data/demo/demo.mp4`` (the Snakemake rule ``demo_video`` runs it).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.signal import lfilter

from pipeline.core import media
from pipeline.core.cli import guarded, parser

# Geometry of the astronaut photo (512 x 512), measured once with mediapipe's FaceLandmarker.
MOUTH_X, LIP_GAP_Y, CHIN_Y = 223.0, 146.0, 177.0
MOUTH_HALF_WIDTH = 21.0
EYES = ((203.0, 101.0), (247.0, 103.0))  # (x, y) of the eye centres
NECK = (222.0, 240.0)                    # pivot of the head motion

# Vowels: F1, F2, F3 (Hz) and how far the jaw opens (0-1).
VOWELS = {
    "a": (800, 1250, 2600, 1.0),
    "e": (500, 1900, 2650, 0.6),
    "i": (320, 2300, 3000, 0.3),
    "o": (520, 900, 2450, 0.75),
    "u": (330, 820, 2300, 0.4),
}
BANDWIDTHS = (90.0, 110.0, 170.0)


@dataclass(frozen=True)
class DemoConfig:
    seconds: float = 12.0
    fps: int = 25
    sample_rate: int = 16000
    seed: int = 0


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    r = math.exp(-math.pi * bw / sr)
    theta = 2 * math.pi * freq / sr
    a = [1.0, -2 * r * math.cos(theta), r * r]
    return lfilter([1.0 - r], a, x)


def synth_speech(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return (audio float32 in [-1, 1], jaw opening per audio sample in [0, 1])."""
    rng = np.random.default_rng(cfg.seed)
    sr = cfg.sample_rate
    n = int(cfg.seconds * sr)
    audio = np.zeros(n, np.float64)
    jaw = np.zeros(n, np.float64)
    t = 0.4
    while t < cfg.seconds - 0.6:
        f0 = rng.uniform(190, 230)
        for k in range(int(rng.integers(4, 9))):                 # one phrase
            vowel = VOWELS[rng.choice(list(VOWELS))]
            cons = rng.uniform(0.03, 0.07)
            dur = rng.uniform(0.12, 0.22)
            i0, i1, i2 = int(t * sr), int((t + cons) * sr), int((t + cons + dur) * sr)
            if i2 >= n:
                break
            # consonant: band-passed noise burst (fricative-like)
            noise = rng.standard_normal(i1 - i0)
            audio[i0:i1] += 0.08 * _resonator(noise, rng.uniform(3000, 5500), 1500, sr) * np.hanning(i1 - i0)
            # vowel: glottal pulses with jitter -> formant cascade -> lip radiation
            m = i2 - i1
            f0_track = f0 * (1 - 0.15 * k / 8) * (1 + 0.02 * rng.standard_normal())
            phase = np.cumsum(np.full(m, f0_track / sr))
            src = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
            src = lfilter([1.0], [1.0, -0.97], src) + 0.02 * rng.standard_normal(m)
            y = src
            for f, bw in zip(vowel[:3], BANDWIDTHS):
                y = _resonator(y, f, bw, sr)
            y = np.diff(y, prepend=0.0)
            env = np.minimum(1.0, np.minimum(np.arange(m) / (0.02 * sr), (m - np.arange(m)) / (0.04 * sr)))
            y *= env / (np.abs(y).max() + 1e-9)
            audio[i1:i2] += 0.5 * y
            jaw[i1:i2] = np.maximum(jaw[i1:i2], vowel[3] * env)
            t += cons + dur
        t += rng.uniform(0.3, 0.7)                                # pause between phrases
    audio = 0.9 * audio / (np.abs(audio).max() + 1e-9)
    return audio.astype(np.float32), jaw


def _frame_track(per_sample: np.ndarray, cfg: DemoConfig) -> np.ndarray:
    """Average a per-sample signal over each video frame, then smooth lightly (a jaw has inertia)."""
    spf = cfg.sample_rate // cfg.fps
    n_frames = len(per_sample) // spf
    track = per_sample[: n_frames * spf].reshape(n_frames, spf).mean(1)
    return np.convolve(track, [0.25, 0.5, 0.25], mode="same")


def animate(photo: np.ndarray, jaw: float, blink: float, yaw_deg: float, nod_px: float, sway_px: float) -> np.ndarray:
    """One frame: jaw drop + mouth interior, eyelids, then a head rotation about the neck."""
    h, w = photo.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dy = np.zeros((h, w), np.float32)
    # jaw: everything below the lip gap moves down, fading out sideways and below the chin
    drop = 9.0 * jaw
    wx = np.exp(-0.5 * ((xs - MOUTH_X) / (1.4 * MOUTH_HALF_WIDTH)) ** 2)
    wy = np.clip((ys - (LIP_GAP_Y - 2)) / 4.0, 0, 1) * np.clip(1 - (ys - CHIN_Y) / 25.0, 0, 1)
    dy += drop * wx * wy
    # eyelids: skin above each eye slides down over it
    for ex, ey in EYES:
        lid = np.exp(-0.5 * (((xs - ex) / 9.0) ** 2 + ((ys - ey) / 5.0) ** 2))
        dy += 7.0 * blink * lid
    frame = cv2.remap(photo, xs, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # mouth interior: a dark gap between the lips, as wide and tall as the opening
    if jaw > 0.05:
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (int(MOUTH_X), int(LIP_GAP_Y + drop / 2)), (int(MOUTH_HALF_WIDTH * 0.75), max(1, int(drop / 2))),
                    0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask, (5, 5), 0)[..., None]
        frame = (frame * (1 - 0.85 * mask) + np.array([60, 20, 25]) * 0.85 * mask).astype(np.uint8)
    m = cv2.getRotationMatrix2D(NECK, yaw_deg, 1.0)
    m[0, 2] += sway_px
    m[1, 2] += nod_px
    return cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def run(out: Path | str, cfg: DemoConfig = DemoConfig()) -> Path:
    """Write the demo clip (H.264 + AAC) to ``out``; returns the path."""
    from skimage.data import astronaut

    out = Path(out)
    photo = astronaut()
    audio, jaw_samples = synth_speech(cfg)
    jaw = _frame_track(jaw_samples, cfg)
    n_frames = len(jaw)
    rng = np.random.default_rng(cfg.seed + 1)
    blink_starts = set(rng.choice(np.arange(10, n_frames - 10), size=max(1, int(cfg.seconds / 4)), replace=False).tolist())
    blink_curve = {0: 0.5, 1: 1.0, 2: 1.0, 3: 0.5}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        media.write_wav(wav, audio, cfg.sample_rate)
        with media.VideoWriter(out, photo.shape[1], photo.shape[0], fps=cfg.fps, crf=16, audio=wav) as writer:
            for i in range(n_frames):
                t = i / cfg.fps
                blink = max([blink_curve.get(i - s, 0.0) for s in blink_starts] + [0.0])
                frame = animate(photo, float(jaw[i]), blink,
                                yaw_deg=2.5 * math.sin(2 * math.pi * t / 5.3),
                                nod_px=2.0 * math.sin(2 * math.pi * t / 3.1 + 1.0),
                                sway_px=3.0 * math.sin(2 * math.pi * t / 7.7))
                writer.write(frame)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parser("Write the built-in demo clip (astronaut photo + synthesised speech).", ["out"], config=False).parse_args(argv)
    guarded(lambda: print(run(args.out)))


if __name__ == "__main__":
    main()
