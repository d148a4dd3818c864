"""The one shard format: WebDataset tars of PNGs, byte-stable, read back by WebDataset."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipelines.artifacts.tars import (
    ShardError,
    decode_png,
    encode_png,
    read_tar,
    tar_bytes,
    write_tar,
)


def _images(n: int, c: int) -> np.ndarray:
    return np.random.default_rng(c).integers(0, 256, (n, c, 5, 4), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_is_lossless(channels: int) -> None:
    image = _images(1, channels)[0]
    assert np.array_equal(decode_png(encode_png(image)), image)
    with pytest.raises(ValueError, match=r"\(C,H,W\) uint8"):
        encode_png(image.astype(np.int16))


def test_tars_are_byte_stable_webdataset_with_fixed_headers(tmp_path: Path) -> None:
    images = _images(3, 3)
    samples = [(f"k-{i:08d}", {"png": encode_png(im), "cls": b"7"}) for i, im in enumerate(images)]
    data = write_tar(tmp_path / "a.tar", samples, owner="bigdata")
    assert data == tar_bytes(samples, owner="bigdata") == (tmp_path / "a.tar").read_bytes()
    assert tar_bytes(samples, owner="") != data  # the owner is part of the format
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos[:2]] == ["k-00000000.cls", "k-00000000.png"]  # sorted per key
    assert {(i.mtime, i.mode, i.uname) for i in infos} == {(0, 0o444, "bigdata")}
    ds = wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False, empty_check=False)
    assert [s["__key__"] for s in ds] == [k for k, _ in samples]
    back = read_tar(data, "a.tar")
    assert [k for k, _ in back] == [k for k, _ in samples]
    assert np.array_equal(decode_png(back[2][1]["png"]), images[2]) and back[2][1]["cls"] == b"7"


def test_unreadable_tars_are_shard_errors_naming_the_file() -> None:
    data = tar_bytes([("k", {"png": encode_png(_images(1, 1)[0])})], owner="")
    for bad in (data[:700], b"", b"not a tar at all" * 64):
        with pytest.raises(ShardError, match="x.tar: corrupt or unreadable"):
            read_tar(bad, "x.tar")
