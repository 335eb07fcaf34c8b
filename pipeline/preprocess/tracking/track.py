"""Rule ``track_face``: per-subject linear face model, head pose, one focal length, expressions.

From ``landmarks/landmarks.parquet`` (478 mediapipe points per frame, crop px) it fits

* a linear face model ``mean + identity + basis @ e``: mean = mediapipe's canonical face mesh
  (metric, read from the FaceLandmarker ``.task`` bundle), identity = the clip's pose-free mean
  minus it, basis = PCA (``N_EXPR`` components) of the pose-free landmarks;
* per frame a rotation, a translation and ``N_EXPR`` expression coefficients, with one shared focal
  length (principal point at the crop centre), by full-batch L-BFGS on the Huber 2D reprojection
  error plus temporal smoothness of pose and expression (``pipeline.preprocess.tracking.fit``), initialised in
  closed form by a per-frame Umeyama similarity on mediapipe's 3D landmarks.

Outputs (``tracking/``, contracts in ``pipeline/core/artifacts/``): tracks.parquet, face_model.npz,
canonical.npz (pose-free fitted landmarks, cm), transforms.json (camera-to-head, OpenGL), metrics.json
(reprojection error, jitter of the fit and of the closed-form init), overlay.png and pose.png.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import (CANONICAL_LANDMARKS, CROP_META, FACE_MODEL, INGEST_META, LANDMARKS, N_EXPR,
                                     N_LANDMARKS, TRACKING_METRICS, TRACKS, TRANSFORMS, Provenance, atomic_output,
                                     config_hash, fixed_list_column, read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import TrackingConfig, from_mapping
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.layout import TrackingFiles
from pipeline.core.metrics import RIGID_IDS
from pipeline.core.progress import progress
from pipeline.preprocess import mediapipe_models as mp_models
from pipeline.preprocess.tracking import fit as tf

log = logging.getLogger("pipeline.preprocess.tracking.track")
GL_CONVENTION = "camera_to_head, OpenGL camera (x right, y up, looks down -z), head space of face_model.npz, cm"


class TrackingError(PipelineError):
    pass


def read_observations(path: Path, cfg: TrackingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frame_idx [N], landmarks [N, 478, 3] (gaps filled by linear interpolation), data weights [N]."""
    table = LANDMARKS.read(path)
    frame_idx = table.column("frame_idx").to_numpy().astype(np.int32)
    if len(frame_idx) < 3 or not np.array_equal(frame_idx, np.arange(len(frame_idx))):
        raise TrackingError(path, "frame_idx must be 0..N-1 with N >= 3")
    obs = fixed_list_column(table, "landmarks", (N_LANDMARKS, 3)).astype(np.float64)
    detected = table.column("detected").to_numpy(zero_copy_only=False)
    interp = table.column("interpolated").to_numpy(zero_copy_only=False)
    finite = np.isfinite(obs).all(axis=(1, 2))
    weight = np.where(detected, 1.0, np.where(interp, cfg.interpolated_weight, 0.0)) * finite
    if (weight > 0).sum() < 3:
        raise TrackingError(path, f"only {(weight > 0).sum()} usable frames")
    bad = np.flatnonzero(weight == 0)
    if len(bad):  # frames without landmarks follow their neighbours (init only; they carry no data weight)
        good = np.flatnonzero(weight > 0)
        flat = obs.reshape(len(obs), -1)
        for j in range(flat.shape[1]):
            flat[bad, j] = np.interp(bad, good, flat[good, j])
        log.warning("%s: %d frames without landmarks are tracked by smoothness alone: %s", path, len(bad),
                    bad[:20].tolist())
    return frame_idx, obs, weight


def jitter(omega: np.ndarray, trans: np.ndarray, face_size: float) -> tuple[float, float]:
    """RMS of the second temporal difference: rotation (deg, axis-angle) and translation / face size."""
    d2 = lambda x: x[2:] - 2 * x[1:-1] + x[:-2]  # noqa: E731
    rot = float(np.sqrt((np.degrees(d2(omega)) ** 2).sum(1).mean()))
    tr = float(np.sqrt((d2(trans) ** 2).sum(1).mean()) / face_size)
    return rot, tr


def camera_to_head_gl(omega: np.ndarray, t_cv: np.ndarray) -> np.ndarray:
    """[N, 4, 4] camera-to-head in OpenGL convention: inverse of X_gl = R X_head + F t_cv."""
    import torch

    R = tf.rodrigues(torch.from_numpy(omega)).numpy()
    t_gl = t_cv * np.array([1.0, -1.0, -1.0])
    M = np.zeros((len(omega), 4, 4))
    M[:, :3, :3] = R.transpose(0, 2, 1)
    M[:, :3, 3] = -np.einsum("nji,nj->ni", R, t_gl)
    M[:, 3, 3] = 1.0
    return M


def steady_depth(res: tf.FitResult, model: tf.LinearModel, obs2: np.ndarray, cx: float, cy: float,
                 sigma: float) -> tf.FitResult:
    """``res`` with its scale (the head's distance to the camera) smoothed over time by a Gaussian of ``sigma``
    frames, the image position of the head's origin kept, and the reprojection error measured again.

    mediapipe's mesh contracts and stretches with expressions: on talk_dfrf_cnn_en the forehead drops ~2 px towards
    the nose bridge in a blink, and the fast part of the fitted scale is predicted by the 52 blendshapes with r 0.87
    on the test split. The fit explains that as the head moving away and back, and a head rendered from such a pose
    puts its hair a pixel or two off (BENCHMARKS.md, "Session 13"). A head's real distance changes slowly.
    """
    import dataclasses

    from scipy.ndimage import gaussian_filter1d

    if sigma <= 0:
        return res
    res = dataclasses.replace(res, log_s=gaussian_filter1d(res.log_s, sigma, mode="nearest"))
    err = np.linalg.norm(tf.projected(model.mean, res, cx, cy) - obs2, axis=-1).mean(-1)
    return dataclasses.replace(res, reproj_px=err)


def image_size(size: int | None, crop_meta: Path | str | None, landmarks: Path) -> int:
    if size:
        return int(size)
    if crop_meta and Path(crop_meta).is_file():
        return int(CROP_META.read(crop_meta)["size"])
    raise TrackingError(crop_meta or landmarks, "crop size unknown: no crop/crop.json there and no size given")


def run(landmarks: Path | str, outdir: Path | str, cfg: TrackingConfig = TrackingConfig(), *,
        crop_meta: Path | str | None = None, meta: Path | str | None = None, video: Path | str | None = None,
        size: int | None = None, threads: int = 1) -> dict:
    """Track ``landmarks`` (landmarks.parquet) into ``outdir``; returns the metrics dict.

    ``size``: crop width = height in px (else read from ``crop_meta``); ``meta``: ingest/meta.json
    for the train/test split; ``video``: crop/video.mp4 for the overlay contact sheet (optional).
    """
    import torch
    from threadpoolctl import threadpool_limits

    from pipeline.preprocess.tracking import plots as tracking_plots

    landmarks, outdir = Path(landmarks), Path(outdir)
    frame_idx, obs, weight = read_observations(landmarks, cfg)
    W = H = image_size(size, crop_meta, landmarks)
    cx, cy = W / 2.0, H / 2.0
    N = len(frame_idx)
    split = INGEST_META.read(meta)["split"] if meta else {"train": [0, N], "test": [N, N]}
    task = mp_models.locate(mp_models.FACE_LANDMARKER, cfg.model_path)
    mesh = tf.load_canonical_mesh(mp_models.task_member(task, tf.GEOMETRY_ENTRY))
    device = str(resolve_device(cfg.device, "tracking.device"))
    wts = tf.FitWeights(cfg.huber_px * W / 512.0, cfg.smooth_rot, cfg.smooth_trans, cfg.smooth_expr,
                        cfg.expr_prior, cfg.identity_prior, focal_prior=cfg.focal_prior)

    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with threadpool_limits(max(1, threads)), progress(total=cfg.iters, desc="track_face L-BFGS", unit="eval",
                                                          mininterval=5, disable=None) as bar:
            init = tf.closed_form_init(obs, mesh)
            model = tf.build_model(init, mesh, weight, N_EXPR,
                                   np.asarray(RIGID_IDS) if cfg.pose_points == "rigid" else None)
            res = tf.fit(obs[..., :2], weight, model, init, cfg.focal_init * W, cx, cy, wts, iters=cfg.iters,
                         fit_focal=cfg.fit_focal, refine_basis=cfg.refine_basis, device=device, progress=bar)
    finally:
        torch.set_num_threads(prev_threads)
    res = steady_depth(res, model, obs[..., :2], cx, cy, cfg.depth_sigma)
    seconds = time.perf_counter() - t0

    f = res.focal_px
    t_cv = tf.camera_translation(res.uv0, res.log_s, f, cx, cy)
    R = tf.rodrigues(torch.from_numpy(res.omega)).numpy()
    euler = tf.euler_yxz(R)
    face_size = float(np.ptp(model.mean[:tf.N_MESH, 0]))  # face width, cm
    t_init = tf.camera_translation(init.uv0, init.log_s, f, cx, cy)
    j_rot, j_tr = jitter(res.omega, t_cv, face_size)
    j_rot0, j_tr0 = jitter(init.omega, t_init, face_size)
    used = weight > 0
    metrics = {
        "n_frames": N, "focal_px": float(f), "cx": cx, "cy": cy, "w": W, "h": H,
        "reproj_mean_px": float(res.reproj_px[used].mean()),
        "reproj_p95_px": float(np.percentile(res.reproj_px[used], 95)),
        "reproj_max_px": float(res.reproj_px[used].max()),
        "jitter_rot_deg": j_rot, "jitter_trans_rel": j_tr, "jitter_rot_deg_init": j_rot0, "jitter_trans_rel_init": j_tr0,
        "face_width_cm": face_size, "fit_seconds": round(seconds, 2), "device": device, "loss": res.loss,
        "frames_without_landmarks": int((~used).sum()),
    }
    canon = tf.shapes(model.mean, res.identity, res.basis, res.coeffs).astype(np.float32)
    c2h = camera_to_head_gl(res.omega, t_cv)
    try:
        prov = read_provenance(landmarks)
        prov = Provenance(prov.source_sha256, config_hash(cfg))
    except PipelineError:
        prov = Provenance("unknown", config_hash(cfg))

    files = TrackingFiles(outdir)
    with ExitStack() as stack:  # all outputs appear together or not at all
        tmp = {name: stack.enter_context(atomic_output(getattr(files, name))) for name in
               ("tracks", "face_model", "canonical", "transforms", "metrics", "overlay", "pose")}
        TRACKS.write(tmp["tracks"], {
            "frame_idx": frame_idx, "rotvec": res.omega, "yaw_rad": euler[:, 0], "pitch_rad": euler[:, 1],
            "roll_rad": euler[:, 2], "tx": t_cv[:, 0], "ty": t_cv[:, 1], "tz": t_cv[:, 2], "expression": res.coeffs,
            "reproj_err_px": res.reproj_px, "weight": weight}, prov)
        K = model.mean.shape[0]
        FACE_MODEL.write(tmp["face_model"], {
            "mean": model.mean, "identity": res.identity, "basis": res.basis.reshape(K, 3, -1),
            "landmark_ids": np.arange(K, dtype=np.int32), "triangles": mesh.triangles, "focal_px": np.float32(f),
            "cx": np.float32(cx), "cy": np.float32(cy), "w": np.int32(W), "h": np.int32(H)}, prov)
        CANONICAL_LANDMARKS.write(tmp["canonical"], {"frame_idx": frame_idx, "landmarks": canon}, prov)
        TRANSFORMS.write(tmp["transforms"], {
            "focal_px": float(f), "cx": cx, "cy": cy, "w": W, "h": H, "convention": GL_CONVENTION,
            "split": split,
            "frames": [{"frame_idx": int(i), "transform_matrix": np.round(m, 6).tolist()} for i, m in zip(frame_idx, c2h)],
        }, prov)
        TRACKING_METRICS.write(tmp["metrics"], metrics, prov)
        uv_fit = tf.projected(model.mean, res, cx, cy)
        tracking_plots.overlay_sheet(tmp["overlay"], video, W, H, obs[..., :2], uv_fit, cfg.contact_sheet_tiles)
        tracking_plots.pose_plot(tmp["pose"], euler, tf.euler_yxz(tf.rodrigues(torch.from_numpy(init.omega)).numpy()),
                                 res.reproj_px, fps=25)
    log.info("%s: %d frames, focal %.1f px, reprojection mean %.3f / p95 %.3f px, jitter rot %.3f deg "
             "(init %.3f), trans %.4f (init %.4f), %.1f s", landmarks, N, f, metrics["reproj_mean_px"],
             metrics["reproj_p95_px"], j_rot, j_rot0, j_tr, j_tr0, seconds)
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = parser("Fit a per-subject face model, head pose, focal length and expressions to the landmarks.",
               ["landmarks", "crop_meta", "meta", "outdir"])
    p.add_argument("--video", default=None, help="crop/video.mp4 for the overlay contact sheet")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    guarded(lambda: run(args.landmarks, args.outdir, from_mapping(TrackingConfig, args.config, "tracking"),
                        crop_meta=args.crop_meta, meta=args.meta, video=args.video, threads=args.threads))


if __name__ == "__main__":
    main()
