"""The dataset sources by name (`data.source`): one line per source.

A source is one file that builds a `DatasetSource` (`pipelines.data.base`): how it is listed,
what `data.root` is, where its splits and labels come from, whether it needs `data.root` and
whether `data.download` can fetch it. Everything that lists sources reads `SOURCES`: the check
of `data.source` and of what a source declares (`check_source`), `open_source`, and the table
in docs/data-sources.md (`docs_table`, checked by tests/pipelines/data/test_registry.py).

`open_source` lists a source lazily (`LazySource`: per split the items in stored order and
their labels, nothing decoded); `preprocess` decodes a few items (one shard) to uint8 arrays.
`load_source` decodes everything at once (tests, small sets).

`pipelines.config` types `data.source` as a string only: importing the sources there would make
every stage depend on their code in dvc.yaml. The shard stage checks it here before any work.
"""

from __future__ import annotations

import numpy as np

from ddpm_core.config import ConfigError
from pipelines.artifacts.shards import SourceData, Split
from pipelines.config import DataConfig
from pipelines.data import cifar10, digits, image_folder, lsun, mnist, parquet
from pipelines.data.base import (
    DatasetSource,
    LazySource,
    LazySplit,
    ZipItems,
    cap_indices,
    require_root,
    split_indices,
)
from pipelines.data.preprocess import center_crop, first_size, preprocess

__all__ = [  # what callers import from here (the items and preprocessing live next door)
    "SOURCES",
    "LazySource",
    "LazySplit",
    "ZipItems",
    "center_crop",
    "check_source",
    "docs_table",
    "load_source",
    "open_source",
    "preprocess",
    "source_of",
    "split_indices",
]

SOURCES: dict[str, DatasetSource] = {
    "digits": digits.DIGITS,
    "mnist": mnist.MNIST,
    "fashion_mnist": mnist.FASHION_MNIST,
    "cifar10": cifar10.CIFAR10,
    "image_folder": image_folder.IMAGE_FOLDER,
    "lsun": lsun.LSUN,
    "parquet": parquet.PARQUET,
}


def source_of(cfg: DataConfig) -> DatasetSource:
    """The registered source `data.source`; ConfigError listing the registered names."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"data.source: got {cfg.source!r}, expected one of {list(SOURCES)}")
    return SOURCES[cfg.source]


def check_source(cfg: DataConfig) -> DatasetSource:
    """`data.*` against what `data.source` declares; ConfigError naming the key."""
    source = source_of(cfg)
    if source.needs_root:
        require_root(cfg)
    if cfg.download and not source.downloads:
        raise ConfigError(
            f"data.download: got True, but data.source={cfg.source} cannot be downloaded; "
            f"expected false (sources that can: {[n for n, s in SOURCES.items() if s.downloads]})"
        )
    return source


def open_source(cfg: DataConfig, seed: int) -> LazySource:
    """List `cfg.source`, split it and cap it; nothing is decoded (item lists only).

    Item order is the stored order of the shards (`split_indices`, `cap_indices`).
    """
    listed = check_source(cfg).open(cfg, seed)
    if not len(listed.splits["train"]):
        raise ValueError(
            f"data.source={cfg.source}: the train split is empty ({listed.description})"
        )
    splits = {}
    for name, split in listed.splits.items():
        if name != "train" and not len(split):
            continue  # data.test_fraction 0: no test split at all (not an empty one)
        keep = cap_indices(len(split), cfg.max_images, seed)
        splits[name] = LazySplit(split.items, split.labels.astype(np.int64)).take(keep)
    return LazySource(splits, listed.classes, listed.description)


def load_source(cfg: DataConfig, seed: int) -> SourceData[Split]:
    """`open_source`, every split decoded and brought to (channels, resolution, resolution).

    Holds the whole dataset in memory: for tests and small sets; the shard stage streams.
    """
    lazy = open_source(cfg, seed)
    splits = {
        name: Split(preprocess(s.items, cfg, first_size(s, cfg)), s.labels)
        for name, s in lazy.splits.items()
    }
    return SourceData(splits, lazy.classes, lazy.description)


def docs_table() -> str:
    """The table of docs/data-sources.md, one row per registered source (markdown)."""
    rows = [
        "| `data.source` | `data.root` | splits | labels |",
        "|---|---|---|---|",
        *(f"| `{n}` | {s.root} | {s.splits} | {s.labels} |" for n, s in SOURCES.items()),
    ]
    return "\n".join(rows)
