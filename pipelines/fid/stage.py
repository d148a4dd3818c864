"""The fid_stats stage: Inception statistics of the real splits, computed once per shard set.

The only writer of `paths.fid_stats` (format: `artifacts.fid_stats`): it resolves the Inception
weights, stores them beside the statistics, and writes the statistics of every split FID uses.
Its output is a DVC output of its own, so evaluate, quality and train reruns reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.artifacts.fid_stats import InceptionWeights, save_inception
from pipelines.config import Params
from pipelines.fid.features import ray_extractor
from pipelines.fid.inception import default_cache_dir, resolve_weights
from pipelines.fid.reference import ReferenceStats, reference_splits, write_reference_stats
from pipelines.infra.ray import init_ray


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


def compute_reference_stats(
    params: Params, root: Path, weights: InceptionWeights
) -> tuple[ReferenceStats, ...]:
    """Reference statistics of every split FID uses (Ray connected), written to `fid_stats`."""
    cfg, n = params.evaluate, params.evaluate.fid.reference_images
    extract = ray_extractor(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu)
    shards, stats_dir = root / params.paths.shards, root / params.paths.fid_stats
    return tuple(
        write_reference_stats(shards, stats_dir, split, n, weights, extract)
        for split in reference_splits(params, root)
    )


def run_fid_stats(params: Params, root: Path) -> FidStatsResult:
    """The fid_stats stage: the shards and the weights are checked, then Ray connects."""
    reference_splits(params, root)  # the shards exist and hold the reference split
    resolved = resolve_weights(params.evaluate.fid, default_cache_dir())
    weights = save_inception(root / params.paths.fid_stats, resolved)  # what evaluate will use
    init_ray(params.ray)
    return FidStatsResult(compute_reference_stats(params, root, weights))
