"""The Parquet source on real Parquet files in the Hugging Face Hub layout (written by pyarrow):
several files and row groups, mixed JPEG/PNG/WebP bytes, Ray-parallel sharding, bad inputs."""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipelines.config import DataConfig, Params
from pipelines.data.parquet import ParquetItems
from pipelines.data.sources import load_source, open_source, split_indices
from pipelines.data.stage import run_shard
from tests.fixtures import encoded_image, write_hub_parquet

FORMATS = ("PNG", "WEBP", "JPEG")


def hub_files(folder: Path, files: int, rows: int, seed: int = 0, **kw: Any) -> list[bytes]:
    """`files` Hub-named files of `rows` 8x8 RGB images each (row groups of 3), formats mixed;
    returns every image's bytes in file order. Label of row i is i % 3."""
    rng = np.random.default_rng(seed)
    blobs = []
    for f in range(files):
        part = [
            encoded_image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), FORMATS[i % 3])
            for i in range(rows)
        ]
        labels = [(f * rows + i) % 3 for i in range(rows)]
        name = f"train-{f:05d}-of-{files:05d}.parquet"
        write_hub_parquet(folder / name, part, labels, 3, class_names=["a", "b", "c"], **kw)
        blobs += part
    return blobs


def pixels(blob: bytes) -> np.ndarray:
    """What PIL decodes from `blob`, as (3, H, W) uint8."""
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)


def cfg(root: Path, **kw: Any) -> DataConfig:
    base = DataConfig(
        source="parquet", root=str(root), raw=str(root), download=False, resolution=8,
        channels=3, resize="center_crop", max_images=None, shard_size=4, test_fraction=0.25,
        random_flip=False, shard_workers=1, image_column="image", label_column="label",
        downscale="lanczos", bad_images="fail",
    )  # fmt: skip
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize("as_struct", [True, False], ids=["struct", "binary"])
def test_hub_files_list_by_row_group_split_and_decode_exactly(
    tmp_path: Path, as_struct: bool
) -> None:
    """3 files x 7 rows (row groups 3+3+1), PNG/WebP/JPEG: each pool image is the file's bytes
    decoded, labels and the Hub's class names kept; one row group is held at a time."""
    blobs = hub_files(tmp_path / "data", 3, 7, as_struct=as_struct)
    c = cfg(tmp_path / "data")
    lazy = open_source(c, 0)
    train, test = split_indices(21, 0.25, 0)
    assert lazy.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(lazy.splits["train"].labels, train % 3)
    np.testing.assert_array_equal(lazy.splits["test"].labels, test % 3)
    items = lazy.splits["train"].items
    assert isinstance(items, ParquetItems) and len(items) == len(train)
    assert items.describe(0).endswith(f"train-00000-of-00003.parquet: row {train[0]}")
    data = load_source(c, 0)
    np.testing.assert_array_equal(data.splits["train"].images, [pixels(blobs[i]) for i in train])
    np.testing.assert_array_equal(data.splits["test"].images, [pixels(blobs[i]) for i in test])
    items.load(len(items) - 1)
    assert len(items._group) == 1 and len(items._group[0][2]) <= 3  # one row group held
    assert pickle.loads(pickle.dumps(items))._group == []  # a Ray task reads its own


def test_hub_train_and_test_files_are_the_splits_and_a_glob_selects(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blob = [encoded_image(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "PNG") for _ in "ab"]
    for split, n in (("train", 5), ("test", 2)):
        path = tmp_path / "data" / f"{split}-00000-of-00001.parquet"
        write_hub_parquet(path, [blob[i % 2] for i in range(n)], None, 2)
    lazy = open_source(cfg(tmp_path / "data", label_column=None), 0)
    assert {s: len(v) for s, v in lazy.splits.items()} == {"train": 5, "test": 2}
    assert lazy.classes == ["0"] and not lazy.splits["train"].labels.any()
    glob = cfg(tmp_path / "data" / "train-*.parquet", label_column=None, raw=str(tmp_path))
    assert len(open_source(glob, 0).splits["train"]) == 4  # one pool of 5, split 4 + 1


def test_parquet_shards_are_identical_on_1_and_2_ray_workers(
    tmp_path: Path, make_params: Callable[..., Params], local_ray: object
) -> None:
    hub_files(tmp_path / "hub" / "data", 3, 7)
    over: dict[str, Any] = {
        "data.source": "parquet", "data.root": str(tmp_path / "hub" / "data"),
        "data.raw": str(tmp_path / "hub"), "data.channels": 3, "data.resize": "center_crop",
        "data.test_fraction": 0.25, "data.shard_size": 4, "data.max_images": None,
        "data.label_column": "label",
    }  # fmt: skip
    outs = {}
    for workers in (1, 2):
        params = make_params({**over, "data.shard_workers": workers, "paths.shards": f"s{workers}"})
        result = run_shard(params, tmp_path)
        outs[workers] = {p.name: p.read_bytes() for p in sorted(result.shards_dir.iterdir())}
        assert result.manifest["splits"]["train"]["num_images"] == 16
    assert len(outs[1]) == 4 + 2 + 1 and outs[1] == outs[2]


def test_a_damaged_file_and_a_missing_column_are_named(tmp_path: Path) -> None:
    hub_files(tmp_path / "data", 2, 4)
    files = sorted((tmp_path / "data").glob("*.parquet"))
    with pytest.raises(
        ValueError, match=r"00000-of-00002\.parquet: no column 'img' \(data\.image_column\)"
    ):
        open_source(cfg(tmp_path / "data", image_column="img"), 0)
    with pytest.raises(
        ValueError, match=r"00000-of-00002\.parquet: no column 'cls' \(data\.label_column\)"
    ):
        open_source(cfg(tmp_path / "data", label_column="cls"), 0)
    with pytest.raises(ValueError, match=r"column 'label' \(data\.image_column\) has type int64"):
        open_source(cfg(tmp_path / "data", image_column="label"), 0)
    files[1].write_bytes(files[1].read_bytes()[:-40])  # a truncated download: no footer
    with pytest.raises(ValueError, match=rf"{files[1]}: not a readable Parquet file"):
        open_source(cfg(tmp_path / "data"), 0)
    write_hub_parquet(files[1], [b"not an image"] * 4, [0] * 4, 3)
    with pytest.raises(ValueError, match=rf"{files[1]}: row \d: cannot read image"):
        load_source(cfg(tmp_path / "data"), 0)
