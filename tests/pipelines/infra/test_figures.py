"""Figures: grid layout is pixel-exact and lossless, progressive/line plots write valid PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.infra.figures import (
    make_grid,
    save_grid,
    save_image_table,
    save_line_plot,
    save_progressive,
)


def _images(n: int, c: int, h: int = 4, w: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def test_make_grid_places_each_image_row_major() -> None:
    images = _images(5, 3)
    grid = make_grid(images, nrow=3, padding=1, pad_value=7)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 3)
    for k in range(5):
        r, c = divmod(k, 3)
        y, x = 1 + r * 5, 1 + c * 6
        np.testing.assert_array_equal(grid[y : y + 4, x : x + 5], images[k].permute(1, 2, 0))
    # the unused 6th slot and the borders are padding
    assert (grid[6:10, 13:18] == 7).all() and (grid[0] == 7).all()


def test_save_grid_is_lossless_grayscale(tmp_path: Path) -> None:
    images = _images(4, 1)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2)
    img = Image.open(path)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), make_grid(images, 2)[..., 0])


def test_save_grid_scale_and_default_nrow(tmp_path: Path) -> None:
    images = _images(9, 3, 2, 2)
    img = Image.open(save_grid(images, tmp_path / "g.png", scale=3))
    assert img.size == (3 * (3 * 4 + 2), 3 * (3 * 4 + 2))  # nrow = 3 for 9 images


def test_save_grid_rejects_float_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_grid(torch.zeros(2, 3, 4, 4), tmp_path / "g.png")


def test_save_progressive_writes_png_and_checks_labels(tmp_path: Path) -> None:
    frames = torch.stack([_images(2, 1)] * 3)  # (K=3, N=2, 1, 4, 5)
    path = save_progressive(frames, [10, 5, 0], tmp_path / "prog.png")
    assert Image.open(path).format == "PNG"
    with pytest.raises(ValueError, match="3 frames but 2"):
        save_progressive(frames, [10, 0], tmp_path / "bad.png")


def test_save_image_table_writes_stable_png_and_checks_labels(tmp_path: Path) -> None:
    cells = torch.stack([_images(3, 1)] * 2)  # (R=2, K=3, 1, 4, 5)
    a = save_image_table(
        cells, ["t=9", "t=1"], ["x_t", "1", "2"], "what\non which data", tmp_path / "a.png"
    )
    b = save_image_table(
        cells, ["t=9", "t=1"], ["x_t", "1", "2"], "what\non which data", tmp_path / "b.png"
    )
    assert Image.open(a).format == "PNG" and a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError, match="2 x 3 cells but 1 row and 3 column labels"):
        save_image_table(cells, ["t=9"], ["x_t", "1", "2"], "t", tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        save_image_table(cells.float(), ["a", "b"], ["x", "1", "2"], "t", tmp_path / "bad.png")


def test_save_line_plot(tmp_path: Path) -> None:
    path = save_line_plot([0, 1, 2], {"a": [1, 2, 3], "b": [3, 2, 1]}, tmp_path / "l.png", "x", "y")
    assert Image.open(path).format == "PNG"
    with pytest.raises(ValueError, match="series 'a'"):
        save_line_plot([0, 1], {"a": [1]}, tmp_path / "m.png", "x", "y")
