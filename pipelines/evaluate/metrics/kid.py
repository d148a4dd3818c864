"""KID (Binkowski et al. 2018): the unbiased MMD^2 between the samples' and the headline
reference split's pool3 features, with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,
averaged over `evaluate.kid.subsets` random subsets of `evaluate.kid.subset_size` of each side.

torch-fidelity's `kid_features_to_metric` (its defaults: poly kernel, degree 3, gamma 1/D,
coef0 1), down to the subsets: `numpy.random.RandomState(kid_seed(seed)).choice(n, size,
replace=False)`, samples then reference, per subset; the reference features are the ones the
fid_stats stage stored beside its statistics (`artifacts.fid_stats.load_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_core.rng import SeedPurpose, mix_seed
from pipelines.artifacts.fid_stats import load_features
from pipelines.config import Params
from pipelines.evaluate.metrics.base import Inputs, Measured, Metric, Need
from pipelines.evaluate.report import comparability
from pipelines.fid.inception import POOL3


def kid_seed(seed: int) -> int:
    """The subsets' RandomState seed: (seed, KID) of the seed table, in [0, 2^32)."""
    return mix_seed(seed, SeedPurpose.KID) % 2**32


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / D + 1)^3 of rows x (m, D), y (m, D) -> (m, m)."""
    k: np.ndarray = (x @ y.T / x.shape[1] + 1.0) ** 3
    return k


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of equal-size sets (m, D): the within-set means leave out the diagonal,
    the cross term keeps it (Binkowski et al. 2018, Eq. 4; torch-fidelity's `mmd2`)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(
    samples: np.ndarray, reference: np.ndarray, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """(mean, std) of MMD^2 over `subsets` subsets; samples (N, D), reference (M, D)."""
    if min(len(samples), len(reference)) < subset_size:
        raise ValueError(
            f"evaluate.kid.subset_size: {subset_size} is more than the {len(samples)} samples "
            f"or the {len(reference)} reference images; lower it"
        )
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = samples[rng.choice(len(samples), subset_size, replace=False)]
        b = reference[rng.choice(len(reference), subset_size, replace=False)]
        mmds[i] = mmd2_unbiased(a, b)
    return float(mmds.mean()), float(mmds.std())


@dataclass(frozen=True)
class KidResult:
    """KID of the samples against the headline reference split."""

    mean: float
    std: float
    reference: str
    reference_images: int

    def metrics(self) -> dict[str, float | int]:
        return {
            "kid": self.mean,
            "kid_std": self.std,
            "kid_reference_images": self.reference_images,
        }


def measure(inputs: Inputs) -> Measured:
    cfg, ref = inputs.params.evaluate.kid, inputs.references[0]  # the headline split
    ours = inputs.features[POOL3]  # (N, 2048) float64 of float32 values
    theirs = load_features(ref.path).astype(np.float64)  # (M, 2048)
    mean, std = kid(ours, theirs, cfg.subsets, cfg.subset_size, kid_seed(inputs.params.seed))
    r = KidResult(mean, std, ref.split, ref.count)
    label = comparability(inputs.params, inputs.weights, len(ours), ref.count)
    summary = (
        f"KID {mean:.5f} +- {std:.5f} vs {ref.split} ({cfg.subsets} subsets of {cfg.subset_size})"
    )
    return Measured(r.metrics(), summary, comparable=(ref.split, label))


def check(params: Params, root: Path) -> None:
    """Subsets no larger than the headline reference count (when it is capped)."""
    cap, size = params.evaluate.fid.reference_images, params.evaluate.kid.subset_size
    if cap is not None and size > cap:
        raise ValueError(
            f"evaluate.kid.subset_size: {size} is more than evaluate.fid.reference_images={cap}"
        )


KID = Metric(
    name="kid",
    params=("evaluate.kid", "evaluate.fid.reference", "seed"),
    needs=frozenset({Need.SAMPLES, Need.REFERENCE}),
    layers=(POOL3,),  # the same features as FID, extracted once
    logs=("kid", "kid_std", "kid_reference_images"),
    lower_is_better=("kid",),
    measure=measure,
    check=check,
)
