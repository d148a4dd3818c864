"""The fid_stats stage: Inception statistics of the real splits, computed once per shard set.

Its output folder (`paths.fid_stats`, `artifacts.fid_stats`) is a DVC output of its own, so
`evaluate` reruns (new samples, a new model) reuse it; the evaluate stage calls the same
`reference_stats` and finds the files already there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines.artifacts.fid_stats import (
    FidStats,
    InceptionWeights,
    load_stats,
    reference_key,
    save_inception,
    save_stats,
    stats_path,
)
from pipelines.artifacts.shards import image_shape, load_split, read_manifest
from pipelines.config import Params
from pipelines.evaluate.fid import ExtractFn, feature_stats, ray_extractor, weights_id
from pipelines.evaluate.inception import POOL3, default_cache_dir, resolve_weights
from pipelines.infra.ray import init_ray

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
class FidStatsResult:
    """What the fid_stats stage made: one record per reference split."""

    references: tuple[ReferenceStats, ...]

    def summary(self) -> str:
        return "\n".join(
            f"{r.path}: {r.split} split, {r.count} images, {r.weights} "
            f"({'reused' if r.cached else 'computed'})"
            for r in self.references
        )


def reference_stats(
    shards_dir: Path,
    stats_dir: Path,
    split: str,
    max_images: int | None,
    weights: InceptionWeights,
    extract: ExtractFn,
) -> ReferenceStats:
    """Statistics of the real `split` (first `max_images` images), computed once and cached."""
    manifest = read_manifest(shards_dir)
    available = int(manifest["splits"][split]["num_images"]) if split in manifest["splits"] else 0
    count = min(available, max_images) if max_images is not None else available
    key = reference_key(manifest, split, count, weights_id(weights))
    path = stats_path(stats_dir, split, count, key)
    shape = image_shape(manifest)
    if path.is_file():
        log.info("reusing reference statistics %s", path)
        stats = load_stats(path, key)
        return ReferenceStats(split, count, stats, path, True, weights.label, shape)
    images, _ = load_split(shards_dir, split, max_images=count)  # (count, C, H, W) uint8
    feats = extract(images, weights, (POOL3,))[POOL3]
    stats = feature_stats(feats, f"reference {split} split ({shards_dir})")
    meta = {
        "split": split,
        "count": count,
        "key": key,
        "weights": weights.label,
        "source": manifest.get("source"),
        "image_shape": list(shape),
    }
    save_stats(path, stats, meta)
    return ReferenceStats(split, count, stats, path, False, weights.label, shape)


def reference_splits(params: Params, root: Path) -> list[str]:
    """`evaluate.fid_reference` first (the headline FID), then the other split when it exists."""
    have = read_manifest(root / params.paths.shards)["splits"]
    first = params.evaluate.fid_reference
    other = "test" if first == "train" else "train"
    if first not in have:
        raise ValueError(
            f"evaluate.fid_reference: split {first!r} is not in {root / params.paths.shards} "
            f"(it has {sorted(have)})"
        )
    return [first] + ([other] if other in have else [])


def compute_reference_stats(
    params: Params, root: Path, weights: InceptionWeights
) -> tuple[ReferenceStats, ...]:
    """Reference statistics of every split FID uses (Ray connected), cached in `fid_stats`."""
    cfg = params.evaluate
    extract = ray_extractor(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu)
    shards, stats_dir = root / params.paths.shards, root / params.paths.fid_stats
    return tuple(
        reference_stats(shards, stats_dir, split, cfg.fid_reference_images, weights, extract)
        for split in reference_splits(params, root)
    )


def run_fid_stats(params: Params, root: Path) -> FidStatsResult:
    """The fid_stats stage: the shards and the weights are checked, then Ray connects."""
    reference_splits(params, root)  # the shards exist and hold the reference split
    resolved = resolve_weights(params.evaluate, default_cache_dir())
    weights = save_inception(root / params.paths.fid_stats, resolved)  # what evaluate will use
    init_ray(params.ray)
    return FidStatsResult(compute_reference_stats(params, root, weights))
