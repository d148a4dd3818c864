"""`data.source: cifar10`: the CIFAR-10 python batches (`cifar-10-python.tar.gz` unpacked)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.base import ArrayItems, DatasetSource, LazySource, LazySplit, require_root

CIFAR10_CLASSES = (  # batches.meta order
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
)


def open_cifar10(cfg: DataConfig, seed: int) -> LazySource:
    """The five train batches and the test batch, in file order (`seed` unused)."""
    root = require_root(cfg)
    folder = root / "cifar-10-batches-py"
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if cfg.download and not all((folder / f).is_file() for f in sum(files.values(), [])):
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    splits = {}
    for split, names in files.items():
        batches = [_read_cifar_batch(folder / n, cfg) for n in names]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        splits[split] = LazySplit(ArrayItems.of(images, f"{folder}/{split}"), labels)
    return LazySource(splits, list(CIFAR10_CLASSES), f"CIFAR-10 python batches from {folder}")


# What the official batches (and numpy pickles of them) need to unpickle; anything else, e.g. a
# `__reduce__` that calls os.system, is refused: a batch file must not run code.
CIFAR_PICKLE_GLOBALS = frozenset(
    [(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]
    + [(m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (only numpy arrays are expected; a batch file "
                "that references other code is not an official CIFAR-10 batch)"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: (N, 32, 32, 3) uint8 images and (N,) int64 labels."""
    if not path.is_file():
        raise FileNotFoundError(
            f"data.source=cifar10: {path} not found; expected the torchvision layout "
            "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} (unpack "
            f"cifar-10-python.tar.gz into data.root={cfg.root}), or set data.download: true "
            "(needs network)"
        )
    try:
        with path.open("rb") as f:
            entry = _DataOnlyUnpickler(f, encoding="latin1").load()  # latin1: as torchvision
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # any unpickling/shape problem: name the file
        raise ValueError(f"{path}: not a CIFAR-10 python batch: {e}") from None
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.transpose(0, 2, 3, 1), labels  # (N,3,32,32) -> (N,32,32,3)


CIFAR10 = DatasetSource(
    open=open_cifar10,
    root="`<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}` (unpacked "
    "`cifar-10-python.tar.gz`); `data.download: true` fetches it",
    splits="the files'",
    labels="the class (`batches.meta` order)",
    downloads=True,
)
