"""Rule ``train_torso``: a pose-modulated U-Net from the head pose to the torso+neck RGBA of a frame.

Inputs: ``crop/video.mp4`` (RGB), ``parsing/torso.npz`` (soft torso+neck matte, head removed),
``parsing/background.png`` (for the metric), ``tracking/tracks.parquet`` (head pose) and the split of
``tracking/transforms.json``. Outputs ``torso/torso.pt`` (weights only), ``torso/torso.json``
(:data:`~pipeline.core.artifacts.TORSO_MODEL`) and ``torso/metrics.json`` (:data:`~pipeline.core.artifacts.TORSO_METRICS`).

The network (:class:`~pipeline.torso.model.TorsoNet`, a pose-modulated U-Net that refines the train-split mean
torso) is described in :mod:`pipeline.torso.model`.

Loss: L1 on RGB weighted by the true alpha + ``alpha_weight`` x BCE on alpha. Frames are decoded once
into uint8 memmaps at network size (a temporary folder), never held as float.
Metric: on the test split, the torso composited over the background plate is compared with the true
torso (crop frame x matte) over the same plate, on the true torso+neck mask dilated by 2 px, as PSNR;
the baseline is the mean torso RGBA. Importable with torch, numpy, pandas, pyarrow and opencv alone.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from pipeline.core.artifacts import (TORSO_METRICS, TORSO_MODEL, TORSO_POSE_COLUMNS, TRANSFORMS, Provenance, atomic_output,
                                     config_hash, npz_iter_rows, read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import TorsoConfig, from_mapping
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.layout import TorsoFiles
from pipeline.core.progress import progress
from pipeline.torso.model import TorsoError, TorsoNet, read_poses

log = logging.getLogger("pipeline.torso.train")


# ----------------------------------------------------------------------------- data

def read_frames_cv2(video: Path | str, size: int, n_expected: int | None = None):
    """Yield RGB uint8 frames of ``video`` resized to ``size``² (opencv: no ffmpeg binary needed)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise TorsoError(video, "cannot open video")
    i = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if bgr.shape[0] != size or bgr.shape[1] != size:
                bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    if n_expected is not None and i != n_expected:
        raise TorsoError(video, f"decoded {i} frames, expected {n_expected}")


def build_cache(video: Path, torso_npz: Path, n: int, size: int, folder: Path) -> tuple[np.memmap, np.memmap]:
    """uint8 memmaps ``rgb [N, S, S, 3]`` and ``alpha [N, S, S]`` at network size (streamed in)."""
    rgb = np.lib.format.open_memmap(folder / "rgb.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    alpha = np.lib.format.open_memmap(folder / "alpha.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    for i, frame in enumerate(read_frames_cv2(video, size, n)):
        rgb[i] = frame
    i = 0
    for chunk in npz_iter_rows(torso_npz, "alpha", chunk=32):
        for a in chunk:
            if i >= n:
                raise TorsoError(torso_npz, f"more alpha rows than the {n} frames of {video}")
            alpha[i] = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
            i += 1
    if i != n:
        raise TorsoError(torso_npz, f"{i} alpha rows but {n} frames in {video}")
    rgb.flush()
    alpha.flush()
    return rgb, alpha


def batch_tensors(rgb: np.ndarray, alpha: np.ndarray, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.sort(idx)
    x = torch.from_numpy(np.ascontiguousarray(rgb[idx])).to(device).permute(0, 3, 1, 2).float() / 255.0
    a = torch.from_numpy(np.ascontiguousarray(alpha[idx])).to(device)[:, None].float() / 255.0
    return x, a


def mean_torso(rgb: np.ndarray, alpha: np.ndarray, frames: np.ndarray, chunk: int = 64) -> torch.Tensor:
    """Train-split mean torso [4, S, S]: alpha-weighted mean colour and mean alpha."""
    s = rgb.shape[1]
    num = np.zeros((s, s, 3))
    den = np.zeros((s, s))
    for k in range(0, len(frames), chunk):
        f = frames[k:k + chunk]
        a = alpha[f].astype(np.float64) / 255.0
        num += (rgb[f].astype(np.float64) / 255.0 * a[..., None]).sum(0)
        den += a.sum(0)
    colour = num / np.maximum(den, 1e-6)[..., None]
    filler = num.sum((0, 1)) / max(den.sum(), 1e-6)          # where the torso never is: its average colour
    colour = np.where(den[..., None] > 1e-3, colour, filler)
    mean = np.concatenate([colour.transpose(2, 0, 1), (den / len(frames))[None]], 0)
    return torch.from_numpy(mean).float()


# ----------------------------------------------------------------------------- metric

def psnr(mse: float) -> float:
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


@torch.no_grad()
def evaluate(net: TorsoNet, poses_z: torch.Tensor, rgb: np.ndarray, alpha: np.ndarray, frames: np.ndarray,
             background: np.ndarray, device: torch.device, size: int) -> dict:
    """Test-split PSNR on (dilated) torso pixels and alpha IoU, for the net and the mean torso (module doc)."""
    bg = torch.from_numpy(cv2.resize(background, (size, size), interpolation=cv2.INTER_AREA)).to(device)
    bg = bg.permute(2, 0, 1)[None].float() / 255.0
    mean_rgb, mean_a = net.mean_rgba[None, :3], net.mean_rgba[None, 3:]
    kernel = torch.ones(1, 1, 5, 5, device=device)
    sums = {"net": [0.0, 0.0], "mean": [0.0, 0.0]}
    ious: dict[str, list[float]] = {"net": [], "mean": []}
    for k in range(0, len(frames), 16):
        f = frames[k:k + 16]
        x, a = batch_tensors(rgb, alpha, f, device)
        p_rgb, p_a = net(poses_z[f])
        preds = {"net": (p_rgb, p_a), "mean": (mean_rgb.expand_as(p_rgb), mean_a.expand_as(p_a))}
        resize = (lambda t: F.interpolate(t, size=(size, size), mode="area")) if size != x.shape[-1] else (lambda t: t)
        x, a = resize(x), resize(a)
        target = a * x + (1 - a) * bg
        mask = (F.conv2d((a > 0.5).float(), kernel, padding=2) > 0).float()
        for name, (c, al) in preds.items():
            c, al = resize(c), resize(al)
            comp = al * c + (1 - al) * bg
            sums[name][0] += float((((comp - target) ** 2) * mask).sum())
            sums[name][1] += float(mask.sum()) * 3
            inter = ((al > 0.5) & (a > 0.5)).flatten(1).sum(1).float()
            union = ((al > 0.5) | (a > 0.5)).flatten(1).sum(1).float().clamp_min(1)
            ious[name] += (inter / union).tolist()
    return {"psnr_torso_db": psnr(sums["net"][0] / max(sums["net"][1], 1)),
            "psnr_torso_mean_db": psnr(sums["mean"][0] / max(sums["mean"][1], 1)),
            "alpha_iou": float(np.mean(ious["net"])), "alpha_iou_mean": float(np.mean(ious["mean"]))}


# ----------------------------------------------------------------------------- training

def run(crop_video: Path | str, torso_npz: Path | str, background: Path | str, tracks: Path | str,
        transforms: Path | str, outdir: Path | str, cfg: TorsoConfig = TorsoConfig()) -> dict:
    """Train the torso model into ``outdir`` (torso.pt, torso.json, metrics.json); returns the metrics."""
    outdir = Path(outdir)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device, "torso.device")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    doc = TRANSFORMS.read(transforms)
    crop_size = int(doc["w"])
    poses = read_poses(tracks)
    n = len(poses)
    (a, b), (t0, t1) = doc["split"]["train"], doc["split"]["test"]
    if not 0 <= a < b <= n or t1 > n:
        raise TorsoError(transforms, f"split {doc['split']} does not fit the {n} tracked frames")
    train = np.arange(a, b)
    test = np.arange(t0, t1) if t1 > t0 else train[-max(1, len(train) // 11):]
    bg = cv2.imread(str(background), cv2.IMREAD_COLOR)
    if bg is None:
        raise TorsoError(background, "cannot read the background plate")
    bg = cv2.cvtColor(bg, cv2.COLOR_BGR2RGB)
    pose_mean, pose_std = poses[train].mean(0), np.maximum(poses[train].std(0), 1e-6)
    poses_z = torch.from_numpy((poses - pose_mean) / pose_std).float().to(device)
    s = cfg.image_size
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=".torso_cache", dir=outdir.parent if outdir.parent.exists() else None) as tmp:
            rgb, alpha = build_cache(Path(crop_video), Path(torso_npz), n, s, Path(tmp))
            net = TorsoNet(mean_torso(rgb, alpha, train), len(TORSO_POSE_COLUMNS), cfg.base_channels, cfg.depth,
                           cfg.style_dim, cfg.flow_scale).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
            for step in progress(range(cfg.steps), desc="train_torso", mininterval=5, disable=None):
                idx = rng.choice(train, size=min(cfg.batch, len(train)), replace=False)
                x, a_true = batch_tensors(rgb, alpha, idx, device)
                p_rgb, p_a = net(poses_z[np.sort(idx)])
                l_rgb = ((p_rgb - x).abs() * a_true).sum() / (3 * a_true.sum()).clamp_min(1.0)
                l_a = F.binary_cross_entropy(p_a.clamp(1e-5, 1 - 1e-5), a_true)
                loss = l_rgb + cfg.alpha_weight * l_a
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if step % max(1, cfg.steps // 10) == 0:
                    log.info("step %d: rgb %.4f alpha %.4f", step, float(l_rgb.detach()), float(l_a.detach()))
            train_seconds = time.perf_counter() - t_start
            net.eval()
            metrics = evaluate(net, poses_z, rgb, alpha, test, bg, device, cfg.eval_size or s)
            del rgb, alpha
    finally:
        torch.set_num_threads(prev_threads)
    metrics.update(test_frames=int(len(test)), eval_size=int(cfg.eval_size or s), steps=cfg.steps,
                   train_seconds=round(train_seconds, 2), device=str(device))
    log.info("torso test PSNR %.2f dB (mean torso %.2f dB), alpha IoU %.3f (mean %.3f)", metrics["psnr_torso_db"],
             metrics["psnr_torso_mean_db"], metrics["alpha_iou"], metrics["alpha_iou_mean"])
    try:
        src = read_provenance(tracks).source_sha256
    except PipelineError:
        src = "unknown"
    prov = Provenance(src, config_hash(cfg))
    with ExitStack() as stack:  # the three outputs appear together or not at all
        files = TorsoFiles(outdir)
        tmp = {n: stack.enter_context(atomic_output(getattr(files, n))) for n in ("model", "meta", "metrics")}
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, tmp["model"])
        TORSO_MODEL.write(tmp["meta"], {
            "image_size": s, "crop_size": crop_size, "base_channels": cfg.base_channels, "depth": cfg.depth,
            "style_dim": cfg.style_dim, "flow_scale": cfg.flow_scale, "pose_columns": list(TORSO_POSE_COLUMNS),
            "pose_mean": pose_mean.tolist(), "pose_std": pose_std.tolist(), "config": asdict(cfg)}, prov)
        TORSO_METRICS.write(tmp["metrics"], metrics, prov)
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parser("Train the pose-conditioned torso model.",
                  ["crop_video", "torso", "background", "tracks", "transforms", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.crop_video, args.torso, args.background, args.tracks, args.transforms, args.outdir,
                        from_mapping(TorsoConfig, args.config, "torso")))


if __name__ == "__main__":
    main()
