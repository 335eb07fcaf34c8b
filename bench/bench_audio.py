"""Time extract_audio_features per stage on one clip (CPU). Not a test: results go to BENCHMARKS.md.

    .venv/bin/python bench/bench_audio.py ../shared/data/talk_dfrf_cnn_en.mp4 [--encoder speech_embedding]

Prints the wall time of a cold first call (imports, numba/librosa warm-up), then of each step on a
warm second pass, and the end-to-end warm run() (decode + features + writes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.audio import features as af
from pipeline.core import media
from pipeline.core.config import AudioConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("audio")
    p.add_argument("--encoder", default="none")
    a = p.parse_args()
    cfg = AudioConfig(encoder=a.encoder)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        af.run(a.audio, Path(d) / "c.npz", Path(d) / "c.parquet", cfg)
        cold = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        s = af.run(a.audio, Path(d) / "w.npz", Path(d) / "w.parquet", cfg)
        warm, warm_cpu = time.perf_counter() - t, time.process_time() - c
    steps = {}
    t = time.perf_counter()
    y = media.read_audio(a.audio)
    steps["decode+resample (ffmpeg)"] = time.perf_counter() - t
    grid = af.Grid.of(len(y), cfg.fps)
    for name, fn in [("log-mel", lambda: af.log_mel(y, grid, cfg)), ("rms", lambda: af.rms_energy(y, grid)),
                     ("praat pitch+formants", lambda: af.praat_tracks(y, grid, cfg))]:
        t = time.perf_counter()
        fn()
        steps[name] = time.perf_counter() - t
    if a.encoder != "none":
        from pipeline.audio.encoders import encode

        t = time.perf_counter()
        encode(y, grid.n_feat, cfg)
        steps[a.encoder] = time.perf_counter() - t
    print(f"{a.audio}: {len(y) / 16000:.2f} s audio, {s['n_frames']} frames, encoder={a.encoder}")
    print(f"  run() cold (first call in the process): {cold:.2f} s;  run() warm: {warm:.2f} s wall, "
          f"{warm_cpu:.2f} s CPU of this process (ffmpeg decode not counted)")
    for k, v in steps.items():
        print(f"  {k:28s} {v:6.2f} s")


if __name__ == "__main__":
    main()
