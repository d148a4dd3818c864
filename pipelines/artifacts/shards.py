"""Write a source's splits as byte-reproducible WebDataset shards plus `manifest.json`."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from pipelines.config import DataConfig, to_dict
from pipelines.data.sources import SourceData, Split, load_source
from pipelines.data.stream import MANIFEST, read_manifest, sha256_file, shard_entries, verified_path

logger = logging.getLogger(__name__)

FORMAT = "ddpm-shards/1"


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:08d}"


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) uint8 -> lossless PNG bytes (deterministic: fixed PIL settings)."""
    arr = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # (C,H,W) -> (H,W[,C])
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_split(out_dir: Path, name: str, split: Split, shard_size: int) -> list[dict[str, Any]]:
    """`<name>-000000.tar`, ... of `shard_size` samples each; returns the manifest entries."""
    entries = []
    for shard, start in enumerate(range(0, len(split.images), shard_size)):
        path = out_dir / f"{name}-{shard:06d}.tar"
        stop = min(start + shard_size, len(split.images))
        # mtime=0 and fixed owner/mode: identical bytes on every rerun (DVC sees no change).
        with wds.TarWriter(str(path), encoder=False, mtime=0) as tar:
            for i in range(start, stop):
                tar.write(
                    {
                        "__key__": sample_key(name, i),
                        "png": encode_png(split.images[i]),
                        "cls": str(int(split.labels[i])).encode(),
                    }
                )
        entries.append({"file": path.name, "num_images": stop - start, "sha256": sha256_file(path)})
    return entries


def pixel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) uint8 images, in 0..255 units."""
    x = images.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3)) if len(x) else np.zeros(images.shape[1])
    std = x.std(axis=(0, 2, 3)) if len(x) else np.zeros(images.shape[1])
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def write_shards(
    data: SourceData, out_dir: Path, shard_size: int, params: dict[str, Any], source: str
) -> dict[str, Any]:
    """Write every split and `manifest.json` into the (new, empty) folder `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: expected a new empty folder for the shards")
    train = data.splits["train"]
    mean, std = pixel_stats(train.images)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "source": source,
        "description": data.description,
        "image_shape": list(train.images.shape[1:]),
        "classes": data.classes,
        "pixel_mean": mean,
        "pixel_std": std,
        "pixel_stats_split": "train",
        "members": {"png": "uint8 image, lossless PNG", "cls": "label index as text"},
        "params": params,
        "splits": {},
    }
    for name, split in data.splits.items():
        entries = write_split(out_dir, name, split, shard_size)
        manifest["splits"][name] = {"num_images": len(split.images), "shards": entries}
        logger.info("%s: %d images in %d shards", name, len(split.images), len(entries))
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def build_shards(cfg: DataConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """Read `cfg.source` and write its shards + manifest into the new folder `out_dir`.

    Callers write into a temporary folder and rename it into place (`pipelines.files.atomic_path`).
    """
    data = load_source(cfg, seed)
    return write_shards(
        data, out_dir, cfg.shard_size, {"data": to_dict(cfg), "seed": seed}, cfg.source
    )


def verify_shards(shards_dir: str | Path) -> dict[str, Any]:
    """Check that every shard in the manifest exists with its recorded sha256; the manifest."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    for split in manifest["splits"]:
        for entry in shard_entries(manifest, split, shards_dir):
            verified_path(shards_dir, entry)
    return manifest
