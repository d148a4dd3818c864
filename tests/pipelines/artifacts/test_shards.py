"""Data shards: round trip, byte-identical reruns, WebDataset layout, the verified reader."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from pipelines.artifacts.shards import (
    MANIFEST,
    encode_png,
    load_split,
    read_manifest,
    verify_shards,
)
from pipelines.config import DataConfig
from pipelines.data.sources import load_source
from pipelines.data.stage import build_shards
from pipelines.infra.files import file_digest
from tests.helpers import W, id_images, write_ids

CFG = DataConfig(
    source="digits",
    root=None,
    raw="data/raw",
    download=False,
    resolution=12,
    channels=3,
    resize="resize",
    max_images=40,
    shard_size=16,
    test_fraction=0.25,
    random_flip=False,
    shard_workers=1,
    image_column="image",
    label_column="label",
    downscale="lanczos",
    bad_images="fail",
)


def test_round_trip_images_and_labels(tmp_path: Path) -> None:
    manifest = build_shards(CFG, 3, tmp_path / "s")
    source = load_source(CFG, 3)
    for split in ("train", "test"):
        images, labels = load_split(tmp_path / "s", split)
        assert images.dtype.is_floating_point is False and images.shape == (40, 3, 12, 12)
        np.testing.assert_array_equal(images.numpy(), source.splits[split].images)
        np.testing.assert_array_equal(labels.numpy(), source.splits[split].labels)
        shards = manifest["splits"][split]["shards"]
        assert [s["num_images"] for s in shards] == [16, 16, 8]
    assert manifest["image_shape"] == [3, 12, 12] and manifest["source"] == "digits"
    # Independent of pixel_stats: torch float64 over the images read back from the shards.
    train = load_split(tmp_path / "s", "train")[0].double()  # (40, 3, 12, 12)
    want_mean, want_std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3), correction=0)
    assert manifest["pixel_mean"] == pytest.approx(want_mean.tolist(), abs=1e-6)
    assert manifest["pixel_std"] == pytest.approx(want_std.tolist(), abs=1e-6)
    assert manifest["params"]["seed"] == 3 and manifest["params"]["data"]["max_images"] == 40
    assert read_manifest(tmp_path / "s") == manifest


def test_reruns_are_byte_identical(tmp_path: Path) -> None:
    build_shards(CFG, 0, tmp_path / "a")
    build_shards(CFG, 0, tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "train-000002.tar" in files and "manifest.json" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    build_shards(dataclasses.replace(CFG, max_images=41), 0, tmp_path / "c")
    assert (tmp_path / "c/manifest.json").read_bytes() != (
        tmp_path / "a/manifest.json"
    ).read_bytes()


def test_webdataset_layout_is_readable_by_webdataset(tmp_path: Path) -> None:
    build_shards(CFG, 0, tmp_path)
    with tarfile.open(tmp_path / "test-000001.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos[:2]] == ["test-00000016.cls", "test-00000016.png"]
    assert {i.mtime for i in infos} == {0}
    urls = [str(tmp_path / f"test-{i:06d}.tar") for i in range(3)]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")
    samples = list(ds.to_tuple("__key__", "png", "cls"))
    images, labels = load_split(tmp_path, "test")
    assert [s[0] for s in samples] == [f"test-{i:08d}" for i in range(40)]
    np.testing.assert_array_equal(np.stack([s[1] for s in samples]), images.permute(0, 2, 3, 1))
    assert [s[2] for s in samples] == labels.tolist()


def test_build_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="empty folder"):
        build_shards(CFG, 0, tmp_path)


def test_verify_names_a_changed_or_missing_shard(tmp_path: Path) -> None:
    build_shards(CFG, 0, tmp_path)
    assert verify_shards(tmp_path)["source"] == "digits"
    shard = tmp_path / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train-000001\.tar: sha256 .* does not match"):
        verify_shards(tmp_path)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"train-000001\.tar: shard listed"):
        verify_shards(tmp_path)


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json not found: run the shard stage"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not a readable JSON"):
        read_manifest(tmp_path)


def test_load_split_max_images_and_unknown_split(tmp_path: Path) -> None:
    write_ids(tmp_path, 20, 8)
    images, labels = load_split(tmp_path, "train", max_images=10)
    assert images.shape == (10, 1, 4, W) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == list(range(10))
    assert labels.tolist() == [i % 3 for i in range(10)]
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train'\]"):
        load_split(tmp_path, "test")


def test_load_split_checks_sha256_first(tmp_path: Path) -> None:
    write_ids(tmp_path, 20, 8)
    shard = tmp_path / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, one byte of the first member changed
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train-000002\.tar: sha256 .* does not match"):
        load_split(tmp_path, "train")


def test_corrupt_member_is_named_even_with_matching_sha(tmp_path: Path) -> None:
    write_ids(tmp_path, 4, 8)
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:  # a valid tar whose second png is garbage
        for i in range(4):
            for ext, payload in (("cls", b"0"), ("png", b"garbage" if i == 1 else None)):
                if payload is None:
                    payload = _png_of(tmp_path, i)
                info = tarfile.TarInfo(f"train-{i:08d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = file_digest(shard)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        ValueError, match=r"train-000000\.tar: member train-00000001: cannot decode"
    ):
        load_split(tmp_path, "train")


def _png_of(tmp_path: Path, i: int) -> bytes:
    return encode_png(id_images(4)[i])


def test_manifest_file_entries_outside_the_folder_are_refused(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_ids(shards, 4, 8)
    outside = tmp_path / "outside.tar"  # a valid shard with the right sha256, outside the folder
    outside.write_bytes((shards / "train-000000.tar").read_bytes())
    manifest = json.loads((shards / MANIFEST).read_text())
    for name in ("../outside.tar", str(outside)):
        manifest["splits"]["train"]["shards"][0]["file"] = name
        (shards / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=rf"manifest.json: file entry '{name}' refused"):
            load_split(shards, "train")
    manifest["splits"]["train"]["shards"][0]["file"] = "train-000000.tar"
    (shards / MANIFEST).write_text(json.dumps(manifest))
    (shards / "train-000000.tar").unlink()
    (shards / "train-000000.tar").symlink_to(outside)
    with pytest.raises(ValueError, match="file entry 'train-000000.tar' refused.*symlink"):
        load_split(shards, "train")
