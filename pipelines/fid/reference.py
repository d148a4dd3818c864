"""Reference statistics of the real splits: found (read, verified) by everyone, made by one.

The fid_stats stage (`pipelines.fid.stage`) is the only writer of its output folder
(`paths.fid_stats`, format owned by `artifacts.fid_stats`): `write_reference_stats`. Evaluate,
quality and the in-training probe call `reference_stats`, which reads the file for the current
shards, count and weights and fails with a clear error when it is missing or stale (another shard
set, count or weights), never computing it in their place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts.fid_stats import (
    FidStats,
    InceptionWeights,
    load_stats,
    reference_key,
    save_stats,
    stats_path,
)
from pipelines.artifacts.shards import image_shape, load_split, read_manifest
from pipelines.config import Params
from pipelines.fid.features import ExtractFn, feature_stats, weights_id
from pipelines.fid.inception import POOL3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceStats:
    """The statistics of one real split, where they are and whether they were reused."""

    split: str
    count: int  # real images behind the statistics
    stats: FidStats
    path: Path
    cached: bool  # reused from an earlier run
    weights: str  # the Inception weights' label
    image_shape: tuple[int, int, int]  # (C, H, W) of the real images


@dataclass(frozen=True)
class _Where:
    """Where the statistics of (split, count, weights) of a shard set live."""

    manifest: dict[str, Any]
    count: int
    key: str
    path: Path


def _where(
    shards_dir: Path, stats_dir: Path, split: str, max_images: int | None, weights: InceptionWeights
) -> _Where:
    manifest = read_manifest(shards_dir)
    available = int(manifest["splits"][split]["num_images"]) if split in manifest["splits"] else 0
    count = min(available, max_images) if max_images is not None else available
    key = reference_key(manifest, split, count, weights_id(weights))
    return _Where(manifest, count, key, stats_path(stats_dir, split, count, key))


def reference_stats(
    shards_dir: Path,
    stats_dir: Path,
    split: str,
    max_images: int | None,
    weights: InceptionWeights,
) -> ReferenceStats:
    """The fid_stats stage's statistics of `split` (first `max_images` images), verified.

    Raises FileNotFoundError naming the file and the stage to run when they are missing or were
    made for other shards, another count or other weights.
    """
    w = _where(shards_dir, stats_dir, split, max_images, weights)
    if not w.path.is_file():
        have = sorted(p.name for p in stats_dir.glob(f"{split}-*.npz"))
        raise FileNotFoundError(
            f"{w.path}: no reference statistics of the {split} split ({w.count} images, "
            f"{weights.label}) for the shards in {shards_dir} (found {have or 'none'}); they are "
            "missing or stale: run the fid_stats stage (dvc repro fid_stats)"
        )
    stats = load_stats(w.path, w.key)
    shape = image_shape(w.manifest)
    return ReferenceStats(split, w.count, stats, w.path, True, weights.label, shape)


def write_reference_stats(
    shards_dir: Path,
    stats_dir: Path,
    split: str,
    max_images: int | None,
    weights: InceptionWeights,
    extract: ExtractFn,
) -> ReferenceStats:
    """The fid_stats stage's writer: statistics of `split`, computed unless current ones exist."""
    w = _where(shards_dir, stats_dir, split, max_images, weights)
    shape = image_shape(w.manifest)
    if w.path.is_file():
        log.info("reusing reference statistics %s", w.path)
        return reference_stats(shards_dir, stats_dir, split, max_images, weights)
    images, _ = load_split(shards_dir, split, max_images=w.count)  # (count, C, H, W) uint8
    feats = extract(images, weights, (POOL3,))[POOL3]
    stats = feature_stats(feats, f"reference {split} split ({shards_dir})")
    meta = {
        "split": split,
        "count": w.count,
        "key": w.key,
        "weights": weights.label,
        "source": w.manifest.get("source"),
        "image_shape": list(shape),
    }
    save_stats(w.path, stats, meta, feats)
    return ReferenceStats(split, w.count, stats, w.path, False, weights.label, shape)


def reference_splits(params: Params, root: Path) -> list[str]:
    """`evaluate.fid.reference` first (the headline FID), then the other split when it exists."""
    have = read_manifest(root / params.paths.shards)["splits"]
    first = params.evaluate.fid.reference
    other = "test" if first == "train" else "train"
    if first not in have:
        raise ValueError(
            f"evaluate.fid.reference: split {first!r} is not in {root / params.paths.shards} "
            f"(it has {sorted(have)})"
        )
    return [first] + ([other] if other in have else [])


def read_reference(
    params: Params, root: Path, weights: InceptionWeights, split: str
) -> ReferenceStats:
    """The fid_stats stage's statistics of `split` for these params (`evaluate.fid`), verified."""
    shards, stats_dir = root / params.paths.shards, root / params.paths.fid_stats
    return reference_stats(shards, stats_dir, split, params.evaluate.fid.reference_images, weights)


def headline_reference(params: Params, root: Path, weights: InceptionWeights) -> ReferenceStats:
    """The statistics of the headline split (`evaluate.fid.reference`): what quality and the
    in-training probe score against."""
    return read_reference(params, root, weights, reference_splits(params, root)[0])


def read_references(
    params: Params, root: Path, weights: InceptionWeights
) -> tuple[ReferenceStats, ...]:
    """The fid_stats stage's statistics of every split FID uses (`reference_splits` order)."""
    return tuple(read_reference(params, root, weights, s) for s in reference_splits(params, root))
