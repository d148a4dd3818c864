"""What a dataset source file imports: what it declares (`DatasetSource`), what it lists
(`Items`, `LazySplit`) and the shared split rule (`split_indices`).

A source lists, per split, its items in stored order and their labels; nothing is decoded
(`pipelines.data.preprocess` decodes one shard's items at a time). `Items` hold paths, keys and
indices, never open handles, so a Ray task that gets a shard's items re-opens what it reads.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ddpm_core.config import ConfigError
from ddpm_core.rng import SeedPurpose
from pipelines.artifacts.shards import SourceData
from pipelines.config import DataConfig


@dataclass(frozen=True)
class DatasetSource:
    """One `data.source`: how it is listed and what it declares (checked before any work by
    `pipelines.data.sources.check_source`; its docs row is generated from `root`, `splits` and
    `labels`).

    `open(cfg, seed)` lists every split (train; test unless data.test_fraction 0 empties it),
    uncapped, in stored order, labels (N,) int64; the registry caps and checks it.
    """

    open: Callable[[DataConfig, int], LazySource]
    root: str  # docs: what data.root is ("none (...)" when `needs_root` is False)
    splits: str  # docs: where train and test come from
    labels: str  # docs: what a label is
    needs_root: bool = True  # data.root must be set
    downloads: bool = False  # data.download: true can fetch it (otherwise refused)


@dataclass(frozen=True)
class LazySplit:
    """One split before decoding: `items` in stored order and their labels (N,) int64."""

    items: Items
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray | range) -> LazySplit:
        """The items at `index` (in that order), as a new split (small: one shard's refs)."""
        idx = np.asarray(index, dtype=np.int64)
        return LazySplit(self.items.take(idx), self.labels[idx])


LazySource = SourceData[LazySplit]  # every split of a source, listed, not decoded


def split_indices(
    n: int, test_fraction: float, seed: int, where: str = "the pool"
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, test) index split by a seeded permutation; both kept in natural order.

    `test_fraction` 0: everything is train (no test split). Otherwise ValueError naming `where`
    when either split would be empty (checked before any shard is written: FID against the test
    split and the NLL need test images).
    """
    if test_fraction == 0:  # no test split: train on the whole pool (the official 256^2 runs)
        return np.arange(n), np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng([seed, SeedPurpose.DATA_SPLIT]).permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(
            f"data.test_fraction={test_fraction}: {where} of {n} images gives {n_test} test and "
            f"{n - n_test} train images; expected at least one of each (raise or lower "
            "data.test_fraction, or add images)"
        )
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def cap_indices(n: int, max_images: int | None, seed: int) -> np.ndarray:
    """All of range(n), or a seeded subset of `max_images` in natural order (mixes classes)."""
    if max_images is None or n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, SeedPurpose.DATA_CAP]).permutation(n)[:max_images])


def require_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise ConfigError(f"data.root: got None, expected a folder for data.source={cfg.source}")
    return Path(cfg.root).expanduser()


# ----------------------------------------------------------------------------------------------
# Items: what a split lists, and how one item is loaded (picklable: re-opened in a Ray task)


class Items(Protocol):
    """N images in a fixed order, loaded one at a time; `take` selects a (small) subset."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> Image.Image: ...

    def describe(self, i: int) -> str: ...

    def take(self, index: np.ndarray) -> Items: ...

    def identity(self) -> str:
        """A digest of what decides the pixels: names, and sizes/mtimes or bytes of the files."""
        ...


@dataclass(frozen=True)
class ArrayItems:
    """Images of an array (N, H, W) or (N, H, W, 3) uint8 (MNIST idx, CIFAR batches, digits).

    Bounded by the fixed file sizes of those sources; `take` copies the selected rows only.
    """

    arrays: np.ndarray
    prefix: str
    numbers: np.ndarray  # (N,) the index shown in names: `prefix[numbers[i]]`

    @classmethod
    def of(cls, arrays: np.ndarray, prefix: str) -> ArrayItems:
        return cls(arrays, prefix, np.arange(len(arrays)))

    def __len__(self) -> int:
        return len(self.arrays)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i])

    def describe(self, i: int) -> str:
        return f"{self.prefix}[{int(self.numbers[i])}]"

    def take(self, index: np.ndarray) -> ArrayItems:
        return ArrayItems(self.arrays[index], self.prefix, self.numbers[index])

    def identity(self) -> str:
        return digest(self.prefix.encode(), np.ascontiguousarray(self.arrays).tobytes())


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise ValueError(f"{where}: cannot read image: {e}") from None
    return img


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def stat_bytes(path: Path) -> bytes:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}".encode()


@dataclass(frozen=True)
class FileItems:
    """Image files `root/names[i]` (relative posix paths)."""

    root: str
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        path = Path(self.root) / self.names[i]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read image: {e}") from None
        return decode_image(data, str(path))

    def describe(self, i: int) -> str:
        return str(Path(self.root) / self.names[i])

    def take(self, index: np.ndarray) -> FileItems:
        return FileItems(self.root, [self.names[int(i)] for i in index])

    def identity(self) -> str:
        root = Path(self.root)
        return digest(*(p for n in self.names for p in (n.encode(), stat_bytes(root / n))))


@dataclass(frozen=True)
class ZipItems:
    """Image members `names[i]` of the zip file `path`, read in place (opened once per process
    and object, never pickled: a Ray task re-opens the zip)."""

    path: str
    names: list[str]
    _zip: list[zipfile.ZipFile] = field(default_factory=list, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "names": self.names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "path", state["path"])
        object.__setattr__(self, "names", state["names"])
        object.__setattr__(self, "_zip", [])

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        if not self._zip:
            self._zip.append(zipfile.ZipFile(self.path))
        return decode_image(self._zip[0].read(self.names[i]), self.describe(i))

    @property
    def root(self) -> str:
        return self.path

    def describe(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}"

    def take(self, index: np.ndarray) -> ZipItems:
        return ZipItems(self.path, [self.names[int(i)] for i in index])

    def identity(self) -> str:
        return digest(stat_bytes(Path(self.path)), *(n.encode() for n in self.names))
