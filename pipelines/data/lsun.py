"""`data.source: lsun`: one LSUN category as distributed, an LMDB (data.mdb, lock.mdb) of
encoded images (webp/jpeg) keyed by id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.config import DataConfig
from pipelines.data.base import (
    DatasetSource,
    LazySource,
    LazySplit,
    decode_image,
    digest,
    require_root,
    split_indices,
    stat_bytes,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LmdbItems:
    """Values `keys[i]` of the LMDB environment in folder `path` (encoded images).

    Memory: the key list only (LSUN's ids are 40-byte hex strings: ~90 bytes each as Python
    bytes, ~270 MiB for Bedroom's 3M). The environment is opened read-only without the lock
    file (lock=False: the distributed LMDB is never written), once per process (`_lmdb_env`;
    py-lmdb refuses a second open of one environment), never pickled: a Ray task re-opens it.
    """

    path: str
    keys: list[bytes]

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int) -> Image.Image:
        with _lmdb_env(self.path).begin(write=False) as txn:
            value = txn.get(self.keys[i])
        if value is None:
            raise ValueError(
                f"{self.describe(i)}: key not found in the LMDB (changed since listed?)"
            )
        return decode_image(bytes(value), self.describe(i))

    def describe(self, i: int) -> str:
        return f"{self.path}:{self.keys[i].decode('utf-8', 'backslashreplace')}"

    def take(self, index: np.ndarray) -> LmdbItems:
        return LmdbItems(self.path, [self.keys[int(i)] for i in index])

    def identity(self) -> str:
        return digest(stat_bytes(Path(self.path) / "data.mdb"), *self.keys)


def _open_lmdb(folder: Path) -> Any:
    import lmdb

    if not folder.is_dir():
        raise FileNotFoundError(
            f"data.root: {folder} is not a folder; expected an LSUN LMDB folder holding data.mdb "
            "(e.g. church_outdoor_train_lmdb/, unpacked from church_outdoor_train_lmdb.zip)"
        )
    if not (folder / "data.mdb").is_file():
        raise FileNotFoundError(
            f"{folder / 'data.mdb'} not found; expected an LSUN LMDB folder (data.mdb, lock.mdb)"
        )
    try:
        return lmdb.open(str(folder), readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as e:
        raise ValueError(f"{folder}: not a readable LMDB environment: {e}") from None


_LMDB_ENVS: dict[str, Any] = {}  # this process's open environments, by resolved folder


def _lmdb_env(path: str) -> Any:
    key = str(Path(path).resolve())
    if key not in _LMDB_ENVS:
        _LMDB_ENVS[key] = _open_lmdb(Path(path))
    return _LMDB_ENVS[key]


def _lsun_keys(folder: Path) -> list[bytes]:
    """Every key in LMDB cursor order (sorted bytes order), values not read."""
    with _lmdb_env(str(folder)).begin(write=False) as txn:
        return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]


def open_lsun(cfg: DataConfig, seed: int) -> LazySource:
    """One LSUN category: keys in sorted order split by data.test_fraction (LSUN's train LMDBs
    have no test split); every label 0, the one class named after the folder."""
    root = require_root(cfg)
    keys = _lsun_keys(root)
    if not keys:
        raise ValueError(f"{root}: the LMDB holds no entries; expected encoded LSUN images")
    train, test = split_indices(len(keys), cfg.test_fraction, seed, f"the LMDB {root}")
    items = LmdbItems(str(root), keys)
    splits = {
        "train": LazySplit(items.take(train), np.zeros(len(train), dtype=np.int64)),
        "test": LazySplit(items.take(test), np.zeros(len(test), dtype=np.int64)),
    }
    name = root.resolve().name
    logger.info("lsun %s: %d images", root, len(keys))
    description = f"LSUN LMDB {root} ({len(keys)} images split by data.test_fraction)"
    return LazySource(splits, [name], description)


LSUN = DatasetSource(
    open=open_lsun,
    root="an LSUN LMDB folder (`data.mdb`, `lock.mdb`)",
    splits="`data.test_fraction` (LSUN has no test split for these categories)",
    labels="all 0, one class named after the folder",
)
