"""FID and Inception Score through torch-fidelity's Inception-v3: features, statistics, distances.

Images are uint8 (N, C, H, W); grayscale is replicated to 3 channels and torch-fidelity resizes
to 299x299 exactly as TF1 did. Statistics (mu, sigma) are float64 (`artifacts.fid_stats`).
Features are extracted in-process or split over Ray tasks (`ray_extractor`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ddpm_core.metrics import frechet_distance
from pipelines.artifacts.fid_stats import FidStats
from pipelines.fid.inception import POOL3, InceptionWeights, load_extractor
from pipelines.infra.device import full_fp32
from pipelines.infra.files import file_digest
from pipelines.infra.model_runner import ModelRunner

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
GPU_BATCH = 256  # Inception images per batch on a GPU

# (images uint8 (N, C, H, W), weights, feature names) -> {name: (N, D) float64}
ExtractFn = Callable[[torch.Tensor, InceptionWeights, Sequence[str]], dict[str, np.ndarray]]


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
    features: Sequence[str] = (POOL3,),
    batch_size: int = 32,
    device: torch.device = CPU,
) -> dict[str, np.ndarray]:
    """Inception features of uint8 (N, C, H, W) images: {name: (N, D) float64} in input order.

    On a GPU the network runs in full fp32 (TF32 off), so features do not depend on the device
    beyond float rounding.
    """
    rgb = as_rgb_uint8(images)
    extractor = load_extractor(weights, features).to(device)
    out: dict[str, list[np.ndarray]] = {f: [] for f in features}
    with full_fp32():
        for start in range(0, len(rgb), batch_size):
            batch = rgb[start : start + batch_size].contiguous().to(device)  # (b, 3, H, W)
            for name, value in zip(features, extractor(batch), strict=True):
                out[name].append(value.to(torch.float64).cpu().numpy())
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
            "(raise evaluate.fid.images or lower evaluate.isc_splits)"
        )
    # imported here, not with the module: see pipelines.fid.inception's docstring
    from torch_fidelity.metric_isc import isc_features_to_metric

    out = isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=False)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def weights_id(weights: InceptionWeights) -> str:
    """A short content id of the weights file (first 12 hex of its sha1)."""
    return file_digest(weights.path, "sha1")[:12]


# ----------------------------------------------------------------------------------------------
# Ray-parallel extraction


def _extract_chunk(
    images: torch.Tensor, weights: InceptionWeights, features: Sequence[str], runner: ModelRunner
) -> dict[str, np.ndarray]:
    device = runner.setup()  # threads, device, deterministic backends (full fp32 inside)
    return extract_features(images, weights, features, GPU_BATCH if runner.use_gpu else 32, device)


def ray_extractor(num_workers: int, cpus_per_worker: float, use_gpu: bool = False) -> ExtractFn:
    """An `ExtractFn` that splits the images into `num_workers` contiguous chunks, one Ray task
    each (every task loads the Inception weights once, on a GPU with `use_gpu`); on CPU one
    worker runs in-process."""
    runner = ModelRunner(cpus_per_worker, use_gpu, "evaluate")

    def extract(
        images: torch.Tensor, weights: InceptionWeights, features: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if not use_gpu and (num_workers <= 1 or len(images) < 2 * num_workers):
            return extract_features(images, weights, features)
        import ray

        n = max(1, min(num_workers, len(images) // 2))
        task = runner.remote(_extract_chunk)
        chunks = torch.tensor_split(images, n)  # contiguous, order kept
        jobs = [task.remote(c, weights, tuple(features), runner) for c in chunks]
        parts = ray.get(jobs)
        return {f: np.concatenate([p[f] for p in parts]) for f in features}

    return extract
