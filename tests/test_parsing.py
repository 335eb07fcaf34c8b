"""parse_faces on real clips (label presence and areas, lips vs mouth opening, background plate,
flicker, torso matte) plus the geometry, plate and streaming-npz building blocks on synthetic data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from pipeline.core import media
from pipeline.core.artifacts import (LABEL_BACKGROUND, LABEL_EYES, LABEL_FACE, LABEL_HAIR, LABEL_LIPS, LABEL_MOUTH,
                                     LABEL_NECK, LABEL_TORSO, LANDMARKS, PARSING_LABELS, PARSING_STATS, PARSING_TORSO,
                                     ArtifactError, ArraySpec, Provenance, fixed_list_column, npz_iter_rows, npz_stream)
from pipeline.preprocess.parsing.background import PlateAccumulator
from pipeline.core.errors import PipelineError
from pipeline.preprocess.parsing.parse import load_landmarks, read_background
from pipeline.preprocess.parsing.geometry import (FACE_OVAL, LEFT_EYE, LIPS_INNER, LIPS_OUTER, RIGHT_EYE,
                                                  HysteresisMatte, centred_smoothing, chain_loop, inner_lip_distance)

from conftest import CLIPS

# Every real clip, parsed once through the session cache at the fixture's crop size.
PARSED_CLIPS = CLIPS
PROV = Provenance("0" * 64, "test")


def _same_cycle(a, b) -> bool:
    a, b = list(a), list(b)
    if len(a) != len(b) or set(a) != set(b):
        return False
    k = b.index(a[0])
    rot = b[k:] + b[:k]
    rev = [rot[0], *rot[1:][::-1]]
    return a in (rot, rev)


def test_mesh_loops_are_mediapipes_connection_sets():
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections as C

    def loops(conns):
        return chain_loop((c.start, c.end) for c in conns)

    assert _same_cycle(FACE_OVAL, loops(C.FACE_LANDMARKS_FACE_OVAL)[0])
    assert _same_cycle(LEFT_EYE, loops(C.FACE_LANDMARKS_LEFT_EYE)[0])
    assert _same_cycle(RIGHT_EYE, loops(C.FACE_LANDMARKS_RIGHT_EYE)[0])
    lips = loops(C.FACE_LANDMARKS_LIPS)
    assert len(lips) == 2
    assert sum(_same_cycle(LIPS_OUTER, x) for x in lips) == 1
    assert sum(_same_cycle(LIPS_INNER, x) for x in lips) == 1


def test_npz_stream_roundtrip_and_refusals(tmp_path):
    spec = ArraySpec("t.npz", keys={"a": ("uint8", 3), "frame_idx": ("int32", 1)})
    rng = np.random.default_rng(0)
    a = rng.integers(0, 8, (23, 9, 7), dtype=np.uint8)
    path = tmp_path / "t.npz"
    with npz_stream(path, spec, {"a": a.shape}, {"frame_idx": np.arange(23)}, PROV) as w:
        for s in range(0, 23, 5):
            w.append("a", a[s:s + 5])
    got = spec.read(path)                 # the ordinary validating reader (np.load, no pickles)
    assert np.array_equal(got["a"], a) and got["frame_idx"].dtype == np.int32
    assert np.array_equal(np.concatenate(list(npz_iter_rows(path, "a", chunk=4))), a)
    # too few rows: an error, and nothing under the final name
    bad = tmp_path / "short.npz"
    with pytest.raises(ArtifactError, match="rows written"):
        with npz_stream(bad, spec, {"a": a.shape}, {"frame_idx": np.arange(23)}, PROV) as w:
            w.append("a", a[:10])
    assert not bad.exists() and not list(tmp_path.glob(".short*"))
    with pytest.raises(ArtifactError, match="chunk shape"):
        with npz_stream(bad, spec, {"a": a.shape}, {"frame_idx": np.arange(23)}, PROV) as w:
            w.append("a", a[:5, :8])
    assert not bad.exists()


def test_plate_is_median_of_background_and_inpaints_holes():
    rng = np.random.default_rng(1)
    h = w = 48
    yy, xx = np.mgrid[:h, :w]
    bg = np.stack([xx * 5, yy * 5, 128 + 0 * xx], -1).astype(np.uint8)
    plate = PlateAccumulator(60, h, w, samples=30, min_count=3, margin_px=1)
    for i in range(60):
        frame = np.clip(bg + rng.normal(0, 3, bg.shape), 0, 255).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        x0 = 4 + (i % 20)                          # a moving "person" ...
        lab[10:40, x0:x0 + 12] = LABEL_FACE
        lab[30:, 20:28] = LABEL_TORSO              # ... and a patch that is never background
        frame[lab > 0] = 255
        if plate.wants(i):
            plate.add(i, frame, lab)
    out, count = plate.finish()
    assert count[35, 24] == 0 and count[5, 5] == len(plate.indices)
    seen = count >= 3
    assert np.abs(out.astype(int) - bg)[seen].mean() < 2.0
    hole = ~seen
    assert hole.any() and np.abs(out.astype(int) - bg)[hole].mean() < 25.0   # inpainted, not white/black
    assert plate.sample_error(out) < 4.0


def test_landmark_rows_without_a_face_take_the_nearest_mesh(tmp_path):
    n = 7
    pts = np.arange(n, dtype=np.float32)[:, None, None] + np.zeros((n, 478, 3), np.float32)
    pts[[0, 3, 4]] = np.nan                           # NaN rows, as the landmark stage leaves long gaps
    path = tmp_path / "landmarks.parquet"
    LANDMARKS.write(path, {"frame_idx": np.arange(n, dtype=np.int32), "detected": ~np.isnan(pts[:, 0, 0]),
                           "interpolated": np.zeros(n, bool), "landmarks": pts,
                           "blendshapes": np.zeros((n, 52)), "pose": np.zeros((n, 16))}, PROV)
    got, missing = load_landmarks(path)
    assert missing.tolist() == [True, False, False, True, True, False, False]
    assert got[:, 0, 0].tolist() == [1, 1, 2, 2, 5, 5, 6]
    pts[:] = np.nan
    LANDMARKS.write(path, {"frame_idx": np.arange(n, dtype=np.int32), "detected": np.zeros(n, bool),
                           "interpolated": np.zeros(n, bool), "landmarks": pts,
                           "blendshapes": np.zeros((n, 52)), "pose": np.zeros((n, 16))}, PROV)
    with pytest.raises(PipelineError, match="no frame has landmarks"):
        load_landmarks(path)


def test_hysteresis_matte_damps_boundary_noise():
    """The default matte (centred Gaussian over time, then the narrow hysteresis band) on noisy confidences."""
    rng = np.random.default_rng(2)
    truth = np.zeros((32, 32), bool)
    truth[:, :16] = True
    confs = [np.clip(np.where(truth, 0.8, 0.2) + rng.normal(0, 0.25, truth.shape), 0, 1) for _ in range(50)]
    matte, plain_flips, matte_flips = HysteresisMatte(0.45, 0.55), 0, 0
    prev_plain = prev_matte = None
    for (conf, smoothed) in zip(confs, centred_smoothing(((c, c) for c in confs), 1.0)):
        mask = matte.update(smoothed[1])
        plain = conf > 0.5
        if prev_plain is not None:
            plain_flips += np.count_nonzero(plain != prev_plain)
            matte_flips += np.count_nonzero(mask != prev_matte)
        prev_plain, prev_matte = plain, mask.copy()
    assert matte_flips < 0.25 * plain_flips
    assert (mask == truth).mean() > 0.95


def test_centred_smoothing_keeps_time_with_a_moving_edge():
    """An edge moving one pixel a frame: the centred smoothing's 0.5 crossing stays at the frame's own edge (a
    causal EMA of weight 0.5 put it a pixel behind); every frame comes out once, in order, ends included."""
    n, w = 12, 40
    confs = [(np.arange(w) < 10 + t).astype(np.float32)[None] for t in range(n)]       # person left of 10 + t
    out = list(centred_smoothing(((t, c) for t, c in enumerate(confs)), 1.0))
    assert [t for t, _ in out] == list(range(n))
    for t, c in out[2:-2]:                                     # away from the ends: the edge is where it is
        assert int((c[0] > 0.5).sum()) == 10 + t
    ema = confs[0]
    for c in confs[1:6]:
        ema = 0.5 * c + 0.5 * ema
    assert int((ema[0] > 0.5).sum()) == 10 + 5 - 1               # what the old matte did: one frame behind
    assert [t for t, _ in centred_smoothing(((t, c) for t, c in enumerate(confs[:2])), 1.0)] == [0, 1]
    assert all(a is b for (_, a), b in zip(centred_smoothing(((t, c) for t, c in enumerate(confs)), 0.0), confs))


@pytest.mark.parametrize("clip", PARSED_CLIPS)
def test_parsing_real_clip(processed, clip):
    stats = processed.parsing(clip)
    d = processed.dir(clip)
    labels = PARSING_LABELS.read(d / "parsing" / "labels.npz")["labels"]
    pts, _ = load_landmarks(d / "landmarks" / "landmarks.parquet")
    n, size = len(pts), labels.shape[1]
    assert labels.shape == (n, size, size) and labels.max() <= LABEL_EYES

    # every frame shows face, lips, neck and background; face skin 10-60 % of the crop
    area = np.stack([(labels == v).reshape(n, -1).mean(1) for v in range(8)], 1)   # [N, 8]
    for v in (LABEL_FACE, LABEL_LIPS, LABEL_NECK, LABEL_BACKGROUND):
        assert (area[:, v] > 0).all(), (clip, v, np.flatnonzero(area[:, v] == 0)[:10])
    face = area[:, LABEL_FACE]
    assert 0.10 <= face.min() and face.max() <= 0.60, (clip, face.min(), face.max())
    assert (area[:, LABEL_EYES] > 0).mean() > 0.8 and (area[:, LABEL_HAIR] > 0).mean() > 0.8

    # lips + mouth interior grow with the inner-lip distance of the (raw) landmarks
    raw = fixed_list_column(LANDMARKS.read(d / "landmarks" / "landmarks.parquet"), "landmarks", (478, 3))
    rho = spearmanr(area[:, LABEL_LIPS] + area[:, LABEL_MOUTH], inner_lip_distance(raw)).statistic
    assert rho >= 0.5, (clip, rho)

    # flicker: share of pixels changing label between consecutive frames
    flicker = (labels[1:] != labels[:-1]).reshape(n - 1, -1).mean(1)
    assert flicker.mean() <= 0.03, (clip, flicker.mean())
    assert stats["flicker_mean"] == pytest.approx(flicker.mean(), abs=1e-4)

    # background plate: close to every frame's background pixels
    plate = read_background(d / "parsing" / "background.png").astype(np.int16)
    assert plate.shape == (size, size, 3)
    err_sum, err_n, i = 0.0, 0, 0
    on_edges = np.zeros(3)          # image edge strength along the head outline of labels t-1, t, t+1 on frame t
    ring = np.ones((3, 3), np.uint8)
    for chunk in media.iter_frames(d / "crop" / "video.mp4", size, size, chunk=64):
        chunk = chunk[: n - i]
        bgm = labels[i:i + len(chunk)] == LABEL_BACKGROUND
        err = np.abs(chunk.astype(np.int16) - plate).mean(-1)
        err_sum += float(err[bgm].sum())
        err_n += int(bgm.sum())
        for j, frame in enumerate(chunk):
            t = i + j
            if 0 < t < n - 1:
                g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
                e = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
                for k, lab in enumerate(labels[t - 1:t + 2]):
                    m = (lab >= LABEL_FACE).astype(np.uint8)
                    on_edges[k] += e[(cv2.dilate(m, ring) - cv2.erode(m, ring)).astype(bool)].mean()
        i += len(chunk)
    mae = err_sum / err_n
    assert mae <= 6.0, (clip, mae)
    # the labels keep time with the video: a frame's own head outline lies on its edges at least as well as its
    # neighbours' (the causal EMA matte before 2026-12-03 trailed: the next frame's outline fitted better)
    assert on_edges[1] >= on_edges[[0, 2]].max(), (clip, on_edges / (n - 2))

    # torso matte: head removed, torso+neck covered
    torso = PARSING_TORSO.read(d / "parsing" / "torso.npz")["alpha"]
    assert torso.shape == labels.shape
    head = labels >= LABEL_FACE
    body = (labels == LABEL_TORSO) | (labels == LABEL_NECK)
    assert torso[head].max() == 0 and torso[labels == LABEL_BACKGROUND].max() == 0
    assert (torso[body] >= 128).mean() > 0.95

    assert PARSING_STATS.read(d / "parsing" / "stats.json")["n_frames"] == n
    assert (d / "parsing" / "contact_sheet.png").stat().st_size > 1000
    print(f"\n{clip}: {n} frames {size}px, face {area[:, LABEL_FACE].mean():.3f}, lips~opening rho {rho:.2f}, "
          f"flicker mean {flicker.mean():.4f} p95 {np.percentile(flicker, 95):.4f} max {flicker.max():.4f}, "
          f"plate MAE {mae:.2f}/255, {stats['frames_per_sec']:.1f} frames/s")


def test_cli_refuses_mismatched_landmarks(processed, tmp_path, capsys):
    from pipeline.preprocess.parsing.parse import main

    clip = "talk_mimictalk_trump_en"
    processed.landmarks(clip)
    d = processed.dir(clip)
    table = LANDMARKS.read(d / "landmarks" / "landmarks.parquet").slice(0, 50)
    short = tmp_path / "landmarks.parquet"
    LANDMARKS.write(short, table, PROV)
    out = tmp_path / "parsing"
    with pytest.raises(SystemExit) as exc:
        main(["--crop-video", str(d / "crop" / "video.mp4"), "--landmarks", str(short), "--outdir", str(out)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(short) in err and "50 landmark rows" in err
    assert not out.exists() or not any(out.iterdir())
