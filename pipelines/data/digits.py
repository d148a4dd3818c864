"""`data.source: digits`: scikit-learn's `load_digits` (1,797 8x8 images), no files needed."""

from __future__ import annotations

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.base import ArrayItems, DatasetSource, LazySource, LazySplit, split_indices


def open_digits(cfg: DataConfig, seed: int) -> LazySource:
    """The 1,797 images (0..16 scaled to 0..255), split by data.test_fraction."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    targets = np.asarray(bunch.target, dtype=np.int64)
    train, test = split_indices(len(pixels), cfg.test_fraction, seed, "scikit-learn digits")
    splits = {
        "train": LazySplit(ArrayItems.of(pixels[train], "digits/train"), targets[train]),
        "test": LazySplit(ArrayItems.of(pixels[test], "digits/test"), targets[test]),
    }
    classes = [str(d) for d in range(10)]
    return LazySource(splits, classes, "scikit-learn load_digits (8x8, 1797 images)")


DIGITS = DatasetSource(
    open=open_digits,
    root="none (scikit-learn's `load_digits`, 1,797 8x8 images, 0..16 scaled to 0..255)",
    splits="`data.test_fraction` (> 0: it has no test split of its own)",
    labels="the digit",
    needs_root=False,
)
