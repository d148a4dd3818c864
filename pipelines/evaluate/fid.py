"""FID and Inception Score through torch-fidelity's Inception-v3, with cached reference statistics.

Images are uint8 (N, C, H, W); grayscale is replicated to 3 channels and torch-fidelity resizes
to 299x299 exactly as TF1 did. Statistics (mu, sigma) are float64. Reference statistics of the
real data are written once under `paths.fid_stats`, keyed by the split's shard hashes, the image
count and the Inception weights, so later runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_fidelity.metric_isc import isc_features_to_metric

from ddpm_core.metrics import frechet_distance
from pipelines.config import Params
from pipelines.data.stream import load_split, read_manifest
from pipelines.evaluate.inception import (
    InceptionWeights,
    default_cache_dir,
    load_extractor,
    resolve_weights,
)

log = logging.getLogger(__name__)

FID_DIMS = 2048

# (images uint8 (N, C, H, W), weights, feature names) -> {name: (N, D) float64}
ExtractFn = Callable[[torch.Tensor, InceptionWeights, Sequence[str]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class FidStats:
    """Gaussian fit of pool3 features: mu (2048,) and sigma (2048, 2048), float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def as_rgb_uint8(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """(N, 1|3, H, W) uint8 -> (N, 3, H, W) uint8 (grayscale replicated to 3 channels)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"{name}: expected uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def check_compatible(samples: torch.Tensor, reference_shape: Sequence[int], what: str) -> None:
    """Samples and the reference must have the same (C, H, W): else FID compares apples/oranges."""
    if tuple(samples.shape[1:]) != tuple(reference_shape):
        raise ValueError(
            f"{what}: samples have shape (C, H, W) = {tuple(samples.shape[1:])}, the reference "
            f"data {tuple(reference_shape)}; sample and evaluate with the same data.resolution "
            "and data.channels (rerun the sample stage after changing them)"
        )


@torch.no_grad()
def extract_features(
    images: torch.Tensor,
    weights: InceptionWeights,
    features: Sequence[str] = ("2048",),
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Inception features of uint8 (N, C, H, W) images: {name: (N, D) float64} in input order."""
    rgb = as_rgb_uint8(images)
    extractor = load_extractor(weights, features)
    out: dict[str, list[np.ndarray]] = {f: [] for f in features}
    for start in range(0, len(rgb), batch_size):
        batch = rgb[start : start + batch_size].contiguous()  # (b, 3, H, W)
        for name, value in zip(features, extractor(batch), strict=True):
            out[name].append(value.to(torch.float64).numpy())
    empty = np.zeros((0, 0))
    return {f: np.concatenate(v) if v else empty for f, v in out.items()}


def feature_stats(features: np.ndarray, what: str = "features") -> FidStats:
    """mu and the unbiased covariance of (N, D) features, in float64; N >= 2 is required."""
    n = int(features.shape[0])
    if n < 2:
        raise ValueError(f"{what}: FID needs >= 2 images, got {n}")
    if n < features.shape[1]:
        log.warning(
            "%s: %d images < %d feature dims: sigma is rank-deficient, FID is biased upward",
            what,
            n,
            features.shape[1],
        )
    x = features.astype(np.float64)
    return FidStats(x.mean(axis=0), np.cov(x, rowvar=False), n)


def fid(a: FidStats, b: FidStats) -> float:
    """Frechet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) in float64.

    With fewer images than feature dims the covariances are low-rank: S_a + S_b has rank
    r <= n_a + n_b - 2 < D. Both then live in span(Q), Q (D, r) orthonormal from a QR of
    (S_a + S_b) Omega (Omega a fixed Gaussian (D, r)), and Tr (S_a S_b)^(1/2) =
    Tr (Q^T S_a Q Q^T S_b Q)^(1/2) exactly. `frechet_distance` then runs on the r-dim projection
    (no sqrtm of a singular 2048^2 matrix: much faster and more accurate); the mean term keeps
    the part of mu_a - mu_b outside span(Q).
    """
    D, r = a.mu.shape[0], a.count + b.count - 2
    if r >= D:
        return float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
    omega = np.random.default_rng(0).standard_normal((D, r))  # (D, r)
    q, _ = np.linalg.qr((a.sigma + b.sigma) @ omega)  # (D, r), range(S_a + S_b) in span(q)
    diff = a.mu - b.mu
    inside = q.T @ diff  # (r,)
    outside = float(diff @ diff - inside @ inside)
    reduced = frechet_distance(q.T @ a.mu, q.T @ a.sigma @ q, q.T @ b.mu, q.T @ b.sigma @ q)
    return float(reduced) + outside


def inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """IS = exp E_x KL(p(y|x) || p(y)), mean and std over `splits` (torch-fidelity's code)."""
    if len(logits) < splits:
        raise ValueError(
            f"evaluate.isc_splits: {splits} splits need >= {splits} images, got {len(logits)} "
            "(raise evaluate.fid_images or lower evaluate.isc_splits)"
        )
    out = isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=False)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


# ----------------------------------------------------------------------------------------------
# Cached reference statistics


def weights_id(weights: InceptionWeights) -> str:
    """A short content id of the weights file (first 12 hex of its sha1)."""
    h = hashlib.sha1()
    with weights.path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def reference_key(manifest: dict[str, Any], split: str, count: int, weights: str) -> str:
    """Cache key: the split's shard sha256 list + image count + weights id (hex, 16 chars)."""
    shards = [e["sha256"] for e in manifest["splits"][split]["shards"]]
    blob = json.dumps({"shards": shards, "count": count, "weights": weights}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stats_path(stats_dir: Path, split: str, count: int, key: str) -> Path:
    return stats_dir / f"{split}-{count}-{key}.npz"


def save_stats(path: Path, stats: FidStats, meta: dict[str, Any]) -> None:
    """Write mu/sigma (float64) + JSON metadata atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=stats.count, meta=json.dumps(meta))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_stats(path: Path) -> FidStats:
    with np.load(path) as z:
        return FidStats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["count"]))


def reference_stats(
    shards_dir: Path,
    stats_dir: Path,
    split: str,
    max_images: int | None,
    weights: InceptionWeights,
    extract: ExtractFn | None = None,
) -> tuple[FidStats, dict[str, Any]]:
    """Statistics of the real `split` (first `max_images` images), computed once and cached.

    Returns (stats, meta); meta has `path`, `cached` (True when reused), `count`, `key`, and the
    image shape (C, H, W) of the reference, for the compatibility check with the samples.
    """
    manifest = read_manifest(shards_dir)
    available = int(manifest["splits"][split]["num_images"]) if split in manifest["splits"] else 0
    count = min(available, max_images) if max_images is not None else available
    key = reference_key(manifest, split, count, weights_id(weights))
    path = stats_path(stats_dir, split, count, key)
    meta = {
        "split": split,
        "count": count,
        "key": key,
        "weights": weights.label,
        "source": manifest.get("source"),
        "image_shape": list(manifest["image_shape"]),
    }
    if path.is_file():
        log.info("reusing reference statistics %s", path)
        return load_stats(path), {**meta, "path": str(path), "cached": True}
    images, _ = load_split(shards_dir, split, max_images=count)  # (count, C, H, W) uint8
    feats = (extract or extract_features)(images, weights, ("2048",))["2048"]
    stats = feature_stats(feats, f"reference {split} split ({shards_dir})")
    save_stats(path, stats, meta)
    return stats, {**meta, "path": str(path), "cached": False}


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
    params: Params, root: Path, weights: InceptionWeights | None = None
) -> dict[str, tuple[FidStats, dict[str, Any]]]:
    """Reference statistics of every split FID uses, computed once and cached in `fid_stats`."""
    cfg = params.evaluate
    weights = weights or resolve_weights(cfg, default_cache_dir())
    extract = ray_extractor(cfg.num_workers, cfg.cpus_per_worker)
    shards, stats_dir = root / params.paths.shards, root / params.paths.fid_stats
    return {
        split: reference_stats(shards, stats_dir, split, cfg.fid_reference_images, weights, extract)
        for split in reference_splits(params, root)
    }


# ----------------------------------------------------------------------------------------------
# Ray-parallel extraction


def _extract_chunk(
    images: torch.Tensor, weights: InceptionWeights, features: Sequence[str], threads: int
) -> dict[str, np.ndarray]:
    torch.set_num_threads(threads)
    return extract_features(images, weights, features)


def ray_extractor(num_workers: int, cpus_per_worker: float) -> ExtractFn:
    """An `ExtractFn` that splits the images into `num_workers` contiguous chunks, one Ray task
    each (every task loads the Inception weights once); 1 worker runs in-process."""

    def extract(
        images: torch.Tensor, weights: InceptionWeights, features: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if num_workers <= 1 or len(images) < 2 * num_workers:
            return extract_features(images, weights, features)
        import ray

        task = ray.remote(num_cpus=cpus_per_worker)(_extract_chunk)
        threads = max(1, int(cpus_per_worker))
        chunks = torch.tensor_split(images, num_workers)  # contiguous, order kept
        parts = ray.get([task.remote(c, weights, tuple(features), threads) for c in chunks])
        return {f: np.concatenate([p[f] for p in parts]) for f in features}

    return extract
