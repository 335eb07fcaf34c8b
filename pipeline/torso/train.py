"""Rule ``train_torso``: a pose-modulated U-Net from the head pose to the full-resolution torso+neck RGBA.

Inputs: ``crop/video.mp4`` (RGB), ``parsing/torso.npz`` (soft torso+neck matte, head removed),
``parsing/labels.npz`` (where the head is), ``parsing/background.png``, ``tracking/tracks.parquet`` (head pose),
the split of ``tracking/transforms.json`` and ``crop/crop.json`` (which rows and columns are smeared padding).
Outputs ``torso/torso.pt`` (weights only), ``torso/torso.json`` (:data:`~pipeline.core.artifacts.TORSO_MODEL`)
and ``torso/metrics.json`` (:data:`~pipeline.core.artifacts.TORSO_METRICS`).

The network (:class:`~pipeline.torso.model.TorsoNet`) is described in :mod:`pipeline.torso.model`.

Loss, on every pixel that is not head (labels 3-7; the head layer covers those, so the torso may put its neck
under the chin): L2 (or L1, ``torso.loss``) between the torso composited over the background plate and the frame, plus
``alpha_weight`` x BCE of the alpha against the matte. Frames, mattes and head masks are decoded once into
uint8 memmaps at the output size (a temporary folder; on a GPU they are copied to it whole), never held as float.
Metric, on the test split at the output size: PSNR of the torso over the plate on the frame's torso (label 1)
and neck (label 2) pixels, and alpha IoU off the head; the baseline is the mean torso RGBA.
Importable with torch, numpy, pandas, pyarrow and opencv alone.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from pipeline.core.artifacts import (CROP_META, LABEL_FACE, LABEL_NECK, LABEL_TORSO, TORSO_METRICS,
                                     TORSO_MODEL, TORSO_POSE_COLUMNS, TRANSFORMS, Provenance, atomic_output, config_hash,
                                     npz_iter_rows, read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import TorsoConfig, from_mapping
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.layout import TorsoFiles
from pipeline.core.media import read_frames_cv2
from pipeline.core.metrics import psnr_from_mse
from pipeline.core.progress import progress
from pipeline.torso.model import TorsoError, TorsoNet, read_poses

log = logging.getLogger("pipeline.torso.train")


# ----------------------------------------------------------------------------- data

class Frames:
    """The training data at output size: ``rgb [N, O, O, 3]``, ``alpha [N, O, O]`` (matte) and ``labels [N, O, O]``
    (parsing labels, nearest), uint8, as memmaps in ``folder`` (streamed in) and, on a GPU, as device tensors."""

    def __init__(self, video: Path, torso_npz: Path, labels_npz: Path, n: int, size: int, folder: Path,
                 device: torch.device):
        shape = (n, size, size)
        self.rgb = np.lib.format.open_memmap(folder / "rgb.npy", mode="w+", dtype=np.uint8, shape=(*shape, 3))
        self.alpha = np.lib.format.open_memmap(folder / "alpha.npy", mode="w+", dtype=np.uint8, shape=shape)
        self.labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.uint8, shape=shape)
        for i, frame in enumerate(read_frames_cv2(video, size, n)):
            self.rgb[i] = frame
        self._rows(torso_npz, "alpha", self.alpha, video, lambda a: cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA))
        self._rows(labels_npz, "labels", self.labels, video,
                   lambda lab: cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST))
        self.device = device
        self._on_device = None
        if device.type == "cuda":
            self._on_device = tuple(torch.from_numpy(np.asarray(x)).to(device) for x in (self.rgb, self.alpha, self.labels))

    @staticmethod
    def _rows(path: Path, key: str, into: np.ndarray, video: Path, convert) -> None:
        i = 0
        for chunk in npz_iter_rows(path, key, chunk=32):
            for row in chunk:
                if i >= len(into):
                    raise TorsoError(path, f"more '{key}' rows than the {len(into)} frames of {video}")
                into[i] = convert(row)
                i += 1
        if i != len(into):
            raise TorsoError(path, f"{i} '{key}' rows but {len(into)} frames in {video}")

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rgb [B, 3, O, O]``, ``alpha [B, 1, O, O]`` floats in [0, 1] and ``labels [B, 1, O, O]`` (uint8) of
        frames ``idx``, on the training device."""
        if self._on_device is not None:
            t = torch.as_tensor(idx, device=self.device)
            rgb, a, lab = (x[t] for x in self._on_device)
        else:
            rgb, a, lab = (torch.from_numpy(np.ascontiguousarray(x[idx])).to(self.device)
                           for x in (self.rgb, self.alpha, self.labels))
        return rgb.permute(0, 3, 1, 2).float() / 255.0, a[:, None].float() / 255.0, lab[:, None]

    def mean_torso(self, frames: np.ndarray, chunk: int = 64) -> torch.Tensor:
        """Train-split mean torso ``[4, O, O]``: alpha-weighted mean colour and mean alpha, both over the frames
        where the pixel is not head (under the chin the neck of the other frames shows)."""
        s = self.rgb.shape[1]
        num, den, seen = np.zeros((s, s, 3)), np.zeros((s, s)), np.zeros((s, s))
        for k in range(0, len(frames), chunk):
            f = np.sort(frames[k:k + chunk])
            a, off = self.alpha[f].astype(np.float64) / 255.0, (self.labels[f] < LABEL_FACE).astype(np.float64)
            num += (self.rgb[f].astype(np.float64) / 255.0 * (a * off)[..., None]).sum(0)
            den += (a * off).sum(0)
            seen += off.sum(0)
        colour = num / np.maximum(den, 1e-6)[..., None]
        filler = num.sum((0, 1)) / max(den.sum(), 1e-6)          # where the torso never is: its average colour
        colour = np.where(den[..., None] > 1e-3, colour, filler)
        mean = np.concatenate([colour.transpose(2, 0, 1), (den / np.maximum(seen, 1))[None]], 0)
        return torch.from_numpy(mean).float()


def valid_box(crop_meta: Path | str, size: int) -> tuple[float, float, float, float]:
    """The crop's real-image box [x0, y0, x1, y1) (CROP_META ``valid_box``) scaled to ``size``."""
    meta = CROP_META.read(crop_meta)
    k = size / float(meta["size"])
    return tuple(float(v) * k for v in meta["valid_box"])


# ----------------------------------------------------------------------------- metric

@torch.no_grad()
def evaluate(net: TorsoNet, poses_z: torch.Tensor, data: Frames, frames: np.ndarray, mean_rgba: torch.Tensor,
             background: torch.Tensor) -> dict:
    """Test-split PSNR on the frame's torso (label 1) and neck (label 2) pixels and alpha IoU off the head, for
    the net and the mean torso (module docstring)."""
    mean_rgb, mean_a = mean_rgba[None, :3], mean_rgba[None, 3:]
    sums = {n: np.zeros((2, 2)) for n in ("net", "mean")}     # [label 1, 2] x [squared error, pixels x 3]
    ious: dict[str, list[float]] = {"net": [], "mean": []}
    for k in range(0, len(frames), 16):
        f = frames[k:k + 16]
        x, a, part = data.batch(f)
        p_rgb, p_a = net(poses_z[f], (part >= LABEL_FACE).float())
        for name, (c, al) in {"net": (p_rgb, p_a), "mean": (mean_rgb, mean_a)}.items():
            comp = al * c + (1 - al) * background
            se = ((comp - x) ** 2).sum(1, keepdim=True)
            for j, label in enumerate((LABEL_TORSO, LABEL_NECK)):
                m = part == label
                sums[name][j] += (float(se[m].sum()), float(m.sum()) * 3)
            off = part < LABEL_FACE
            inter = ((al > 0.5) & (a > 0.5) & off).flatten(1).sum(1).float()
            union = (((al > 0.5) | (a > 0.5)) & off).flatten(1).sum(1).float().clamp_min(1)
            ious[name] += (inter / union).tolist()
    out = {}
    for name, suffix in (("net", ""), ("mean", "_mean")):
        e, c = sums[name].T
        mse = [e[0] / max(c[0], 1), e[1] / max(c[1], 1), e.sum() / max(c.sum(), 1)]
        for key, m in zip(("torso", "neck", "torso_neck"), mse):
            out[f"psnr_{key}_db{suffix}"] = psnr_from_mse(max(m, 1e-12))   # a label absent from the test frames: 120 dB
        out[f"alpha_iou{suffix}"] = float(np.mean(ious[name]))
    return {k.replace("_db_mean", "_mean_db"): v for k, v in out.items()}


# ----------------------------------------------------------------------------- training

def loss_terms(net: TorsoNet, pose_z: torch.Tensor, x: torch.Tensor, a_true: torch.Tensor, labels: torch.Tensor,
               background: torch.Tensor, kind: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 or L2 error of the composite over the plate, alpha BCE), both on the pixels that are not head."""
    off = (labels < LABEL_FACE).float()
    p_rgb, p_a = net(pose_z, 1.0 - off)
    n = off.sum().clamp_min(1.0)
    comp = p_a * p_rgb + (1 - p_a) * background
    err = (comp - x).abs() if kind == "l1" else (comp - x) ** 2
    l_rgb = (err * off).sum() / (3 * n)
    l_a = (F.binary_cross_entropy(p_a.clamp(1e-5, 1 - 1e-5), a_true, reduction="none") * off).sum() / n
    return l_rgb, l_a


def run(crop_video: Path | str, torso_npz: Path | str, labels: Path | str, background: Path | str,
        tracks: Path | str, transforms: Path | str, crop_meta: Path | str, outdir: Path | str,
        cfg: TorsoConfig = TorsoConfig()) -> dict:
    """Train the torso model into ``outdir`` (torso.pt, torso.json, metrics.json); returns the metrics."""
    outdir = Path(outdir)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device, "torso.device")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    doc = TRANSFORMS.read(transforms)
    crop_size = int(doc["w"])
    out_size = cfg.output_size or crop_size
    box = valid_box(crop_meta, out_size)
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
    bg = cv2.resize(cv2.cvtColor(bg, cv2.COLOR_BGR2RGB), (out_size, out_size), interpolation=cv2.INTER_AREA)
    bg_t = torch.from_numpy(bg).to(device).permute(2, 0, 1)[None].float() / 255.0
    pose_mean, pose_std = poses[train].mean(0), np.maximum(poses[train].std(0), 1e-6)
    poses_z = torch.from_numpy((poses - pose_mean) / pose_std).float().to(device)
    s = cfg.image_size
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=".torso_cache", dir=outdir.parent if outdir.parent.exists() else None) as tmp:
            data = Frames(Path(crop_video), Path(torso_npz), Path(labels), n, out_size, Path(tmp), device)
            texture = data.mean_torso(train)
            low = F.interpolate(texture[None], size=(s, s), mode="area")[0] if s != out_size else texture
            net = TorsoNet(low, texture, len(TORSO_POSE_COLUMNS), cfg.base_channels, cfg.depth, cfg.style_dim,
                           cfg.flow_scale, cfg.feature_channels, cfg.refine_channels, box, cfg.head_input).to(device)
            others = [p for name, p in net.named_parameters() if name != "texture"]
            opt = torch.optim.Adam([{"params": others}, {"params": [net.texture], "lr": cfg.lr * cfg.texture_lr}],
                                   lr=cfg.lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
            for step in progress(range(cfg.steps), desc="train_torso", mininterval=5, disable=None):
                idx = np.sort(rng.choice(train, size=min(cfg.batch, len(train)), replace=False))
                x, a_true, lab = data.batch(idx)
                l_rgb, l_a = loss_terms(net, poses_z[idx], x, a_true, lab, bg_t, cfg.loss)
                loss = l_rgb + cfg.alpha_weight * l_a
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if step % max(1, cfg.steps // 10) == 0:
                    log.info("step %d: rgb %.4f alpha %.4f", step, float(l_rgb.detach()), float(l_a.detach()))
            train_seconds = time.perf_counter() - t_start
            net.eval()
            metrics = evaluate(net, poses_z, data, test, texture.to(device), bg_t)
            del data
    finally:
        torch.set_num_threads(prev_threads)
    metrics.update(test_frames=int(len(test)), eval_size=int(out_size), steps=cfg.steps,
                   train_seconds=round(train_seconds, 2), device=str(device))
    log.info("torso test PSNR torso %.2f / neck %.2f dB (mean torso %.2f / %.2f dB), alpha IoU %.3f (mean %.3f)",
             metrics["psnr_torso_db"], metrics["psnr_neck_db"], metrics["psnr_torso_mean_db"],
             metrics["psnr_neck_mean_db"], metrics["alpha_iou"], metrics["alpha_iou_mean"])
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
            "image_size": s, "output_size": out_size, "crop_size": crop_size, "base_channels": cfg.base_channels,
            "depth": cfg.depth, "style_dim": cfg.style_dim, "flow_scale": cfg.flow_scale,
            "feature_channels": cfg.feature_channels, "refine_channels": cfg.refine_channels, "valid_box": list(box),
            "head_input": cfg.head_input,
            "pose_columns": list(TORSO_POSE_COLUMNS), "pose_mean": pose_mean.tolist(), "pose_std": pose_std.tolist(),
            "config": asdict(cfg)}, prov)
        TORSO_METRICS.write(tmp["metrics"], metrics, prov)
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parser("Train the pose-conditioned torso model.",
                  ["crop_video", "torso", "labels", "background", "tracks", "transforms", "crop_meta",
                   "outdir"]).parse_args(argv)
    guarded(lambda: run(args.crop_video, args.torso, args.labels, args.background, args.tracks, args.transforms,
                        args.crop_meta, args.outdir, from_mapping(TorsoConfig, args.config, "torso")))


if __name__ == "__main__":
    main()
