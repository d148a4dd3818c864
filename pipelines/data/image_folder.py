"""`data.source: image_folder`: a folder or a `.zip` of image files (read in place)."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from pipelines.config import DataConfig
from pipelines.data.base import (
    DatasetSource,
    FileItems,
    LazySource,
    LazySplit,
    ZipItems,
    require_root,
    split_indices,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_IMAGE_BYTES = 64 * 2**20  # one image member of a zip, uncompressed


def open_image_folder(cfg: DataConfig, seed: int) -> LazySource:
    """train/ and test/ top-level folders if both exist, else one pool split by test_fraction."""
    return _image_folder(_tree_items(require_root(cfg)), cfg, seed)


def _tree_items(root: Path) -> FileItems | ZipItems:
    """The image files under a folder or inside a .zip (read in place), by relative posix path.

    Only names are listed (and checked: no symlink out of the folder, no oversized zip member).
    """
    if not root.exists():
        raise FileNotFoundError(f"data.root: {root} does not exist (data.source=image_folder)")
    if root.is_dir():
        names = _image_names(
            [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        )
        inside = root.resolve()
        for n in names:  # a link may point anywhere: only files inside the folder are read
            if not (root / n).resolve().is_relative_to(inside):
                raise ValueError(
                    f"{root / n}: a symlink to {(root / n).resolve()}, outside data.root="
                    f"{root}; refused (copy the file into the folder)"
                )
        return FileItems(str(root), names)
    try:
        zf = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{root}: not a folder or a readable .zip file: {e}") from None
    with zf:
        names = _image_names(zf.namelist())
        for n in names:  # the declared size bounds what zf.read inflates
            size = zf.getinfo(n).file_size
            if size > MAX_IMAGE_BYTES:
                raise ValueError(
                    f"{root}:{n}: {size} bytes uncompressed, over the {MAX_IMAGE_BYTES} "
                    "byte cap for one image member (a zip bomb or not an image)"
                )
    return ZipItems(str(root), names)


def _image_names(names: list[str]) -> list[str]:
    def visible(n: str) -> bool:
        return not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))

    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES) and visible(n))


def _tree_where(tree: FileItems | ZipItems, name: str) -> str:
    return f"{tree.root}:{name}" if isinstance(tree, ZipItems) else str(Path(tree.root) / name)


def _image_folder(tree: FileItems | ZipItems, cfg: DataConfig, seed: int) -> LazySource:
    root, names = tree.root, tree.names
    if not names:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if {"train", "test"} <= tops:
        pools = {
            s: np.array([i for i, n in enumerate(names) if n.startswith(f"{s}/")], dtype=np.int64)
            for s in ("train", "test")
        }
        rel = {s: [names[i].split("/", 1)[1] for i in pools[s]] for s in pools}
        how = "train/ and test/ folders"
    else:
        only = [f"{s}/" for s in ("train", "test") if all(n.startswith(f"{s}/") for n in names)]
        prefix = only[0] if only else ""  # e.g. a zip holding only test/<class>/...
        pool = np.array([i for i, n in enumerate(names) if n.startswith(prefix)], dtype=np.int64)
        train, test = split_indices(
            len(pool), cfg.test_fraction, seed, _tree_where(tree, prefix or ".")
        )
        pools = {"train": pool[train], "test": pool[test]}
        rel = {s: [names[i][len(prefix) :] for i in pools[s]] for s in pools}
        how = f"{prefix or 'all images'} split by data.test_fraction={cfg.test_fraction}"
    classes = sorted({_class_of(n) for rels in rel.values() for n in rels})
    label = {c: i for i, c in enumerate(classes)}
    splits = {
        s: LazySplit(
            tree.take(pools[s]),
            np.array([label[_class_of(n)] for n in rel[s]], dtype=np.int64),
        )
        for s in ("train", "test")
    }
    logger.info("image_folder %s: %d classes, %s", root, len(classes), how)
    return LazySource(splits, classes, f"image folder {root} ({how})")


def _class_of(relative: str) -> str:
    """The first folder under the split root, or '' for images directly in it."""
    return relative.split("/", 1)[0] if "/" in relative else ""


IMAGE_FOLDER = DatasetSource(
    open=open_image_folder,
    root=f"a folder or a `.zip` (read in place) of images "
    f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)})",
    splits="`train/` and `test/` top-level folders when both exist, else `data.test_fraction`",
    labels="the first folder under the split root (sorted), `''` for images directly in it",
)
