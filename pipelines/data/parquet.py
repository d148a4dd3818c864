"""Parquet datasets (`data.source: parquet`) in the Hugging Face Hub layout, read with pyarrow.

`data.root` is one `.parquet` file, a folder (every `*.parquet` under it, sorted), or a glob
(`data/celebahq/data/train-*.parquet`). The Hub writes `data/<split>-00000-of-000NN.parquet`,
images in a struct column `{bytes, path}` (or a plain binary column) named `data.image_column`
and int class labels in `data.label_column` (null: none, every label 0). Files named `train-*`
and `test-*` (or under `train/` and `test/`) are those splits; otherwise every file is one pool
split by `data.test_fraction`.

Listing reads only the footers (row counts per row group) and the label column, one row group at
a time; loading image i reads the one row group that holds it (only the image column) and keeps
it for the next image, so memory is bounded by one row group, however large the files.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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

HUB_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d+-of-\d+\.parquet$")  # train-00000-of-00004


@dataclass(frozen=True)
class ParquetItems:
    """Rows `rows[i]` of file `files[file_of[i]]`, images in column `column` (encoded bytes).

    `group_ends[f]` (G,) are the cumulative row counts of file f's row groups. Memory: 12 bytes
    per row of refs, plus the one row group this process read last (`_group`: never pickled, a
    Ray task reads its own).
    """

    files: tuple[str, ...]
    group_ends: tuple[np.ndarray, ...]
    file_of: np.ndarray  # (N,) int32
    row_of: np.ndarray  # (N,) int64, row within its file
    column: str
    _group: list[tuple[int, int, pa.Array]] = field(default_factory=list, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("files", "group_ends", "file_of", "row_of", "column")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in {**state, "_group": []}.items():
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return len(self.row_of)

    def describe(self, i: int) -> str:
        return f"{self.files[int(self.file_of[i])]}: row {int(self.row_of[i])}"

    def take(self, index: np.ndarray) -> ParquetItems:
        idx = np.asarray(index, dtype=np.int64)
        return ParquetItems(
            self.files, self.group_ends, self.file_of[idx], self.row_of[idx], self.column
        )

    def identity(self) -> str:
        files = (p for f in self.files for p in (f.encode(), stat_bytes(Path(f))))
        return digest(self.column.encode(), *files, self.file_of.tobytes(), self.row_of.tobytes())

    def load(self, i: int) -> Image.Image:
        f, row = int(self.file_of[i]), int(self.row_of[i])
        ends = self.group_ends[f]
        g = int(np.searchsorted(ends, row, side="right"))
        values = self.row_group(f, g)
        where = self.describe(i)
        return decode_image(image_bytes(values, row - int(ends[g] - len(values)), where), where)

    def row_group(self, f: int, g: int) -> pa.Array:
        """The image column of row group `g` of file `f`, read once and kept until the next."""
        if self._group and self._group[0][:2] == (f, g):
            return self._group[0][2]
        self._group.clear()  # drop the old group before reading the new one
        path = self.files[f]
        try:
            table = pq.ParquetFile(path).read_row_group(g, columns=[self.column])
        except (OSError, pa.ArrowException) as e:
            raise ValueError(
                f"{path}: cannot read row group {g} of column {self.column!r}: {e}"
            ) from None
        values = table.column(self.column).combine_chunks()
        self._group.append((f, g, values))
        return values


def image_bytes(values: pa.Array, k: int, where: str) -> bytes:
    """The encoded image at position `k` of an image column (struct {bytes, path} or binary)."""
    if pa.types.is_struct(values.type):
        path = values.field("path")[k].as_py() if "path" in _names(values.type) else None
        data = values.field("bytes")[k].as_py()
        if data is None:
            raise ValueError(
                f"{where}: no image bytes (path {path!r} only); expected the bytes embedded in "
                "the file (datasets' `embed_external_files`, as the Hub stores them)"
            )
        return bytes(data)
    data = values[k].as_py()
    if data is None:
        raise ValueError(f"{where}: the image is null; expected encoded image bytes")
    return bytes(data)


def _names(tp: pa.DataType) -> list[str]:
    return [tp.field(j).name for j in range(tp.num_fields)]


# ----------------------------------------------------------------------------------------------
# Listing


def parquet_files(root: str) -> list[Path]:
    """The files of `data.root`: itself, every `*.parquet` under a folder, or a glob's matches."""
    if any(ch in root for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(root, recursive=True) if Path(p).is_file())
    elif Path(root).is_dir():
        files = sorted(p for p in Path(root).rglob("*.parquet") if p.is_file())
    elif Path(root).is_file():
        files = [Path(root)]
    else:
        raise FileNotFoundError(f"data.root: {root} does not exist (data.source=parquet)")
    if not files:
        raise FileNotFoundError(
            f"data.root: no .parquet files at {root}; expected a file, a folder or a glob of "
            "Parquet files (Hub layout: data/train-00000-of-000NN.parquet)"
        )
    return files


def check_column(path: Path, schema: pa.Schema, column: str, key: str) -> pa.DataType:
    """The type of `column` in `schema`, or ValueError naming the file, column and param."""
    if column not in schema.names:
        raise ValueError(
            f"{path}: no column {column!r} ({key}); the file has columns {schema.names}"
        )
    tp = schema.field(column).type
    image = key == "data.image_column"
    if image:
        ok = (pa.types.is_struct(tp) and "bytes" in _names(tp)) or pa.types.is_binary(tp)
        ok = ok or pa.types.is_large_binary(tp)
    else:
        ok = pa.types.is_integer(tp)
    if not ok:
        want = "a struct {bytes, path} or binary" if image else "integers"
        raise ValueError(f"{path}: column {column!r} ({key}) has type {tp}; expected {want}")
    return tp


def open_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from None


def read_labels(pf: pq.ParquetFile, path: Path, column: str) -> np.ndarray:
    """Column `column` of the file as (rows,) int64, read one row group at a time."""
    parts = []
    try:
        for g in range(pf.num_row_groups):
            values = pf.read_row_group(g, columns=[column]).column(column)
            if values.null_count:
                raise ValueError(f"{path}: row group {g}: null labels in column {column!r}")
            parts.append(values.to_numpy().astype(np.int64))
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: cannot read column {column!r}: {e}") from None
    labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: column {column!r} holds negative labels; expected ints >= 0")
    return labels


def class_names(pf: pq.ParquetFile, column: str) -> list[str] | None:
    """The label names the Hub records (schema metadata `huggingface`: a ClassLabel's names)."""
    meta = pf.schema_arrow.metadata or {}
    try:
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        names = features[column]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def split_of(path: Path) -> str | None:
    """The Hub split a file belongs to: `<split>-00000-of-000NN.parquet` or `<split>/...`."""
    m = HUB_FILE.match(path.name)
    return m["split"] if m else path.parent.name if path.parent.name in ("train", "test") else None


@dataclass
class Listing:
    """Every row of the files, in file order: refs, labels, and what the footers say."""

    items: ParquetItems
    labels: np.ndarray  # (N,) int64
    names: list[str] | None  # class names from the Hub's metadata


def list_rows(files: list[Path], cfg: DataConfig) -> Listing:
    """Check every file's columns and list its rows (footers and the label column only)."""
    ends, file_of, row_of, labels, names = [], [], [], [], None
    for f, path in enumerate(files):
        pf = open_file(path)
        check_column(path, pf.schema_arrow, cfg.image_column, "data.image_column")
        meta = pf.metadata
        counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        ends.append(np.cumsum(counts, dtype=np.int64))
        n = int(sum(counts))
        file_of.append(np.full(n, f, dtype=np.int32))
        row_of.append(np.arange(n, dtype=np.int64))
        if cfg.label_column is None:
            labels.append(np.zeros(n, dtype=np.int64))
        else:
            check_column(path, pf.schema_arrow, cfg.label_column, "data.label_column")
            labels.append(read_labels(pf, path, cfg.label_column))
            names = names or class_names(pf, cfg.label_column)
    items = ParquetItems(
        tuple(str(p) for p in files),
        tuple(ends),
        np.concatenate(file_of),
        np.concatenate(row_of),
        cfg.image_column,
    )
    return Listing(items, np.concatenate(labels), names)


def open_parquet(cfg: DataConfig, seed: int) -> LazySource:
    """The splits of `data.root`: the Hub's train/test files, or one pool split by fraction."""
    root = str(require_root(cfg))
    files = parquet_files(root)
    by_split: dict[str | None, list[Path]] = {}
    for path in files:
        by_split.setdefault(split_of(path), []).append(path)
    splits: dict[str, LazySplit] = {}
    if "train" in by_split and "test" in by_split:
        ignored = sorted(str(p) for s, ps in by_split.items() if s not in ("train", "test")
                         for p in ps)  # fmt: skip
        if ignored:
            logger.warning("parquet %s: not train or test, ignored: %s", root, ignored)
        listings = {s: list_rows(by_split[s], cfg) for s in ("train", "test")}
        for s, lst in listings.items():
            splits[s] = LazySplit(lst.items, lst.labels)
        how = "train-* and test-* files"
        names = listings["train"].names
    else:
        lst = list_rows(files, cfg)
        train, test = split_indices(len(lst.labels), cfg.test_fraction, seed, f"the files {root}")
        splits = {
            "train": LazySplit(lst.items.take(train), lst.labels[train]),
            "test": LazySplit(lst.items.take(test), lst.labels[test]),
        }
        how = f"{len(files)} files split by data.test_fraction={cfg.test_fraction}"
        names = lst.names
    top = max((int(sp.labels.max()) for sp in splits.values() if sp.labels.size), default=0)
    classes = names if names is not None and len(names) > top else [str(c) for c in range(top + 1)]
    logger.info("parquet %s: %d files, %s", root, len(files), how)
    return LazySource(splits, classes, f"Parquet {root} ({how})")


PARQUET = DatasetSource(
    open=open_parquet,
    root="one `.parquet` file, a folder (every `*.parquet` under it) or a glob, in the Hugging "
    "Face Hub layout: images in `data.image_column` (a struct `{bytes, path}` or binary)",
    splits="`train-*` and `test-*` files (or `train/`, `test/` folders) when both exist, else "
    "`data.test_fraction` over all files",
    labels="`data.label_column` (ints; class names from the Hub's metadata), or all 0 when null",
)
