"""Figures of rule ``track_face`` for the report: landmark overlay contact sheet and pose over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _frames(video: Path | str | None, w: int, h: int, picks: np.ndarray) -> dict[int, np.ndarray]:
    """The picked frames of ``video`` (uint8 RGB), streamed; empty when there is no video."""
    if video is None or not Path(video).is_file():
        return {}
    from pipeline.core import media

    want, out, i = set(int(p) for p in picks), {}, 0
    for chunk in media.iter_frames(video, w, h):
        for fr in chunk:
            if i in want:
                out[i] = fr.copy()
            i += 1
        if i > picks.max():
            break
    return out


def overlay_sheet(path: Path, video: Path | str | None, w: int, h: int, observed: np.ndarray, fitted: np.ndarray,
                  tiles: int) -> None:
    """Contact sheet: detected landmarks (red) and the projected fit (green) on evenly spaced frames.

    Each tile zooms on the face (256 px); without a video the points are drawn on grey.
    """
    import cv2

    N = len(observed)
    picks = np.unique(np.linspace(0, N - 1, min(tiles, N)).round().astype(int))
    frames = _frames(video, w, h, picks)
    tile = 256
    imgs = []
    for p in picks:
        img = frames.get(int(p), np.full((h, w, 3), 96, np.uint8))
        lo, hi = observed[p].min(0), observed[p].max(0)      # zoom on the face: box of the landmarks + 15 %
        half = 0.575 * float((hi - lo).max())
        x0, y0 = (lo + hi) / 2 - half
        k = tile / (2 * half)                                # output px per crop px
        M = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]])
        face = cv2.warpAffine(img, M, (tile, tile), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for pts, color, r in ((observed[p], (255, 40, 40), 2.0), (fitted[p], (40, 255, 40), 1.0)):
            for x, y in np.round(((pts - [x0, y0]) * k) * 16).astype(np.int64):
                cv2.circle(face, (int(x), int(y)), int(r * 16), color, -1, lineType=cv2.LINE_AA, shift=4)
        cv2.putText(face, f"#{p}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        imgs.append(face)
    cols = int(np.ceil(np.sqrt(len(imgs))))
    rows = int(np.ceil(len(imgs) / cols))
    sheet = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = im
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the overlay sheet")


def pose_plot(path: Path, euler: np.ndarray, euler_init: np.ndarray, reproj_px: np.ndarray, fps: int = 25) -> None:
    """Yaw/pitch/roll (deg) over time, fitted vs the per-frame closed form, and the reprojection error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(euler)) / fps
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
    for ax, j, name in zip(axes, range(3), ("yaw", "pitch", "roll")):
        ax.plot(t, np.degrees(euler_init[:, j]), color="0.7", lw=0.8, label="closed-form init")
        ax.plot(t, np.degrees(euler[:, j]), color="C0", lw=1.0, label="fitted")
        ax.set_ylabel(f"{name} (deg)")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[3].plot(t, reproj_px, color="C3", lw=0.8)
    axes[3].set_ylabel("reproj (px)")
    axes[3].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)
