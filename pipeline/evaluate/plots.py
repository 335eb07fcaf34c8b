"""The evaluation's figures (matplotlib, Agg backend), written atomically as PNG under ``eval/plots/``.

* ``psnr.png``        per-frame PSNR of the render (full frame and head region) over the test split;
* ``mouth.png``       mouth opening of the render vs the ground truth, and the audio envelope the
                      lip-sync offset is measured against, with its cross-correlation curves;
* ``pose.png``        the tracked head pose (yaw / pitch / roll, degrees) of the whole clip, test split shaded;
* ``strip.png``       a few test frames: ground truth | render | absolute error (x4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.artifacts import atomic_output


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (9.0, 3.2)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_psnr(path: Path, frames: np.ndarray, psnr: np.ndarray, psnr_head: np.ndarray, title: str) -> None:
    plt, fig, ax = _figure()
    a = ax[0, 0]
    cap = lambda v: np.minimum(v, 60.0)  # noqa: E731  identical frames (inf dB) drawn at 60
    a.plot(frames, cap(psnr), label=f"full frame (mean {np.mean(cap(psnr)):.2f} dB)")
    a.plot(frames, cap(psnr_head), label=f"head region (mean {np.nanmean(cap(psnr_head)):.2f} dB)")
    a.set_xlabel("frame (test split)")
    a.set_ylabel("PSNR, dB")
    a.set_title(title)
    a.grid(alpha=0.3)
    a.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)


def plot_mouth(path: Path, frames: np.ndarray, gt: np.ndarray, render: np.ndarray, envelope: np.ndarray,
               sync: dict, title: str) -> None:
    """Top: mouth opening (render vs truth) and the speech envelope; bottom: correlation vs lag."""
    plt, fig, ax = _figure(2, 1, (9.0, 5.6))
    a = ax[0, 0]
    a.plot(frames, gt, label="ground truth", color="black", lw=1.2)
    a.plot(frames, render, label="render", color="tab:red", lw=1.2)
    a.set_ylabel("mouth opening (lip gap / face height)")
    a.set_xlabel("frame (test split)")
    a.set_title(title)
    a.grid(alpha=0.3)
    b = a.twinx()
    b.fill_between(frames, envelope, envelope.min(), color="tab:blue", alpha=0.15, label="speech band energy")
    b.set_ylabel("300-3000 Hz energy, dB", color="tab:blue")
    lines = a.get_legend_handles_labels()
    extra = b.get_legend_handles_labels()
    a.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper right", fontsize=8)
    c = ax[1, 0]
    for key, colour in (("gt", "black"), ("render", "tab:red")):
        s = sync.get(key) or {}
        if s.get("curve"):
            lags = np.arange(-s["max_lag"], s["max_lag"] + 1)
            if s.get("offset_frames") is None:  # not measurable (metrics.sync_offset gives the reason)
                label = f"{key}: no offset ({s.get('reason', 'not measurable')})"
            else:
                label = (f"{key}: offset {s['offset_frames']:+d} frames, r {s['peak_r']:.2f}"
                         + ("" if s["reliable"] else " (unreliable)"))
            c.plot(lags, s["curve"], color=colour, marker=".", label=label)
    c.axvline(0, color="grey", lw=0.8)
    c.set_xlabel("lag, frames (> 0: audio later than the mouth)")
    c.set_ylabel("correlation")
    c.grid(alpha=0.3)
    if c.get_legend_handles_labels()[0]:
        c.legend(fontsize=8)
    else:
        why = (sync.get("render") or {}).get("reason", "")
        c.text(0.5, 0.5, f"lip-audio offset not measurable: {why}", ha="center", va="center",
               transform=c.transAxes, fontsize=8, wrap=True)
    _save(plt, fig, path)


def plot_pose(path: Path, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray, test: tuple[int, int],
              title: str) -> None:
    plt, fig, ax = _figure()
    a = ax[0, 0]
    t = np.arange(len(yaw))
    for name, v in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
        a.plot(t, np.degrees(v), label=name, lw=1.0)
    a.axvspan(test[0], test[1], color="grey", alpha=0.2, label="test split")
    a.set_xlabel("frame")
    a.set_ylabel("degrees")
    a.set_title(title)
    a.grid(alpha=0.3)
    a.legend(loc="upper right", fontsize=8, ncol=4)
    _save(plt, fig, path)


def plot_strip(path: Path, gt: list[np.ndarray], render: list[np.ndarray], frames: list[int], title: str) -> None:
    """Rows: one per chosen frame; columns: ground truth | render | |error| x 4."""
    rows = max(1, len(frames))
    plt, fig, ax = _figure(rows, 3, (7.5, 2.5 * rows))
    for r, (g, p, f) in enumerate(zip(gt, render, frames)):
        err = np.clip(np.abs(g.astype(np.int16) - p.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        for c, (img, name) in enumerate(((g, "ground truth"), (p, "render"), (err, "|error| x4"))):
            ax[r, c].imshow(img)
            ax[r, c].set_xticks([])
            ax[r, c].set_yticks([])
            if r == 0:
                ax[r, c].set_title(name, fontsize=9)
        ax[r, 0].set_ylabel(f"frame {f}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(plt, fig, path)
