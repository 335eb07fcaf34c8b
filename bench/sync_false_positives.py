"""False-positive rate of the lip-audio detector of rule measure_av_sync against foreign audio.

A trial pairs the mouth signal of a real clip with speech from another recording, which cannot be in sync with
it, and runs what the rule runs (:func:`pipeline.audio.sync.measure`, config.yaml ``sync:`` defaults). A trial
is a false positive when the detector calls the pairing reliable; the rate should not exceed the stated 5 %.
Foreign audio: the five shared speech wavs and the ingested audio of the other clips (never the clip's own).

* ``clips``: the three short clips whole (katiehill at the production 512 px, trump and videoretalking at the
  tests' 256 px) against foreign segments of their own length, at most 6 per source, one clip length apart.
* ``segments``: every clip's mouth signal cut into 200-frame pieces (non-overlapping), each against every
  200-frame piece of foreign audio: more trials, a tighter estimate.

The subject folders (ingest, crop, landmarks) are built under ``--work`` on the first run and reused. Prints one
JSON document: per set the trials, false positives (reliable), the share with p <= 0.05 and p <= 0.01, a 95 %
Wilson interval of the rate, and the detector's mean seconds per trial::

    python bench/sync_false_positives.py --work /tmp/sync_fp --set clips segments
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.audio import sync
from pipeline.core import media
from pipeline.core.artifacts import INGEST_META
from pipeline.core.config import CropConfig, SyncConfig
from pipeline.core.layout import SubjectLayout

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIPS = {"talk_dfrf_cnn_en": 256, "talk_dfrf_macron_fr": 256, "talk_mimictalk_german_de": 256,
         "talk_mimictalk_trump_en": 256, "talk_sadtalker_katiehill_en": 512, "talk_videoretalking_4_en": 256}
SHORT = ("talk_sadtalker_katiehill_en", "talk_mimictalk_trump_en", "talk_videoretalking_4_en")
SPEECH = ("speech_dreamtalk_german1_de", "speech_genefacepp_macron_fr", "speech_musetalk_eng_en",
          "speech_sadtalker_chinese_news_zh", "speech_sadtalker_hdtf_radio31_en")
SPF = sync.SAMPLE_RATE // 25  # every clip is ingested at 25 fps


def subject(work: Path, data: Path, clip: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mouth signal of the rule [N, ...], ingested 16 kHz int16 audio) of one clip; stages run once."""
    from pipeline.preprocess import crop, ingest, landmarks

    s = SubjectLayout(work / f"{clip}_{size}")
    if not s.ingest.meta.exists():
        ingest.run(data / f"{clip}.mp4", s.ingest.path)
    if not s.crop.meta.exists():
        crop.run(s.ingest.video, s.ingest.meta, s.crop.path, CropConfig(size=size))
    if not s.landmarks.table.exists():
        landmarks.run(s.crop.video, s.crop.meta, s.ingest.meta, s.landmarks.path)
    meta = INGEST_META.read(s.ingest.meta)
    if int(meta["fps"]) != 25:
        raise SystemExit(f"{clip}: ingested at {meta['fps']} fps, this check assumes 25")
    visual = sync.visual_signals(s.crop.video, size, s.landmarks.table, int(meta["n_frames"]), 25)
    return visual, sync.read_pcm(s.ingest.audio)


def pieces(pcm: np.ndarray, frames: int, limit: int | None = None) -> list[np.ndarray]:
    """Non-overlapping segments of ``frames`` video frames of audio (at most ``limit``)."""
    step = frames * SPF
    return [pcm[s:s + step] for s in range(0, len(pcm) - step + 1, step)][:limit]


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if not n:
        return [0.0, 1.0]
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(c - h, 4), round(c + h, 4)]


def trials(name: str, videos: dict, audios: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, mouth piece, foreign audio piece) of one set."""
    out = []
    if name == "clips":
        for clip in SHORT:
            visual, _ = videos[clip]
            for src, pcm in audios.items():
                if src != clip:
                    out += [(f"{clip} | {src} @{i * len(visual)}", visual, a)
                            for i, a in enumerate(pieces(pcm, len(visual), 6))]
    else:
        for clip, (visual, _) in videos.items():
            for j in range(len(visual) // 200):
                v = visual[j * 200:(j + 1) * 200]
                for src, pcm in audios.items():
                    if src != clip:
                        out += [(f"{clip} @{j * 200} | {src} @{i * 200}", v, a) for i, a in enumerate(pieces(pcm, 200))]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="subject folders (built on the first run)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--set", nargs="+", default=["clips", "segments"], choices=["clips", "segments"])
    p.add_argument("--max-trials", type=int, default=0, help="evenly thinned to this many per set (0: all)")
    p.add_argument("--list", action="store_true", help="also list the false positives")
    args = p.parse_args()
    videos = {clip: subject(args.work, args.data, clip, size) for clip, size in CLIPS.items()}
    audios = {s: (media.read_audio(args.data / f"{s}.wav", sync.SAMPLE_RATE) * 32767).astype(np.int16)
              for s in SPEECH}
    audios.update({clip: pcm for clip, (_, pcm) in videos.items()})
    cfg, out = SyncConfig(), {"config": SyncConfig().detector()}
    for name in args.set:
        todo = trials(name, videos, audios)
        if args.max_trials and len(todo) > args.max_trials:
            todo = [todo[i] for i in np.linspace(0, len(todo) - 1, args.max_trials).round().astype(int)]
        hits, p05, p01, secs = [], 0, 0, 0.0
        for label, visual, pcm in todo:
            t = time.perf_counter()
            r = sync.measure(visual, pcm, 25, cfg)
            secs += time.perf_counter() - t
            p = r.get("p_value")
            p05 += p is not None and p <= 0.05
            p01 += p is not None and p <= 0.01
            if r["reliable"]:
                hits.append(f"{label}: lag {r['best_lag']:+d}, r {r['peak_r']}, chance {r['null_r95']}, p {p}")
        n = len(todo)
        out[name] = {"trials": n, "false_positives": len(hits), "rate": round(len(hits) / max(n, 1), 4),
                     "rate_95ci": wilson(len(hits), n), "p_le_0.05": round(p05 / max(n, 1), 4),
                     "p_le_0.01": round(p01 / max(n, 1), 4), "seconds_per_trial": round(secs / max(n, 1), 3)}
        if args.list:
            out[name]["listed"] = hits
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
