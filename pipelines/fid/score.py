"""One way to score generated images: Inception features -> statistics -> FID (and IS).

Used by evaluate (all samples, Ray-parallel features), quality (each curve point) and the
in-training probe (rank 0, in-process); the references come verified from the fid_stats stage
(`pipelines.fid.reference.reference_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipelines.artifacts.fid_stats import FidStats, InceptionWeights
from pipelines.fid.features import (
    ExtractFn,
    extract_features,
    feature_stats,
    fid,
    inception_score,
)
from pipelines.fid.inception import LOGITS, POOL3


@dataclass(frozen=True)
class Score:
    """FID of N generated images against each reference, and IS when asked and possible."""

    count: int
    fid: tuple[float, ...]  # one per reference, in the order given
    isc: tuple[float, float] | None  # IS (mean, std) over the splits; None: off or no logits


def score(
    images: torch.Tensor,
    weights: InceptionWeights,
    references: Sequence[FidStats],
    isc_splits: int | None = None,
    extract: ExtractFn = extract_features,
    what: str = "generated images",
) -> Score:
    """images: (N, C, H, W) uint8. IS only when `isc_splits` is set and the weights have logits."""
    want = (POOL3, LOGITS) if isc_splits is not None and weights.has_logits else (POOL3,)
    feats = extract(images, weights, want)
    ours = feature_stats(feats[POOL3], f"{len(images)} {what}")
    isc = inception_score(feats[LOGITS], isc_splits) if isc_splits and LOGITS in feats else None
    return Score(len(images), tuple(fid(ours, ref) for ref in references), isc)
