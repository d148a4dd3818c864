"""`data.source: mnist | fashion_mnist`: torchvision's MNIST / Fashion-MNIST idx files."""

from __future__ import annotations

import gzip
import struct
from functools import partial
from pathlib import Path

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.base import ArrayItems, DatasetSource, LazySource, LazySplit, require_root


def open_mnist(folder: str, cfg: DataConfig, seed: int) -> LazySource:
    """torchvision's `<root>/<folder>/raw/{train,t10k}-*` files (folder MNIST or FashionMNIST).

    `seed` is unused: the files hold both splits.
    """
    import torchvision

    root = require_root(cfg)
    cls = getattr(torchvision.datasets, folder)
    raw_dir = root / folder / "raw"
    names = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    if cfg.download and not all(_find_idx(raw_dir, n) for n in names):
        cls(str(root), train=True, download=True)  # fetches all four files into raw_dir
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_idx_path(raw_dir, f"{prefix}-images-idx3-ubyte", cfg), 3)
        labels = _read_idx(_idx_path(raw_dir, f"{prefix}-labels-idx1-ubyte", cfg), 1)
        if len(images) != len(labels):
            raise ValueError(f"{raw_dir}/{prefix}-*: {len(images)} images but {len(labels)} labels")
        splits[split] = LazySplit(ArrayItems.of(images, f"{raw_dir}/{prefix}"), labels)
    classes = [str(c) for c in cls.classes]
    return LazySource(splits, classes, f"torchvision {cls.__name__} from {root}")


def _find_idx(raw_dir: Path, name: str) -> Path | None:
    for p in (raw_dir / name, raw_dir / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def _idx_path(raw_dir: Path, name: str, cfg: DataConfig) -> Path:
    path = _find_idx(raw_dir, name)
    if path is None:
        raise FileNotFoundError(
            f"data.source={cfg.source}: {raw_dir / name}[.gz] not found; expected the torchvision "
            f"layout <root>/{raw_dir.parent.name}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}"
            f"-ubyte[.gz] under data.root={cfg.root}, or set data.download: true (needs network)"
        )
    return path


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (MNIST format, optionally gzipped) of unsigned bytes with `ndim` dims."""
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file: {e}") from None
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path}: not an IDX ubyte file with {ndim} dims (bad header)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} bytes (truncated?)")
    return body.reshape(dims)


def _source(folder: str) -> DatasetSource:
    return DatasetSource(
        open=partial(open_mnist, folder),
        root=f"torchvision layout: `<root>/{folder}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}"
        "-ubyte[.gz]`; `data.download: true` fetches them",
        splits="the files'",
        labels="the class",
        downloads=True,
    )


MNIST = _source("MNIST")
FASHION_MNIST = _source("FashionMNIST")
