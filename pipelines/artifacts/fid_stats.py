"""The fid_stats stage's output: Inception statistics (mu, sigma) of the real splits, cached.

One `.npz` per (split, image count, cache key): `<split>-<count>-<key>.npz` holds mu (2048,),
sigma (2048, 2048) in float64, the image count and JSON metadata. The key hashes the split's
shard sha256 list, the count and the Inception weights' id, so a file is reused exactly when
all three are unchanged; `load_stats` checks the stored key against the one asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.infra.files import atomic_path


@dataclass(frozen=True)
class FidStats:
    """Gaussian fit of pool3 features: mu (D,) and sigma (D, D), float64, from `count` images."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def reference_key(manifest: dict[str, Any], split: str, count: int, weights: str) -> str:
    """Cache key: the split's shard sha256 list + image count + weights id (hex, 16 chars)."""
    shards = [e["sha256"] for e in manifest["splits"][split]["shards"]]
    blob = json.dumps({"shards": shards, "count": count, "weights": weights}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stats_path(stats_dir: Path, split: str, count: int, key: str) -> Path:
    return stats_dir / f"{split}-{count}-{key}.npz"


def save_stats(path: Path, stats: FidStats, meta: dict[str, Any]) -> None:
    """Write mu/sigma (float64), the count and JSON metadata (with the cache key) atomically."""
    with atomic_path(path) as tmp:
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=stats.count, meta=json.dumps(meta))


def load_stats(path: Path, key: str | None = None) -> FidStats:
    """The statistics in `path`; ValueError when its stored cache key is not `key`."""
    with np.load(path) as z:
        stored = json.loads(str(z["meta"])).get("key")
        if key is not None and stored != key:
            raise ValueError(f"{path}: cache key {stored}, expected {key}")
        return FidStats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["count"]))
