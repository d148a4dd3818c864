"""Figures for the sample and evaluate stages: image grids, progressive generation, line plots."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
from PIL import Image

from pipelines.infra.files import atomic_path

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _check_uint8(images: torch.Tensor, ndim: int, name: str) -> None:
    if images.dtype != torch.uint8 or images.ndim != ndim:
        raise ValueError(
            f"{name}: expected a uint8 tensor with {ndim} dims, got {images.dtype} "
            f"with shape {tuple(images.shape)}"
        )
    if images.shape[-3] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got shape {tuple(images.shape)}")


def make_grid(
    images: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile images row-major into one picture.

    Args:
        images: (N, C, H, W) uint8, C in {1, 3}.
        nrow: images per row.
        padding: pixels between and around images.
        pad_value: grey level of the padding.

    Returns:
        (rows*(H+p)+p, nrow*(W+p)+p, C) uint8 array (HWC, for PIL).
    """
    _check_uint8(images, 4, "make_grid(images)")
    if nrow < 1 or images.shape[0] < 1:
        raise ValueError(f"make_grid: need nrow >= 1 and >= 1 image, got {nrow}, {images.shape}")
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value)
    grid = grid.astype(np.uint8)
    hwc = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    for k in range(n):
        r, col = divmod(k, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = hwc[k]
    return grid


def _to_pil(grid: np.ndarray) -> Image.Image:
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def display_scale(resolution: int) -> int:
    """The nearest-neighbour enlargement that shows a `resolution`² image at about 64 pixels."""
    return max(1, 64 // resolution)


def grid_image(images: torch.Tensor, nrow: int | None = None, scale: int = 1) -> Image.Image:
    """A grid of (N, C, H, W) uint8 images as a PIL image; `nrow` defaults to ~sqrt(N).

    `scale` enlarges pixels by nearest-neighbour (tiny 8x8/16x16 images stay visible).
    """
    nrow = nrow or max(1, int(np.ceil(np.sqrt(images.shape[0]))))
    img = _to_pil(make_grid(images, nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_grid(
    images: torch.Tensor, path: PathLike, nrow: int | None = None, scale: int = 1
) -> Path:
    """Write `grid_image(images, nrow, scale)` as a lossless PNG."""
    img = grid_image(images, nrow, scale)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    log.info("wrote %s (%d images)", path, images.shape[0])
    return Path(path)


def save_progressive(
    frames: torch.Tensor, timesteps: Sequence[int], path: PathLike, dpi: int = 100
) -> Path:
    """Progressive generation (Ho et al. 2020, Fig. 6): predicted x0 over the reverse process.

    Args:
        frames: (K, N, C, H, W) uint8; frame k is x0_pred at `timesteps[k]`, image n = one seed.
        timesteps: K labels (t of each frame, decreasing toward 0).
        path: PNG path; one row per image, one column per frame.
    """
    _check_uint8(frames, 5, "save_progressive(frames)")
    k, n = frames.shape[:2]
    if len(timesteps) != k:
        raise ValueError(f"save_progressive: {k} frames but {len(timesteps)} timestep labels")
    fig = Figure(figsize=(0.8 * k + 0.4, 0.8 * n + 0.6))
    axes = fig.subplots(n, k, squeeze=False)
    for col in range(k):
        for row in range(n):
            ax = axes[row][col]
            img = frames[col, row].permute(1, 2, 0).cpu().numpy()  # (H, W, C)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(f"t={timesteps[col]}", fontsize=7)
    fig.suptitle("predicted $\\hat{x}_0$ during sampling", fontsize=9)
    return _save_fig(fig, path, dpi)


def save_image_table(
    cells: torch.Tensor,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    path: PathLike,
    dpi: int = 100,
) -> Path:
    """A table of images with labelled rows and columns (e.g. paper Fig. 7: one row per t).

    Args:
        cells: (R, K, C, H, W) uint8; cells[r, k] is drawn in row r, column k.
        row_labels: R labels (left of each row); col_labels: K labels (above the first row).
        title: the figure's title (what it shows, on which data); may hold newlines.
        path: PNG path; the bytes depend only on the inputs.
    """
    _check_uint8(cells, 5, "save_image_table(cells)")
    r, k = cells.shape[:2]
    if len(row_labels) != r or len(col_labels) != k:
        raise ValueError(
            f"save_image_table: {r} x {k} cells but {len(row_labels)} row and "
            f"{len(col_labels)} column labels"
        )
    width = 0.9 * k + 0.9  # inches; about 18 characters an inch at 7 pt
    wrapped = "\n".join(textwrap.fill(part, int(18 * width)) for part in title.split("\n"))
    lines = wrapped.count("\n") + 1
    fig = Figure(figsize=(width, 0.9 * r + 0.15 * lines + 0.3), layout="constrained")
    axes = fig.subplots(r, k, squeeze=False)
    for row in range(r):
        for col in range(k):
            ax = axes[row][col]
            img = cells[row, col].permute(1, 2, 0).cpu().numpy()  # (H, W, C)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(row_labels[row], fontsize=7)
    for col in range(k):
        axes[0][col].set_title(col_labels[col], fontsize=7)
    fig.suptitle(wrapped, fontsize=7)
    return _save_fig(fig, path, dpi)


def save_line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: PathLike,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logy: bool = False,
) -> Path:
    """A simple multi-series line plot (e.g. NLL terms over t, FID over training steps)."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"save_line_plot: series {name!r} has {len(ys)} points, x {len(x)}")
        ax.plot(list(x), list(ys), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return _save_fig(fig, path, 100)


def _save_fig(fig: Figure, path: PathLike, dpi: int) -> Path:
    with atomic_path(path) as tmp:  # no version string: stable bytes
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    log.info("wrote %s", path)
    return Path(path)
