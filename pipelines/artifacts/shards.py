"""The shard stage's output: WebDataset shards of every split plus `manifest.json`.

Writer and verified reader of one format. A shard `<split>-<k:06d>.tar` holds samples
`<split>-<i:08d>` as a lossless `.png` and its label as `.cls` (text), written byte-stably
(`artifacts.tars`), so unchanged data gives identical files. `manifest.json` lists every split's
shards with their image counts and sha256, the image shape, pixel statistics and the params
used; every reader checks a shard's sha256 against it before reading the shard.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from pipelines.artifacts.tars import ShardError, decode_png, encode_png, read_tar, tar_bytes
from pipelines.infra.files import bytes_digest, file_digest, listed_file, write_bytes, write_json

logger = logging.getLogger(__name__)

FORMAT = "ddpm-shards/1"
MANIFEST = "manifest.json"
OWNER = "bigdata"  # the tar member owner (webdataset's default when the format was fixed)


@dataclass(frozen=True)
class Split:
    """One split after preprocessing: images (N, C, H, W) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray


S = TypeVar("S")  # a split: decoded (`Split`) or listed, not yet decoded (data's `LazySplit`)


@dataclass(frozen=True)
class SourceData(Generic[S]):
    """Every split of a source, with class names (label i is `classes[i]`): the one record of
    a source, decoded (`SourceData[Split]`, what `write_shards` takes) or only listed
    (`SourceData[LazySplit]`, what the shard stage streams)."""

    splits: dict[str, S]
    classes: list[str]
    description: str


# ----------------------------------------------------------------------------------------------
# Writer


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:08d}"


def shard_file(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of every shard of a split of `num_images`, `shard_size` images each."""
    return [
        (start, min(start + shard_size, num_images)) for start in range(0, num_images, shard_size)
    ]


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: its manifest entry plus the exact pixel sums of its images.

    `pixel_sum[c]` = sum of channel c's uint8 values, `pixel_sq_sum[c]` = sum of their squares
    (Python ints: exact for any dataset size).
    """

    file: str
    num_images: int
    sha256: str
    pixels_per_channel: int  # num_images * H * W
    pixel_sum: tuple[int, ...]
    pixel_sq_sum: tuple[int, ...]
    skipped: tuple[str, ...] = ()  # "<item>: <error>" of each image left out (data.bad_images)

    def entry(self) -> dict[str, Any]:
        return {"file": self.file, "num_images": self.num_images, "sha256": self.sha256}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.entry(),
            "pixels_per_channel": self.pixels_per_channel,
            "pixel_sum": list(self.pixel_sum),
            "pixel_sq_sum": list(self.pixel_sq_sum),
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardInfo:
        return cls(
            str(obj["file"]),
            int(obj["num_images"]),
            str(obj["sha256"]),
            int(obj["pixels_per_channel"]),
            tuple(int(v) for v in obj["pixel_sum"]),
            tuple(int(v) for v in obj["pixel_sq_sum"]),
            tuple(str(v) for v in obj.get("skipped", [])),
        )


def encode_shard(
    split: str,
    shard: int,
    start: int,
    images: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray | None = None,
    skipped: tuple[str, ...] = (),
) -> tuple[bytes, ShardInfo]:
    """The tar bytes of shard `shard` of `split` (samples start, start+1, ...) and its info.

    images (n, C, H, W) uint8, labels (n,) int64; `positions` (n,): each image's place in the
    shard when some were skipped (their keys keep the source positions: start + position).
    """
    where = np.arange(len(images)) if positions is None else positions
    samples = (
        (
            sample_key(split, start + int(where[i])),
            {"png": encode_png(images[i]), "cls": str(int(labels[i])).encode()},
        )
        for i in range(len(images))
    )
    data = tar_bytes(samples, OWNER)
    sums, sq_sums = pixel_sums(images)
    n, _, h, w = images.shape
    info = ShardInfo(
        shard_file(split, shard), n, bytes_digest(data), n * h * w, sums, sq_sums, skipped
    )
    return data, info


def write_split(out_dir: Path, name: str, split: Split, shard_size: int) -> list[ShardInfo]:
    """`<name>-000000.tar`, ... of `shard_size` samples each; returns what each shard holds."""
    infos = []
    for shard, (start, stop) in enumerate(shard_ranges(len(split.images), shard_size)):
        data, info = encode_shard(
            name, shard, start, split.images[start:stop], split.labels[start:stop]
        )
        write_bytes(out_dir / info.file, data)
        infos.append(info)
    return infos


def pixel_sums(images: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-channel exact sums of the values and of their squares of (N, C, H, W) uint8 images."""
    x = images.astype(np.int64)
    return (
        tuple(int(v) for v in x.sum(axis=(0, 2, 3))),
        tuple(int(v) for v in (x * x).sum(axis=(0, 2, 3))),
    )


def moments_stats(
    count: int, sums: list[int], sq_sums: list[int]
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std, rounded to 6 decimals, from exact integer sums.

    mean = S / n, var = (n Q - S^2) / n^2, both exact rationals before the final rounding: the
    values numpy's float64 mean/std of the same pixels round to.
    """
    if count == 0:
        return [0.0] * len(sums), [0.0] * len(sums)
    mean = [s / count for s in sums]  # int / int: correctly rounded
    std = [
        math.sqrt(float(Fraction(count * q - s * s, count * count)))
        for s, q in zip(sums, sq_sums, strict=True)
    ]
    return [round(m, 6) for m in mean], [round(v, 6) for v in std]


def pixel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) uint8 images, in 0..255 units."""
    sums, sq_sums = pixel_sums(images)
    n, _, h, w = images.shape
    return moments_stats(n * h * w, list(sums), list(sq_sums))


def train_stats(infos: list[ShardInfo], channels: int) -> tuple[list[float], list[float]]:
    """`moments_stats` over the shards of the train split (any order: integer sums)."""
    count = sum(i.pixels_per_channel for i in infos)
    sums = [sum(i.pixel_sum[c] for i in infos) for c in range(channels)]
    sq_sums = [sum(i.pixel_sq_sum[c] for i in infos) for c in range(channels)]
    return moments_stats(count, sums, sq_sums)


def build_manifest(
    *,
    source: str,
    description: str,
    classes: list[str],
    image_shape: tuple[int, int, int],
    params: dict[str, Any],
    splits: dict[str, list[ShardInfo]],
) -> dict[str, Any]:
    """The manifest of a complete shard set (`splits`: each split's shards in order)."""
    mean, std = train_stats(splits["train"], image_shape[0])
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "source": source,
        "description": description,
        "image_shape": list(image_shape),
        "classes": classes,
        "pixel_mean": mean,
        "pixel_std": std,
        "pixel_stats_split": "train",
        "members": {"png": "uint8 image, lossless PNG", "cls": "label index as text"},
        "params": params,
        "skipped_images": [x for infos in splits.values() for i in infos for x in i.skipped],
        "splits": {
            name: {
                "num_images": sum(i.num_images for i in infos),
                "shards": [i.entry() for i in infos],
            }
            for name, infos in splits.items()
        },
    }
    return manifest


def write_shards(
    data: SourceData[Split], out_dir: Path, shard_size: int, params: dict[str, Any], source: str
) -> dict[str, Any]:
    """Write every split (in memory) and `manifest.json` into the new, empty folder `out_dir`.

    For tests and small sets; the shard stage streams (`pipelines.data.writer`), same bytes.
    Callers write into a temporary folder and rename it into place (`infra.files.atomic_path`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: expected a new empty folder for the shards")
    infos = {}
    for name, split in data.splits.items():
        infos[name] = write_split(out_dir, name, split, shard_size)
        logger.info("%s: %d images in %d shards", name, len(split.images), len(infos[name]))
    shape = data.splits["train"].images.shape[1:]
    manifest = build_manifest(
        source=source,
        description=data.description,
        classes=data.classes,
        image_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        params=params,
        splits=infos,
    )
    write_json(out_dir / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------
# Verified reader


def read_manifest(shards_dir: str | Path) -> dict[str, Any]:
    """`<shards_dir>/manifest.json` as a dict; a clear error when missing or malformed."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run the shard stage first (python -m stages.shard --params ...)"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON manifest: {e}") from None
    for key in ("splits", "image_shape"):
        if key not in manifest:
            raise ValueError(f"{path}: missing key {key!r}; rerun the shard stage")
    return manifest


def image_shape(manifest: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of every image in the shard set."""
    c, h, w = (int(d) for d in manifest["image_shape"])
    return c, h, w


def shard_entries(manifest: dict[str, Any], split: str, where: Path) -> list[dict[str, Any]]:
    """The manifest's shard list for `split` ([{file, num_images, sha256}, ...])."""
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"{where / MANIFEST}: no split {split!r}; available: {sorted(splits)}")
    entries: list[dict[str, Any]] = splits[split]["shards"]
    return entries


def listed_shard(shards_dir: Path, entry: dict[str, Any]) -> Path:
    """The shard file of a manifest entry, after checking it is a plain name and exists."""
    path = listed_file(shards_dir, entry["file"], shards_dir / MANIFEST)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard listed in {MANIFEST} is missing")
    return path


def check_digest(path: Path, digest: str, entry: dict[str, Any]) -> None:
    """ValueError naming `path` when its sha256 `digest` is not the manifest entry's."""
    if digest != entry["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest[:12]}... does not match {MANIFEST} "
            f"({entry['sha256'][:12]}...); the shard changed after the shard stage wrote it "
            "(rerun the shard stage)"
        )


def verified_path(shards_dir: Path, entry: dict[str, Any]) -> Path:
    """The shard file of a manifest entry, after checking it exists and its sha256 matches."""
    path = listed_shard(shards_dir, entry)
    check_digest(path, file_digest(path), entry)
    return path


def read_shard(path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All samples of one tar in stored order: images (n, C, H, W) uint8, labels (n,) int64."""
    try:
        samples = read_tar(path.read_bytes(), str(path))
    except (ShardError, OSError) as e:
        raise ValueError(str(e)) from None
    images = np.zeros((len(samples), *shape), dtype=np.uint8)
    labels = np.zeros(len(samples), dtype=np.int64)
    for i, (key, sample) in enumerate(samples):
        images[i], labels[i] = _decode_sample(path, key, sample, shape)
    return images, labels


def _decode_sample(
    path: Path, key: str, sample: dict[str, bytes], shape: tuple[int, int, int]
) -> tuple[np.ndarray, int]:
    where = f"{path}: member {key}"
    if "png" not in sample or "cls" not in sample:
        raise ValueError(f"{where}: expected .png and .cls members, found {sorted(sample)}")
    try:
        arr = decode_png(sample["png"])
        label = int(sample["cls"].decode())
    except Exception as e:  # PIL/int raise many types on corrupt bytes
        raise ValueError(f"{where}: cannot decode: {e}") from None
    if arr.shape != shape:
        raise ValueError(f"{where}.png: shape {arr.shape}, manifest says {shape}")
    return arr, label


def read_entries(
    shards_dir: Path, entries: list[dict[str, Any]], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The verified shards of `entries`, concatenated: images (n, C, H, W), labels (n,)."""
    parts = [read_shard(verified_path(shards_dir, e), shape) for e in entries]
    for entry, (images, _) in zip(entries, parts, strict=True):
        if len(images) != entry["num_images"]:
            raise ValueError(
                f"{shards_dir / entry['file']}: {len(images)} samples, manifest says "
                f"{entry['num_images']}"
            )
    if not parts:
        return np.zeros((0, *shape), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_split(
    shards_dir: str | Path, split: str, max_images: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in stored order: images (N, C, H, W) uint8 and labels (N,) int64.

    Every shard's sha256 is checked against the manifest before it is read. With `max_images`
    only the first shards needed are read and the result is cut to `max_images`.
    """
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    entries = shard_entries(manifest, split, shards_dir)
    if max_images is not None:
        counts = np.cumsum([e["num_images"] for e in entries])
        entries = entries[: int(np.searchsorted(counts, max_images)) + 1]
    images, labels = read_entries(shards_dir, entries, image_shape(manifest))
    if max_images is not None:
        images, labels = images[:max_images], labels[:max_images]
    return torch.from_numpy(images), torch.from_numpy(labels)


def verify_shards(shards_dir: str | Path) -> dict[str, Any]:
    """Check that every shard in the manifest exists with its recorded sha256; the manifest."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    for split in manifest["splits"]:
        for entry in shard_entries(manifest, split, shards_dir):
            verified_path(shards_dir, entry)
    return manifest
