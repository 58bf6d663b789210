"""Pictures of a run (matplotlib, Agg backend: no display needed).

`image_grid` tiles images into one array; `save_samples_figure` picks the picture for the data:
a grid for images (N, H, W, C), a histogram over the true density or the data for 1-D (N, 1),
a scatter over the data for 2-D (N, 2). `save_image_panels` puts image grids side by side, one per
setting, with titles and row labels (the experiments' comparison pictures). `save_loss_curve`
plots metrics.jsonl's loss.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["image_grid", "save_image_grid", "save_image_panels", "save_samples_figure", "save_loss_curve"]


def image_grid(images: np.ndarray, *, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles (N, H, W, C) images in [-1, 1] into one uint8 (rows*(H+pad)-pad, cols*(W+pad)-pad, C) array.

    ncols defaults to ceil(sqrt(N)); the padding is black; values are clipped to [-1, 1] then mapped
    to {0..255} by round((x + 1) * 127.5).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"image_grid expects (N, H, W, C) images, got shape {x.shape}")
    n, h, w, c = x.shape
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    u8 = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    grid = np.zeros((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = u8[i]
    return grid


def save_image_grid(path: str | os.PathLike, images: np.ndarray, *, ncols: int | None = None) -> None:
    """Writes `image_grid(images)` as a PNG (grey for C = 1)."""
    grid = image_grid(images, ncols=ncols)
    plt.imsave(os.fspath(path), grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)


def save_image_panels(
    path: str | os.PathLike,
    panels: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    panel_width: float = 3.2,
) -> None:
    """Writes one figure of image grids side by side: panel j is ``image_grid(panels[j], ncols=ncols)``.

    panels: (N_j, H, W, C) images in [-1, 1] (grey for C = 1). titles: one per panel (or None).
    row_labels: the labels of the grid rows, drawn on every panel's y-axis (e.g. one row per class,
    or one row per sampler setting); without them the axes are hidden. title: the figure's title.
    panel_width: inches per panel (the height follows the grid's aspect ratio).
    """
    if not panels:
        raise ValueError("save_image_panels needs at least one panel, got 0")
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"got {len(titles)} titles for {len(panels)} panels")
    grids = [image_grid(x, ncols=ncols) for x in panels]
    num_rows = [(g.shape[0] + 1) // (np.shape(x)[1] + 1) for g, x in zip(grids, panels)]  # rows: H + pad (1)
    if row_labels is not None and any(n != len(row_labels) for n in num_rows):
        raise ValueError(f"the panels have {num_rows} rows of images, got {len(row_labels)} row_labels")
    height = panel_width * max(g.shape[0] / g.shape[1] for g in grids) + 0.6  # + room for titles and labels
    fig, axes = plt.subplots(1, len(grids), figsize=(panel_width * len(grids), height), squeeze=False)
    if title and titles is None and len(grids) == 1:  # one panel: its title sits right above it
        titles, title = [title], None
    for j, (ax, grid) in enumerate(zip(axes[0], grids)):
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        if titles is not None:
            ax.set_title(titles[j], fontsize=8)
        if row_labels is None:
            ax.axis("off")
            continue
        ax.set_xticks([])
        h = np.shape(panels[j])[1]
        ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(num_rows[j])])  # row i's centre (pixel units)
        ax.set_yticklabels(list(row_labels), fontsize=7)
    fig.tight_layout()
    if title:  # right above the panels (with their titles); the saved picture is cropped to what is drawn
        fig.canvas.draw()
        top = max(ax.get_tightbbox(fig.canvas.get_renderer()).y1 for ax in axes[0]) / fig.bbox.height
        fig.suptitle(title, fontsize=9, y=top + 0.01, va="bottom")
    fig.savefig(os.fspath(path), dpi=150, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def save_samples_figure(
    path: str | os.PathLike,
    samples: np.ndarray,
    *,
    data: np.ndarray | None = None,
    density: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str = "",
) -> None:
    """The picture of `samples` for their kind (see the module docstring).

    1-D: histogram of the samples, with `density` (a function of a (M,) grid -> (M,) pdf) drawn as
    a line if given, else the data's histogram. 2-D: scatter of the samples over the data.
    """
    x = np.asarray(samples)
    if x.ndim == 4:
        save_image_grid(path, x[:256])
        return
    if x.ndim != 2 or x.shape[1] not in (1, 2):
        raise ValueError(f"save_samples_figure: expected (N, H, W, C), (N, 1) or (N, 2) samples, got shape {x.shape}")
    fig, ax = plt.subplots(figsize=(5, 4) if x.shape[1] == 1 else (5, 5))
    if x.shape[1] == 1:
        lo, hi = np.percentile(x, [0.1, 99.9]) if data is None else np.percentile(np.concatenate([x, data]), [0.1, 99.9])
        bins = np.linspace(lo - 0.5, hi + 0.5, 80)
        if data is not None and density is None:
            ax.hist(np.asarray(data)[:, 0], bins=bins, density=True, alpha=0.4, color="gray", label="data")
        ax.hist(x[:, 0], bins=bins, density=True, alpha=0.6, label="samples")
        if density is not None:
            grid = np.linspace(bins[0], bins[-1], 400)
            ax.plot(grid, density(grid), "k-", lw=1.5, label="true density")
        ax.set_xlabel("x")
    else:
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=3, c="gray", alpha=0.4, label="data")
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.6, label="samples")
        ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)


def save_loss_curve(path: str | os.PathLike, steps: Sequence[int], losses: Sequence[float]) -> None:
    """Loss against step (log y-axis when all losses are positive)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.asarray(steps), np.asarray(losses), lw=1)
    if len(losses) and np.all(np.asarray(losses) > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)
