"""Rule ``evaluate``: how good is one subject's talking head?

``video.mp4`` (the test split re-synthesised by :mod:`pipeline.render.video`) against the ground-truth
test-split frames of ``crop/video.mp4`` -> ``eval/metrics.json`` (:data:`~pipeline.core.artifacts.EVAL_METRICS`),
``eval/frames.parquet`` (:data:`~pipeline.core.artifacts.EVAL_FRAMES`) and ``eval/plots/*.png``
(:mod:`pipeline.evaluate.plots`). The metrics, as in the ER-NeRF / TalkingGaussian tables:

* PSNR / SSIM (:mod:`pipeline.core.metrics`), per frame then averaged: full frame, and the head region
  (parsing labels 3-7: face, hair, lips, mouth, eyes of the ground truth). Frames are compared at the
  render's size (the ground truth is area-resized when it differs from the crop size).
* LPIPS only where the ``lpips`` package and torchvision's ImageNet AlexNet weights are present locally;
  otherwise ``null`` with the reason (the pipeline never downloads weights, never invents a number).
* Mouth LMD, px at the render size, each frame's mouth centroid removed: (a) ``lmd_mesh_px`` on the 40 lip
  points of mediapipe's 478-point mesh (FaceLandmarker run on the rendered frames vs the ground truth's
  ``landmarks.parquet``), (b) ``lmd_dlib_px`` on points 48-67 of dlib's 68-point predictor run on both
  (:mod:`pipeline.evaluate.dlib68`), the flavour the papers report.
* Blinks: AU45 of the render and of the ground truth computed the same way, on the subject's scale (the
  fit and normalisation of ``aus/aus.json``, :func:`pipeline.preprocess.au_signals.au45_subject_scale`), from mediapipe
  on both test splits: blink counts, per-frame AU45 MAE and correlation.
* Lip-audio offset in frames (:func:`pipeline.core.metrics.sync_offset`; 0 ideal, > 0: audio late), of the
  render (its mouth signals vs the audio muxed into video.mp4) and, as the reference, of the ground
  truth against the same audio; ``null`` with the reason when the split is too short or the signals
  too weakly related to measure it. The mouth signal (:func:`pipeline.core.metrics.sync_visual`): the dark
  share of the mouth box, from the frames the image metrics decode anyway; the audio's: log energy in the
  speech bands 300-700-1200-2000-3000 Hz (:func:`pipeline.core.metrics.sync_audio`).
* Render FPS from the render step's ``video.json``; train time from stage 1, stage 2 and torso metrics.

``python -m pipeline.evaluate.subject --subject-dir S --video V --outdir O`` (also ``python -m pipeline.evaluate
subject ...``); the table over subjects is rule ``benchmark_table`` (:mod:`pipeline.evaluate.table`).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from pipeline.evaluate import dlib68, plots
from pipeline.core import media
from pipeline.core.artifacts import (AUS_STATS, CROP_META, EVAL_FRAMES, EVAL_METRICS, INGEST_META, LANDMARKS,
                                     N_BLENDSHAPES, N_LANDMARKS, RENDER_STATS, TRACKS, JsonSpec, Provenance,
                                     config_hash, fixed_list_column, npz_iter_rows, read_provenance)
from pipeline.core.cli import guarded
from pipeline.core.config import EvaluateConfig, LandmarksConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core import layout
from pipeline.core.layout import EvalFiles, SubjectLayout
from pipeline.core.metrics import (SYNC_BANDS_HZ, SYNC_VISUAL, band_envelope, mouth_darkness, mouth_lmd, mouth_opening,
                                   psnr, ssim_map, sync_audio, sync_offset, sync_visual)
from pipeline.core.progress import progress
from pipeline.preprocess.au_signals import au45_subject_scale

log = logging.getLogger("pipeline.evaluate.subject")
HEAD_LABELS = (3, 4, 5, 6, 7)  # face, hair, lips, mouth interior, eyes
SAMPLE_RATE = 16000
_TRAIN_SECONDS = JsonSpec("<stage>/metrics.json", {"train_seconds": (int, float)})


class EvaluateError(PipelineError):
    pass


# ----------------------------------------------------------------------------- pieces

def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    import os

    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub"


def lpips_status() -> str:
    """Why LPIPS cannot be computed here, or '' when the package and a local backbone are both present."""
    import importlib.util

    missing = [m for m in ("lpips", "torchvision") if importlib.util.find_spec(m) is None]
    ckpt = torch_hub_dir() / "checkpoints"
    weights = [p for p in ("alexnet-owt-7be5be79.pth", "vgg16-397923af.pth") if (ckpt / p).is_file()]
    if missing or not weights:
        return (f"unavailable: LPIPS needs the lpips and torchvision packages ({', '.join(missing) or 'present'} missing) "
                f"and ImageNet AlexNet/VGG16 weights in {ckpt} ({'found' if weights else 'none found'}); "
                "the pipeline never downloads weights")
    return ""


class Lpips:
    """LPIPS (AlexNet, or VGG16 when only its weights are local) on uint8 RGB frames, from local files only."""

    def __init__(self):
        import lpips
        import torch

        net = "alex" if (torch_hub_dir() / "checkpoints/alexnet-owt-7be5be79.pth").is_file() else "vgg"
        self.model, self.net, self._torch = lpips.LPIPS(net=net, verbose=False).eval(), net, torch

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        t = lambda x: self._torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # noqa: E731
        with self._torch.no_grad():
            return float(self.model(t(a), t(b)).item())


def _frames(path: Path, size: int, vf: str | None = None, start: int = 0, n: int | None = None, fps: int = 25):
    for chunk in media.iter_frames(path, size, size, vf=vf, start_frame=start, n_frames=n, fps=fps):
        yield from chunk


def _label_rows(path: Path, start: int, stop: int):
    row = 0
    for chunk in npz_iter_rows(path, "labels", 64):
        for lab in chunk:
            if start <= row < stop:
                yield lab
            row += 1
            if row >= stop:
                return


def _finite_mean(v: np.ndarray) -> float | None:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return round(float(v.mean()), 4) if len(v) else None


def render_landmarks(video: Path, size: int, n: int, fps: int, model_path: str) -> dict[str, np.ndarray]:
    """mediapipe FaceLandmarker (the landmark stage's worker and default running mode) on every rendered frame."""
    from pipeline.preprocess import mediapipe_models
    from pipeline.preprocess.face_landmarker import landmark_chunk

    task = mediapipe_models.locate(mediapipe_models.FACE_LANDMARKER, model_path)
    return landmark_chunk(str(video), size, 0, n, fps, str(task), LandmarksConfig(model_path=model_path))


def train_seconds(root: Path) -> tuple[float | None, dict]:
    """Sum of the training times recorded by stage 1, stage 2 and the torso (None if any is missing)."""
    files = SubjectLayout(root)
    parts: dict = {}
    for name, p in (("stage1", files.stage1.metrics), ("stage2", files.stage2.metrics), ("torso", files.torso.metrics)):
        parts[name] = float(_TRAIN_SECONDS.read(p)["train_seconds"]) if p.is_file() else None
    total = None if any(v is None for v in parts.values()) else round(sum(parts.values()), 2)
    return total, parts


# ----------------------------------------------------------------------------- the subject

def run(subject_dir: Path | str, video: Path | str, outdir: Path | str, cfg: EvaluateConfig = EvaluateConfig(),
        subject: str | None = None) -> dict:
    """Evaluate ``video`` (the re-synthesised test split of ``subject_dir``) -> ``outdir``/{metrics.json, ...}."""
    root, video, outdir = Path(subject_dir), Path(video), Path(outdir)
    files, out = SubjectLayout(root), EvalFiles(outdir)
    subject = subject or root.name
    meta = INGEST_META.read(files.ingest.meta)
    fps = int(meta["fps"])
    t0, t1 = (int(v) for v in meta["split"]["test"])
    n = t1 - t0
    crop_size = int(CROP_META.read(files.crop.meta)["size"])
    info = media.probe(video)
    if info.video is None or info.video.width != info.video.height:
        raise EvaluateError(video, "expected a square video stream (render output)")
    if info.audio is None:
        raise EvaluateError(video, "no audio stream: the render must mux the test-split audio (lip-sync is measured on it)")
    size = info.video.width
    if info.video.n_frames != n:
        raise EvaluateError(video, f"{info.video.n_frames} frames, the test split {meta['split']['test']} has {n}")
    stats_path = layout.render_stats(video)
    render_stats = RENDER_STATS.read(stats_path) if stats_path.is_file() else None

    table = LANDMARKS.read(files.landmarks.table)
    gt_pts = fixed_list_column(table, "landmarks", (N_LANDMARKS, 3))[t0:t1].astype(np.float64) * (size / crop_size)
    gt_bs = fixed_list_column(table, "blendshapes", (N_BLENDSHAPES,))[t0:t1].astype(np.float64)
    if len(gt_pts) != n:
        raise EvaluateError(files.landmarks.table, f"{len(gt_pts)} test rows, expected {n}")

    # mediapipe on the render first (its own decode): pass 1 needs its mouth landmarks for the dark-mouth signal
    rl = render_landmarks(video, size, n, fps, cfg.landmarks_model_path)
    r_pts, r_det = rl["landmarks"].astype(np.float64), rl["detected"]

    # pass 1: images (PSNR/SSIM full and head, LPIPS, dlib 68 points, mouth darkness, the strip)
    lp_reason = lpips_status()
    lp = Lpips() if not lp_reason else None
    dl = dlib68.Dlib68(cfg.dlib_model_path, cfg.dlib_upsample, cfg.dlib_detect_size)
    gt_state, r_state = dlib68.Tracker(), dlib68.Tracker()
    strip_at = set(np.linspace(0, n - 1, min(cfg.strip_frames, n)).round().astype(int).tolist())
    strip_gt, strip_r = [], []
    cols = {k: np.full(n, np.nan) for k in ("psnr_db", "psnr_head_db", "ssim", "ssim_head", "lpips")}
    dlib_gt, dlib_r = np.zeros((n, 68, 2)), np.zeros((n, 68, 2))
    dark_gt, dark_r = np.full(n, np.nan), np.full(n, np.nan)
    vf = f"scale={size}:{size}:flags=area" if size != crop_size else None
    pairs = zip(_frames(files.crop.video, size, vf, start=t0, n=n, fps=fps), _frames(video, size),
                _label_rows(files.parsing.labels, t0, t1))
    i = -1
    for i, (g, r, lab) in enumerate(progress(pairs, total=n, desc="evaluate", unit="frame", mininterval=5, disable=None)):
        if i >= n:
            raise EvaluateError(video, f"more than the {n} test-split frames")
        if lab.shape[0] != size:
            lab = cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
        head = np.isin(lab, HEAD_LABELS)
        smap = ssim_map(g, r)
        cols["psnr_db"][i], cols["ssim"][i] = psnr(g, r), float(smap.mean())
        if head.any():
            cols["psnr_head_db"][i], cols["ssim_head"][i] = psnr(g, r, head), float(smap[head].mean())
        if lp is not None:
            cols["lpips"][i] = lp(g, r)
        pg, pr = dlib68.pair_landmarks(dl, g[None], r[None], gt_pts[i:i + 1], gt_state, r_state)
        dlib_gt[i], dlib_r[i] = pg[0], pr[0]
        dark_gt[i] = mouth_darkness(g, gt_pts[i])
        if r_det[i]:
            dark_r[i] = mouth_darkness(r, r_pts[i])
        if i in strip_at:
            strip_gt.append(g.copy())
            strip_r.append(r.copy())
    if i + 1 != n:
        raise EvaluateError(video, f"{i + 1} frames compared, the test split has {n} (render and crop must cover it)")

    # the render's mesh -> mesh LMD, mouth opening, AU45
    both = r_det & np.isfinite(gt_pts).all((1, 2))
    lmd_mesh = np.full(n, np.nan)
    for k in np.flatnonzero(both):
        lmd_mesh[k] = mouth_lmd(r_pts[k:k + 1], gt_pts[k:k + 1])
    lmd_dlib = np.array([mouth_lmd(dlib_r[k:k + 1], dlib_gt[k:k + 1], dlib68.MOUTH_68) for k in range(n)])
    mo_gt, mo_r = mouth_opening(gt_pts), mouth_opening(r_pts)
    aus_stats = AUS_STATS.read(files.aus.stats)
    au_gt, blinks_gt = au45_subject_scale(gt_bs, gt_pts, aus_stats, fps)
    if r_det.sum() >= 2:
        au_r, blinks_r = au45_subject_scale(np.where(r_det[:, None], rl["blendshapes"], np.nan),
                                            np.where(r_det[:, None, None], r_pts, np.nan), aus_stats, fps)
    else:
        au_r, blinks_r = np.full(n, np.nan), np.array([], np.int64)

    # lip-audio offset: mouth darkness against the speech bands' energies of the audio muxed into the render
    audio = media.read_audio(video, SAMPLE_RATE)
    env = band_envelope(audio, SAMPLE_RATE, fps, n, cfg.sync_band_lo_hz, cfg.sync_band_hi_hz)
    bands = sync_audio(audio, SAMPLE_RATE, fps, n, cfg.sync_band_lo_hz, cfg.sync_band_hi_hz)
    kw = dict(speech=env, max_lag=cfg.sync_max_lag, highpass=cfg.sync_highpass_frames, sigma=cfg.sync_smooth_sigma,
              window=cfg.sync_window, min_frames=cfg.sync_min_frames, min_r=cfg.sync_min_r,
              min_agreement=cfg.sync_min_agreement)
    sync = {"render": sync_offset(sync_visual(dark_r, np.where(r_det[:, None, None], r_pts, np.nan)), bands, **kw),
            "gt": sync_offset(sync_visual(dark_gt, gt_pts), bands, **kw),
            "signals": {"mouth": list(SYNC_VISUAL), "audio": "log energy per band, standardised and averaged, Hz "
                        "edges " + "-".join(f"{f:g}" for f in SYNC_BANDS_HZ
                                            if cfg.sync_band_lo_hz <= f <= cfg.sync_band_hi_hz),
                        "speech_gate": f"{cfg.sync_band_lo_hz:g}-{cfg.sync_band_hi_hz:g} Hz energy (counts the speech "
                                       "frames)"}}
    off_r, off_g = sync["render"]["offset_frames"], sync["gt"]["offset_frames"]

    total, parts = train_seconds(root)
    au_ok = np.isfinite(au_r)
    au_r_corr = (float(np.corrcoef(au_r[au_ok], au_gt[au_ok])[0, 1])
                 if au_ok.sum() > 2 and au_r[au_ok].std() > 0 and au_gt[au_ok].std() > 0 else None)
    doc = {
        "subject": subject, "video": str(video), "test_frames": n, "test_range": [t0, t1], "size": size,
        "crop_size": crop_size,
        "psnr_db": _finite_mean(cols["psnr_db"]), "psnr_head_db": _finite_mean(cols["psnr_head_db"]),
        "identical_frames": int(np.isinf(cols["psnr_db"]).sum()),
        "ssim": _finite_mean(cols["ssim"]), "ssim_head": _finite_mean(cols["ssim_head"]),
        "lpips": _finite_mean(cols["lpips"]) if lp is not None else None,
        "lpips_note": f"LPIPS ({lp.net})" if lp is not None else lp_reason,
        "lmd_mesh_px": _finite_mean(lmd_mesh), "lmd_mesh_frames": int(both.sum()),
        "render_face_frames": int(r_det.sum()),
        "lmd_dlib_px": _finite_mean(lmd_dlib),
        "dlib": {"gt_detected": gt_state.detected, "render_detected": r_state.detected,
                 "gt_borrowed_boxes": gt_state.borrowed, "render_borrowed_boxes": r_state.borrowed,
                 "predictor": str(dl.path)},
        "blink": {"gt_count": int(len(blinks_gt)), "render_count": int(len(blinks_r)),
                  "count_error": int(abs(len(blinks_r) - len(blinks_gt))),
                  "au45_mae": _finite_mean(np.abs(au_r - au_gt)), "au45_r": None if au_r_corr is None else round(au_r_corr, 4),
                  "gt_frames": blinks_gt.tolist(), "render_frames": blinks_r.tolist()},
        "sync_offset_frames": off_r, "sync_offset_gt_frames": off_g,
        "sync_offset_vs_gt_frames": None if off_r is None or off_g is None else off_r - off_g,
        "sync": sync,
        "render_fps": float(render_stats["frames_per_sec"]) if render_stats else None,
        "render_device": render_stats["device"] if render_stats else None,
        "train_seconds": total, "train_seconds_parts": parts, "config": asdict(cfg),
    }
    try:
        prov = Provenance(read_provenance(files.landmarks.table).source_sha256, config_hash(cfg))
    except PipelineError:
        prov = Provenance("unknown", config_hash(cfg))
    frame_idx = np.arange(t0, t1, dtype=np.int32)
    EVAL_FRAMES.write(out.frames, {
        "frame_idx": frame_idx, **{k: cols[k] for k in ("psnr_db", "psnr_head_db", "ssim", "ssim_head", "lpips")},
        "lmd_mesh_px": lmd_mesh, "lmd_dlib_px": lmd_dlib, "mouth_open_gt": mo_gt, "mouth_open_render": mo_r,
        "au45_gt": au_gt, "au45_render": au_r, "speech_db": env, "render_face": r_det}, prov)
    tracks = TRACKS.read_pandas(files.tracking.tracks)
    plots.plot_psnr(out.plot("psnr"), frame_idx, cols["psnr_db"], cols["psnr_head_db"],
                    f"{subject}: per-frame PSNR, test split")
    plots.plot_mouth(out.plot("mouth"), frame_idx, mo_gt, np.where(r_det, mo_r, np.nan), env, sync,
                     f"{subject}: mouth opening, render vs ground truth")
    plots.plot_pose(out.plot("pose"), tracks.yaw_rad.to_numpy(), tracks.pitch_rad.to_numpy(),
                    tracks.roll_rad.to_numpy(), (t0, t1), f"{subject}: tracked head pose")
    plots.plot_strip(out.plot("strip"), strip_gt, strip_r, [t0 + k for k in sorted(strip_at)],
                     f"{subject}: ground truth | render | error")
    EVAL_METRICS.write(out.metrics, doc, prov)
    log.info("%s: PSNR %s (head %s) SSIM %s LMD mesh %s dlib %s px, sync %s (gt %s), blinks %d/%d, %s fps",
             subject, doc["psnr_db"], doc["psnr_head_db"], doc["ssim"], doc["lmd_mesh_px"], doc["lmd_dlib_px"],
             off_r, off_g, len(blinks_r), len(blinks_gt), doc["render_fps"])
    return doc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Evaluate a subject's rendered test split against the ground truth.")
    p.add_argument("--subject-dir", required=True, help="results/<subject>")
    p.add_argument("--video", required=True, help="the rendered test split (results/<subject>/video.mp4)")
    p.add_argument("--outdir", required=True)
    p.add_argument("--config", default="{}", help="the evaluate config section as JSON")
    args = p.parse_args(argv)
    guarded(lambda: run(args.subject_dir, args.video, args.outdir,
                        from_mapping(EvaluateConfig, json.loads(args.config or "{}"), "evaluate")))


if __name__ == "__main__":
    main()
