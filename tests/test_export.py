"""export_ernerf: the exported folder, read back the way ER-NeRF reads it (cv2, json, np.loadtxt, pandas).

The reader below follows ER-NeRF's published conventions (data_utils/process.py, nerf_triplane/provider.py)
and uses none of pipeline.export.ernerf's helpers or constants.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CLIP = "talk_mimictalk_trump_en"
HEAD, NECK, TORSO, BG = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)  # cv2 (B, G, R), as process.py
OPENFACE_COLUMNS = ["frame", " face_id", " timestamp", " confidence", " success", " AU01_r", " AU02_r", " AU04_r",
                    " AU05_r", " AU06_r", " AU07_r", " AU12_r", " AU15_r", " AU20_r", " AU25_r", " AU26_r", " AU45_r"]


@pytest.fixture(scope="module")
def subject(processed) -> Path:
    processed.parsing(CLIP)
    processed.aus(CLIP)      # also tracking
    processed.audio(CLIP)
    return processed.dir(CLIP)


@pytest.fixture(scope="module")
def exported(subject, tmp_path_factory):
    from pipeline.export import ernerf as export

    out = tmp_path_factory.mktemp("export") / "ernerf"
    t0 = time.perf_counter()
    stats = export.run(subject, out)
    print(f"\nexport {CLIP}: {stats['n_frames']} frames {stats['size']} in {time.perf_counter() - t0:.1f} s "
          f"({stats['frames_per_sec']} frames/s written), camera distance {stats['camera_distance_mean']:.3f} m")
    return out, stats


def read_ernerf(root: Path) -> dict:
    """A minimal ER-NeRF-style reader: transforms, per-frame files, au.csv, audio arrays."""
    import cv2
    import pandas as pd
    import soundfile as sf

    tr = {s: json.loads((root / f"transforms_{s}.json").read_text()) for s in ("train", "val")}
    frames = tr["train"]["frames"] + tr["val"]["frames"]
    ids = [f["img_id"] for f in frames]
    lms = np.stack([np.loadtxt(root / "ori_imgs" / f"{i}.lms") for i in ids])
    au = pd.read_csv(root / "au.csv")
    wav, sr = sf.read(str(root / "aud.wav"))
    return {"tr": tr, "frames": frames, "ids": ids, "lms": lms, "au": au, "wav": wav, "sr": sr,
            "bc": cv2.imread(str(root / "bc.jpg"), cv2.IMREAD_UNCHANGED),
            "aud": np.load(root / "aud_ours.npy", allow_pickle=False)}


def test_export_folder_reads_as_ernerf(subject, exported):
    import cv2

    from pipeline.core.artifacts import INGEST_META, LANDMARKS, fixed_list_column

    root, stats = exported
    n = INGEST_META.read(subject / "ingest/meta.json")["n_frames"]
    d = read_ernerf(root)
    listing = sorted(p.name for p in root.iterdir())
    print("files:", listing)
    for name in ("ori_imgs", "gt_imgs", "parsing", "torso_imgs", "bc.jpg", "transforms_train.json",
                 "transforms_val.json", "au.csv", "aud.wav", "aud_ours.npy"):
        assert name in listing, name
    # ER-NeRF's --type all merges every *.json of the folder: only the two transforms files may be there
    assert sorted(p.name for p in root.glob("*.json")) == ["transforms_train.json", "transforms_val.json"]

    # frame counts and ids: N across train + val, val = the last 1/11, img_id = aud_id = 0..N-1
    assert len(d["frames"]) == n and d["ids"] == list(range(n))
    assert len(d["tr"]["val"]["frames"]) == n - int(n * 10 / 11)
    assert all(f["aud_id"] == f["img_id"] for f in d["frames"])
    for sub, ext in (("ori_imgs", "jpg"), ("ori_imgs", "lms"), ("gt_imgs", "jpg"), ("parsing", "png"),
                     ("torso_imgs", "png")):
        assert sorted(int(p.stem) for p in (root / sub).glob(f"*.{ext}")) == list(range(n)), (sub, ext)

    # intrinsics / image size
    t = d["tr"]["train"]
    h, w = d["bc"].shape[:2]
    assert {"focal_len", "cx", "cy", "frames"} <= set(t) and (t["h"], t["w"]) == (h, w)
    assert abs(t["cx"] - w / 2) <= 1 and abs(t["cy"] - h / 2) <= 1 and 0.5 * w < t["focal_len"] < 10 * w

    # camera-to-world matrices: rotations, metres, looking at the head (world origin projects into the face)
    P = np.array([f["transform_matrix"] for f in d["frames"]], np.float64)
    R, T = P[:, :3, :3], P[:, :3, 3]
    assert np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max() < 1e-4
    assert np.abs(np.linalg.det(R) - 1).max() < 1e-4
    assert np.allclose(P[:, 3], [0, 0, 0, 1])
    dist = np.linalg.norm(T, axis=1)
    assert ((dist > 0.2) & (dist < 3.0)).all(), (dist.min(), dist.max())       # metres, not cm
    origin_cam = np.einsum("nji,nj->ni", R, -T)                                 # world origin in OpenGL camera
    assert (origin_cam[:, 2] < 0).all()                                        # in front of the camera (-z)
    u = t["cx"] + t["focal_len"] * origin_cam[:, 0] / -origin_cam[:, 2]
    v = t["cy"] - t["focal_len"] * origin_cam[:, 1] / -origin_cam[:, 2]
    lo, hi = d["lms"].min(1), d["lms"].max(1)
    inside = (u > lo[:, 0]) & (u < hi[:, 0]) & (v > lo[:, 1]) & (v < hi[:, 1])
    assert inside.all(), np.flatnonzero(~inside)[:10]

    # .lms: 68 lines of "x y" inside the image
    assert d["lms"].shape == (n, 68, 2)
    assert (d["lms"] >= 0).all() and (d["lms"][..., 0] <= w - 1).all() and (d["lms"][..., 1] <= h - 1).all()
    assert all(len(line.split()) == 2 for line in (root / "ori_imgs/0.lms").read_text().splitlines())

    # parsing colours, gt background = bc.jpg, torso RGBA without the head; every 10th frame
    bc = d["bc"].astype(np.int16)
    for i in range(0, n, 10):
        seg = cv2.imread(str(root / "parsing" / f"{i}.png"))
        assert seg.shape == (h, w, 3)
        colours = {tuple(int(c) for c in x) for x in np.unique(seg.reshape(-1, 3), axis=0)}
        assert colours <= {HEAD, NECK, TORSO, BG} and HEAD in colours, (i, colours)
        head = (seg == HEAD).all(-1)
        bg = (seg == BG).all(-1)
        gt = cv2.imread(str(root / "gt_imgs" / f"{i}.jpg")).astype(np.int16)
        assert np.abs(gt[bg] - bc[bg]).mean() < 6, i
        torso = cv2.imread(str(root / "torso_imgs" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert torso.shape == (h, w, 4) and (torso[..., 3][head] == 0).all() and (torso[..., 3] > 0).any()

    # au.csv exactly as OpenFace names its columns (leading spaces), AU45 on OpenFace's 0-5 scale
    assert list(d["au"].columns) == OPENFACE_COLUMNS
    assert len(d["au"]) == n and list(d["au"]["frame"]) == list(range(1, n + 1))
    for i in (1, 4, 5, 6, 7, 25, 45):     # what ER-NeRF (AU45) and TalkingGaussian (all of these) read
        a = d["au"][f" AU{i:02d}_r"].to_numpy()
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 5, i
    assert d["au"][" AU45_r"].std() > 0.1 and d["au"][" AU25_r"].std() > 0.1

    # audio: 16 kHz, N frames long; windowed features one per frame
    assert d["sr"] == 16000 and abs(len(d["wav"]) - n * 640) <= 1
    aligned, _ = sf.read(str(subject / "sync/audio.wav"))  # the audio measure_av_sync aligned to the video
    assert np.abs(d["wav"] - aligned[:len(d["wav"])]).max() < 1e-4
    assert d["aud"].ndim == 3 and d["aud"].shape[:2] == (n, 16) and np.isfinite(d["aud"]).all()

    # the 68-pt mouth opening follows mediapipe's (inner lips 61-67, 62-66, 63-65 over the nose-chin height)
    L = d["lms"]
    gap = np.mean([np.linalg.norm(L[:, a] - L[:, b], axis=1) for a, b in ((61, 67), (62, 66), (63, 65))], 0)
    gap68 = gap / np.linalg.norm(L[:, 27] - L[:, 8], axis=1)
    mp = fixed_list_column(LANDMARKS.read(subject / "landmarks/landmarks.parquet"), "landmarks", (478, 3))
    gap_mp = np.linalg.norm(mp[:, 13] - mp[:, 14], axis=1) / np.linalg.norm(mp[:, 10] - mp[:, 152], axis=1)
    r = np.corrcoef(gap68, gap_mp)[0, 1]
    print(f"mouth opening r(68-pt .lms, mediapipe 13-14) = {r:.3f}")
    assert r > 0.9
    assert stats["files"] == {"ori_imgs": 2 * n, "gt_imgs": n, "parsing": n, "torso_imgs": n}


def test_export_subset_and_refusal(subject, tmp_path):
    from pipeline.export import ernerf as export
    from pipeline.core.config import ConfigError, ExportConfig, from_mapping
    from pipeline.core.errors import PipelineError

    out = tmp_path / "sub" / "ernerf"
    stats = export.run(subject, out, cfg=ExportConfig(max_frames=40, chunk=7, workers=1, jpeg_quality=80))
    val = json.loads((out / "transforms_val.json").read_text())["frames"]
    assert stats["n_frames"] == 40 and [f["img_id"] for f in val] == list(range(36, 40))
    assert len(list((out / "torso_imgs").glob("*.png"))) == 40
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # a subject whose meta disagrees with the tracking is refused, naming the file; nothing written
    bad = tmp_path / "bad"
    for part in ("ingest", "crop", "landmarks", "tracking", "parsing", "sync", "audio", "aus"):
        (bad / part).symlink_to(subject / part) if part != "ingest" else shutil.copytree(subject / part, bad / part)
    meta = json.loads((bad / "ingest/meta.json").read_text())
    meta["n_frames"] += 5
    (bad / "ingest/meta.json").write_text(json.dumps(meta))
    with pytest.raises(PipelineError, match="transforms.json"):
        export.run(bad, tmp_path / "bad_out" / "ernerf")
    assert not (tmp_path / "bad_out" / "ernerf").exists()

    with pytest.raises(ConfigError):
        from_mapping(ExportConfig, {"jpeg_qualty": 90}, "export")
    with pytest.raises(ConfigError):
        ExportConfig(jpeg_quality=0)


@pytest.mark.parametrize("name,hidden,target", [("hubert", 1024, "aud_hu.npy"),
                                                ("speech_embedding", 96, "aud_speech_embedding.npy")])
def test_export_audio_arrays(tmp_path, name, hidden, target):
    """aud_hu.npy only for a HuBERT-large encoder ([N, 2, 1024] as ER-NeRF's hubert.py); others keep their name."""
    import soundfile as sf

    from pipeline.export import ernerf as export
    from pipeline.core import media
    from pipeline.core.artifacts import AUDIO_FEATURES, Provenance
    from pipeline.core.layout import SubjectLayout

    n, dim = 30, 5
    rng = np.random.default_rng(0)
    subject = tmp_path / "s"
    (subject / "sync").mkdir(parents=True)
    media.write_wav(subject / "sync/audio.wav", rng.uniform(-0.1, 0.1, 16000 * 2).astype(np.float32), 16000)
    enc = rng.normal(size=(n + 2, 2, hidden)).astype(np.float32)
    AUDIO_FEATURES.write(subject / "audio/self.npz", {
        "features": rng.normal(size=(n + 2, 16, dim)), "frame_idx": np.arange(n + 2), "columns": np.array(["a"] * dim),
        "valid": np.ones((n + 2, 16), bool), "pad_start": np.int32(8), "pad_end": np.int32(8),
        "feat_mean": np.zeros(dim), "feat_std": np.ones(dim), "fps": np.int32(25),
        "encoder": enc, "encoder_name": np.array(name)}, Provenance("x", "y"))
    out = tmp_path / "out"
    out.mkdir()
    written = export.write_audio(out, SubjectLayout(subject), n, 25)
    assert written == ["aud.wav", "aud_ours.npy", target]
    arr = np.load(out / target, allow_pickle=False)
    assert arr.shape == (n, 2, hidden) and np.array_equal(arr, enc[:n])
    assert np.load(out / "aud_ours.npy").shape == (n, 16, dim)
    assert sf.info(str(out / "aud.wav")).frames == n * 640
