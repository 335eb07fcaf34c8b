"""track_face: recovery of a known synthetic face/camera/pose sequence, and real clips (error, jitter)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.preprocess import mediapipe_models as mp_models
from pipeline.preprocess.tracking import fit as tf
from pipeline.core.artifacts import (CANONICAL_LANDMARKS, FACE_MODEL, LANDMARKS, N_EXPR, N_LANDMARKS, TRACKING_METRICS,
                                     TRACKS, TRANSFORMS, Provenance, fixed_list_column)
from pipeline.core.config import TrackingConfig
from pipeline.core.metrics import RIGID_IDS
from pipeline.preprocess.tracking.track import TrackingError, run

from conftest import CLIPS

IRIS_STAND_INS = [33, 133, 159, 145, 153, 263, 362, 386, 374, 380]  # synthetic "iris" points near the eyes


def _mesh() -> tf.CanonicalMesh:
    task = mp_models.locate(mp_models.FACE_LANDMARKER)
    return tf.load_canonical_mesh(mp_models.task_member(task, tf.GEOMETRY_ENTRY))


def test_canonical_mesh_from_task_bundle():
    mesh = _mesh()
    assert mesh.vertices.shape == (468, 3) and mesh.triangles.max() < 468 and len(mesh.triangles) > 800
    width = np.ptp(mesh.vertices[:, 0])
    assert 12 < width < 20, f"canonical face width {width} cm is not metric"
    assert len(mesh.procrustes_ids) == len(mesh.procrustes_w) > 10 and np.all(mesh.procrustes_w >= 0)


def test_rodrigues_matches_scipy():
    from scipy.spatial.transform import Rotation

    om = np.random.default_rng(0).normal(0, 0.6, (64, 3))
    om[0] = 0
    got = tf.rodrigues(torch.from_numpy(om)).numpy()
    np.testing.assert_allclose(got, Rotation.from_rotvec(om).as_matrix(), atol=1e-9)


def synthesize(tmp_path, n=300, size=512, focal=1400.0, noise_px=0.5, seed=0, jaw_cm=0.0, skull=False, squeeze=0.0):
    """Observations from a known face model, focal and smooth pose/expression sequence (+ noise).

    The expressions are smooth local motions without a whole-face similarity part (the gauge of ``pose_points:
    all``), or with ``skull`` local motions of the mouth, jaw, cheeks and brows that leave the rigid points still
    (the gauge of ``rigid``); ``jaw_cm`` adds a jaw that opens and closes (points below the
    mouth move down, up to that many cm at the chin); ``squeeze`` makes the observed mesh contract vertically by that
    fraction in 5-frame "blinks" every 1.5 s, as mediapipe's does (BENCHMARKS.md, "Session 13"), the head itself
    steady."""
    rng = np.random.default_rng(seed)
    C = _mesh().vertices
    C = np.concatenate([C, C[IRIS_STAND_INS] + [0, 0, 0.3]])                 # 478 points
    A = np.eye(3) + np.diag(rng.normal(0, 0.04, 3))                          # identity: a stretch + noise
    ident = C @ A - C + rng.normal(0, 0.03, C.shape)
    t = np.arange(n) / 25.0
    far = np.linalg.norm(C[:468, None] - C[list(RIGID_IDS)][None], axis=-1).min(1) > 3.0   # mouth, jaw, cheeks, brows
    centres = C[rng.choice(np.flatnonzero(far), 6, replace=False)] if skull else C[rng.choice(468, 6, replace=False)]
    basis = np.stack([np.exp(-((C - c) ** 2).sum(1) / (2 * 2.5 ** 2))[:, None] * rng.normal(0, 0.4, 3)
                      for c in centres], -1)                                  # [K, 3, 6] smooth local motions
    # expression = what the gauge does not call head motion (that part would be pose)
    flat = tf.without_head_motion(basis.reshape(-1, 6).T, C + ident, np.asarray(RIGID_IDS) if skull else None)
    basis = flat.T.reshape(basis.shape)
    coeffs = np.stack([np.sin(2 * np.pi * t / rng.uniform(0.5, 3) + rng.uniform(0, 6)) * 1.4 for _ in range(6)], 1)
    shapes = C + ident + np.einsum("kde,ne->nkd", basis, coeffs)
    y_mouth, y_chin = C[13, 1], C[152, 1]                                     # upper-lip middle, chin (y up)
    below = np.clip((y_mouth - C[:, 1]) / (y_mouth - y_chin), 0, 1)          # 0 above the mouth, 1 at the chin
    jaw = np.clip(np.sin(2 * np.pi * t / 0.8), 0, None)                     # opens 2.5 times a second
    shapes[..., 1] -= jaw_cm * jaw[:, None] * below
    euler = np.radians(np.stack([15 * np.sin(2 * np.pi * t / 4), 8 * np.sin(2 * np.pi * t / 3 + 1),
                                 4 * np.sin(2 * np.pi * t / 5)], 1))
    from scipy.spatial.transform import Rotation

    R = Rotation.from_euler("YXZ", euler).as_matrix()
    omega = Rotation.from_matrix(R).as_rotvec()
    uv0 = np.stack([size / 2 + 12 * np.sin(2 * np.pi * t / 6), size * 0.45 + 6 * np.cos(2 * np.pi * t / 7)], 1)
    log_s = np.log(16.0 * size / 512) + 0.05 * np.sin(2 * np.pi * t / 8)
    T = torch.from_numpy
    uv = tf.project(T(shapes), T(omega), T(uv0), T(log_s), focal, size / 2, size / 2).numpy()
    blink = np.interp(np.arange(n) % 37, [0, 2, 4], [0, 1, 0], right=0.0)      # 5 frames every 1.5 s
    centre_y = uv[..., 1].mean(1, keepdims=True)
    uv[..., 1] = centre_y + (uv[..., 1] - centre_y) * (1 - squeeze * blink[:, None])
    t_cv = tf.camera_translation(uv0, log_s, focal, size / 2, size / 2)
    Xc = np.einsum("nij,nkj->nki", tf.FLIP @ R, shapes) + t_cv[:, None]
    z_px = (Xc[..., 2] - t_cv[:, 2:3]) * np.exp(log_s)[:, None]             # mediapipe-like relative depth
    obs = np.concatenate([uv + rng.normal(0, noise_px, uv.shape), (z_px + rng.normal(0, noise_px, z_px.shape))[..., None]], -1)
    path = tmp_path / "landmarks.parquet"
    LANDMARKS.write(path, {"frame_idx": np.arange(n, dtype=np.int32), "detected": np.ones(n, bool),
                           "interpolated": np.zeros(n, bool), "landmarks": obs.reshape(n, -1),
                           "blendshapes": np.zeros((n, 52)), "pose": np.tile(np.eye(4).reshape(1, 16), (n, 1))},
                    Provenance("synthetic", "synthetic"))
    return path, {"R": R, "focal": focal, "shapes": shapes, "t_cv": t_cv, "jaw": jaw, "blink": blink}


def recovery_errors(tmp_path, seed: int = 0) -> dict:
    """Track a synthetic face (``synthesize(seed=seed)``) and measure what the fit recovered against the truth:
    rotation error (max, degrees), focal error (fraction), pose-free shape error (mean, mm), reprojection (px)."""
    # the truth's expressions follow the tracker's convention of what is pose (its gauge, tracking.pose_points)
    path, truth = synthesize(tmp_path, seed=seed, skull=TrackingConfig().pose_points == "rigid")
    m = run(path, tmp_path / "tracking", TrackingConfig(device="cpu"), size=512)
    tracks = TRACKS.read_pandas(tmp_path / "tracking" / "tracks.parquet")
    R = tf.rodrigues(torch.from_numpy(np.stack(tracks["rotvec"].to_numpy()).astype(np.float64))).numpy()
    rel = np.einsum("nij,nkj->nik", R, truth["R"])                          # R_fit R_true^T
    ang = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    focal_err = abs(m["focal_px"] / truth["focal"] - 1)
    canon = CANONICAL_LANDMARKS.read(tmp_path / "tracking" / "canonical.npz")["landmarks"]
    # expression reconstruction: pose-free shapes vs the truth, after removing one global similarity
    # (scale and a tiny gauge rotation are shared with the pose and are not expression)
    s, Rg, tg = tf.umeyama(canon.mean(0).astype(np.float64), truth["shapes"].mean(0)[None], np.ones(N_LANDMARKS))
    aligned = s[0] * canon @ Rg[0].T + tg[0]
    expr_err_mm = 10 * np.linalg.norm(aligned - truth["shapes"], axis=-1)
    print(f"\nrecovery: rotation error mean {ang.mean():.3f} max {ang.max():.3f} deg; focal {m['focal_px']:.1f} "
          f"vs {truth['focal']:.0f} px ({100 * focal_err:.2f} %); reprojection {m['reproj_mean_px']:.3f} px; "
          f"pose-free shape error mean {expr_err_mm.mean():.3f} mm, p95 {np.percentile(expr_err_mm, 95):.3f} mm")
    return {"rotation_max_deg": float(ang.max()), "focal_error": float(focal_err),
            "shape_error_mean_mm": float(expr_err_mm.mean()), "reproj_mean_px": float(m["reproj_mean_px"])}


def test_recovers_known_face_camera_and_poses(tmp_path):
    e = recovery_errors(tmp_path)
    # measured over the synthetic faces of seeds 0-3 with the default pose_points "rigid" (session 12): rotation max
    # 0.51-1.25 deg (poses swing by up to 15 deg), focal 3.4-7.7 % (weakly observable; the initial guess is 27 %
    # off), shape 0.23-0.46 mm, reprojection 0.62-0.63 px (noise is 0.5 px per axis: ~0.63 px expected). With
    # "all" on its own convention's faces (bench/test_margins.py, seeds 0-9 x threads 1, 2): 0.59-1.81 deg,
    # 0.7-14.5 %, 0.22-0.61 mm, 0.61-0.63 px. Each gauge on the other's faces: 2.0-4.9 deg, 1.7-3.8 mm.
    assert e["rotation_max_deg"] < 3.0, e
    assert e["focal_error"] < 0.2, e
    assert e["shape_error_mean_mm"] < 1.0, e
    assert e["reproj_mean_px"] < 0.8, e


@pytest.mark.parametrize("pose_points", ["rigid", "all"])
def test_an_opening_jaw_does_not_move_the_head(tmp_path, pose_points):
    """A synthetic face whose expressions leave the skull still and whose jaw opens 1 cm 2.5 times a second. With
    ``pose_points: rigid`` (the default) the tracked depth does not follow the jaw; with the whole face's similarity
    as the gauge (``all``) the taller face reads as a head coming closer (on talk_dfrf_cnn_en: depth r -0.68 with
    the jaw drop). Both are asserted: the test shows what each setting does, the gauge alone (no depth smoothing,
    which would also hide much of a coupling this fast)."""
    path, truth = synthesize(tmp_path, n=200, seed=1, jaw_cm=1.0, skull=True)
    run(path, tmp_path / "tracking", TrackingConfig(device="cpu", pose_points=pose_points, depth_sigma=0.0), size=512)
    tracks = TRACKS.read_pandas(tmp_path / "tracking" / "tracks.parquet")
    tz_err = tracks["tz"].to_numpy() / truth["t_cv"][:, 2]                 # depth relative to the truth (focal free)
    tz_err = tz_err / tz_err.mean() - 1
    r = float(np.corrcoef(tz_err, truth["jaw"])[0, 1])
    slope = float(np.polyfit(truth["jaw"], tz_err, 1)[0])                  # relative depth change of a full opening
    print(f"\n{pose_points}: relative depth error vs jaw opening r {r:+.2f}, {100 * slope:+.2f} % at full opening")
    if pose_points == "rigid":
        assert abs(slope) < 0.003, (r, slope)      # measured -0.02 % (seed 1)
    else:
        assert abs(slope) > 0.008, (r, slope)      # measured -1.50 %


def test_a_blinking_mesh_does_not_move_the_head(tmp_path):
    """mediapipe's mesh contracts vertically in a blink; the fit reads the smaller face as a head moving away
    (talk_dfrf_cnn_en: the depth's fast part follows AU45, r 0.57). ``tracking.depth_sigma`` smooths the depth over
    time: a synthetic face whose observed mesh contracts by 2 % in 5-frame blinks, the head itself steady."""
    path, truth = synthesize(tmp_path, n=200, seed=2, skull=True, squeeze=0.02)
    blips = {}
    for sigma in (0.0, TrackingConfig().depth_sigma):
        run(path, tmp_path / f"tracking{sigma}", TrackingConfig(device="cpu", depth_sigma=sigma), size=512)
        tracks = TRACKS.read_pandas(tmp_path / f"tracking{sigma}" / "tracks.parquet")
        err = tracks["tz"].to_numpy() / truth["t_cv"][:, 2]
        err = err / np.median(err) - 1                                     # relative depth error (focal free)
        blips[sigma] = float(np.polyfit(truth["blink"], err, 1)[0])         # depth change at a full blink
        print(f"\ndepth_sigma {sigma}: relative depth error at a full blink {100 * blips[sigma]:+.2f} %, "
              f"sd {100 * err.std():.2f} %")
        assert err.std() < 0.01, err.std()          # the steady head's slow depth swing (5 %) is followed
    assert blips[0.0] > 0.003, blips                # measured +0.48 %: unsmoothed, the blink reads as moving away
    assert abs(blips[TrackingConfig().depth_sigma]) < 0.4 * blips[0.0], blips    # measured +0.07 %


def test_refuses_unusable_landmarks(tmp_path):
    path, _ = synthesize(tmp_path, n=20)
    table = LANDMARKS.read(path)
    obs = np.full((20, N_LANDMARKS * 3), np.nan, np.float32)
    bad = tmp_path / "bad.parquet"
    LANDMARKS.write(bad, {"frame_idx": np.arange(20, dtype=np.int32), "detected": np.zeros(20, bool),
                          "interpolated": np.zeros(20, bool), "landmarks": obs,
                          "blendshapes": fixed_list_column(table, "blendshapes", (52,)),
                          "pose": fixed_list_column(table, "pose", (16,))}, Provenance("x", "x"))
    with pytest.raises(TrackingError, match="usable frames"):
        run(bad, tmp_path / "out", size=512)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(TrackingError, match="crop size unknown"):
        run(path, tmp_path / "out")


@pytest.mark.parametrize("clip", CLIPS)
def test_real_clip(processed, clip):
    m = processed.tracking(clip)
    out = processed.dir(clip) / "tracking"
    size = m["w"]
    # the brief's 1.5 px at 512², at the test crop size: the residual shrinks less than the crop (landmark noise
    # does), 0.54x from 512² to 256² on videoretalking and katiehill in both running modes (BENCHMARKS.md, track_face)
    assert size in (256, 512)
    limit = 1.5 if size == 512 else 1.5 * 0.54
    print(f"\n{clip}: {m['n_frames']} frames at {size} px, focal {m['focal_px']:.0f} px, reprojection mean "
          f"{m['reproj_mean_px']:.3f} / p95 {m['reproj_p95_px']:.3f} px (limit {limit:.2f}); jitter rot "
          f"{m['jitter_rot_deg_init']:.3f} -> {m['jitter_rot_deg']:.3f} deg, trans {m['jitter_trans_rel_init']:.5f} -> "
          f"{m['jitter_trans_rel']:.5f} face widths; {m['fit_seconds']:.1f} s")
    assert m["reproj_mean_px"] <= limit
    assert m["jitter_rot_deg"] < m["jitter_rot_deg_init"] and m["jitter_trans_rel"] < m["jitter_trans_rel_init"]
    # the contracts round-trip and agree with each other
    tracks = TRACKS.read_pandas(out / "tracks.parquet")
    model = FACE_MODEL.read(out / "face_model.npz")
    canon = CANONICAL_LANDMARKS.read(out / "canonical.npz")
    tr = TRANSFORMS.read(out / "transforms.json")
    assert TRACKING_METRICS.read(out / "metrics.json")["n_frames"] == len(tracks) == len(canon["landmarks"])
    assert model["basis"].shape == (N_LANDMARKS, 3, N_EXPR) and np.isfinite(canon["landmarks"]).all()
    assert len(tr["frames"]) == len(tracks) and tr["w"] == size and tr["split"]["test"][1] == len(tracks)
    # camera-to-head (OpenGL) must reproject the canonical landmarks onto the detected ones
    lm = fixed_list_column(LANDMARKS.read(processed.dir(clip) / "landmarks" / "landmarks.parquet"),
                           "landmarks", (N_LANDMARKS, 3))
    i = len(tracks) // 2
    c2h = np.array(tr["frames"][i]["transform_matrix"])
    h2c = np.linalg.inv(c2h)
    X = canon["landmarks"][i] @ h2c[:3, :3].T + h2c[:3, 3]                   # OpenGL camera: looks down -z
    assert (X[:, 2] < 0).all()
    uv = np.stack([tr["cx"] + tr["focal_px"] * X[:, 0] / -X[:, 2], tr["cy"] - tr["focal_px"] * X[:, 1] / -X[:, 2]], 1)
    assert np.linalg.norm(uv - lm[i, :, :2], axis=1).mean() < 3 * limit
    assert (out / "overlay.png").stat().st_size > 10_000 and (out / "pose.png").stat().st_size > 10_000
    json.dumps(m)
