"""The one shard format of the project: WebDataset tars of lossless PNG images.

Both the data shards (`artifacts.shards`: `<split>-<index:08d>.png` + `.cls`) and the sample
shards (`artifacts.samples`: `<index:08d>.png`) are written by `webdataset.TarWriter` and read
by WebDataset's tar iterator, one sample per key. Writing is byte-stable: mtime 0, fixed owner
and mode, members sorted within a sample, fixed PNG settings; so the same pixels always give the
same bytes (DVC sees no change, and hashes compare runs).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipelines.infra.files import write_bytes

PNG_LEVEL = 6  # zlib level of every PNG (PIL's default, fixed here so bytes never drift)

Sample = dict[str, bytes]  # one sample: extension ("png", "cls") -> member bytes


class ShardError(ValueError):
    """A tar shard that cannot be read, or whose members are not what its writer makes."""


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) uint8 with C in {1, 3} -> lossless PNG bytes (L or RGB)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"encode_png: expected (C,H,W) uint8, C in 1|3, got {image.dtype} {image.shape}"
        )
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))  # (H, W, C)
    buf = io.BytesIO()
    pil = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    pil.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (L or RGB) -> (C, H, W) uint8."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"decode_png: expected an L or RGB PNG, got mode {img.mode}")
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (H,W[,C]) -> (C,H,W)


def tar_bytes(samples: Iterable[tuple[str, Mapping[str, bytes]]], owner: str) -> bytes:
    """The exact bytes of a tar holding `samples` ((key, {ext: bytes}) in order).

    `owner` is the user and group name in every member header (part of the byte format).
    """
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0, user=owner, group=owner) as tar:
        for key, members in samples:
            tar.write({"__key__": key, **members})
    return buf.getvalue()


def write_tar(path: Path, samples: Iterable[tuple[str, Mapping[str, bytes]]], owner: str) -> bytes:
    """Write the tar of `samples` to `path` atomically; returns its bytes (for hashing)."""
    data = tar_bytes(samples, owner)
    write_bytes(path, data)
    return data


def read_tar(data: bytes, where: str) -> list[tuple[str, Sample]]:
    """The samples of a tar's bytes, in stored order: [(key, {ext: bytes})].

    ShardError naming `where` when the bytes are not a readable tar (truncated, corrupt).
    """
    source = {"url": where, "stream": io.BytesIO(data)}
    try:
        grouped = list(group_by_keys(tar_file_expander([source])))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise ShardError(f"{where}: corrupt or unreadable tar shard: {e.args[0]}") from None
    return [
        (str(s["__key__"]), {k: v for k, v in s.items() if not k.startswith("__")}) for s in grouped
    ]
