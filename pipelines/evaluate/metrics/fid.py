"""FID (Heusel et al. 2017) of the samples against every reference split, the headline first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.evaluate.metrics.base import Inputs, Measured, Metric, Need
from pipelines.evaluate.report import comparability
from pipelines.fid.features import feature_stats, fid
from pipelines.fid.inception import POOL3


@dataclass(frozen=True)
class SplitFid:
    """FID of the samples against one real split."""

    split: str
    fid: float
    reference_images: int


@dataclass(frozen=True)
class FidResult:
    """FID against every reference split; `reference` is the headline one."""

    images: int  # generated images behind the figures
    images_per_s: float  # Inception throughput on them
    reference: str
    splits: tuple[SplitFid, ...]
    inception_weights: str
    comparability: str

    @property
    def headline(self) -> SplitFid:
        return next(s for s in self.splits if s.split == self.reference)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fid_images": self.images,
            "inception_images_per_s": self.images_per_s,
        }
        for s in self.splits:
            out[f"fid_{s.split}"] = s.fid
            out[f"fid_{s.split}_reference_images"] = s.reference_images
        out |= {
            "fid": self.headline.fid,
            "fid_reference": self.reference,
            "inception_weights": self.inception_weights,
            "comparability": self.comparability,
        }
        return out


def fid_result(inputs: Inputs) -> FidResult:
    """The Frechet distance of the samples' pool3 statistics to each reference split's."""
    feats = inputs.features[POOL3]  # (N, 2048)
    n, ref = len(feats), inputs.params.evaluate.fid.reference
    ours = feature_stats(feats, f"{n} samples")
    splits = tuple(SplitFid(r.split, fid(ours, r.stats), r.count) for r in inputs.references)
    headline = next(s for s in splits if s.split == ref)
    label = comparability(inputs.params, inputs.weights, n, headline.reference_images)
    return FidResult(n, inputs.images_per_s, ref, splits, inputs.weights.label, label)


def measure(inputs: Inputs) -> Measured:
    r = fid_result(inputs)
    return Measured(
        r.metrics(),
        f"FID {r.headline.fid:.3f} vs {r.reference} ({r.images} samples, {r.inception_weights})",
        {"fid.comparability": r.comparability, "fid.inception_weights": r.inception_weights},
        comparable=(r.reference, r.comparability),
    )


FID = Metric(
    name="fid",
    params=("evaluate.fid",),
    needs=frozenset({Need.SAMPLES, Need.REFERENCE}),
    layers=(POOL3,),
    logs=("fid", "fid_*", "inception_images_per_s", "inception_weights", "comparability"),
    lower_is_better=("fid",),
    measure=measure,
)
