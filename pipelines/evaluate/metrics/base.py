"""What a metric is: the params it reads, what it needs, what it logs, and what it measured.

A metric is one `Metric` record in its own file (`fid.py`, `isc.py`, `kid.py`, `nll.py`) and
one entry in `registry.METRICS`. The evaluate stage gathers what the listed metrics need once
(`Inputs`: the samples' Inception features in one pass, the reference statistics) and calls
each metric's `measure`; its `Measured` record goes to `metrics/eval.json`, MLflow and the summary.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts.fid_stats import InceptionWeights
from pipelines.config import Params
from pipelines.fid.reference import ReferenceStats


class Need(enum.Enum):
    """What a metric needs besides its params; the stage gathers each need once."""

    SAMPLES = "the samples' Inception features (evaluate.fid.images of the sample stage's)"
    REFERENCE = "the fid_stats stage's reference statistics of the real splits"
    MODEL = "the EMA model and real images (it runs the network itself)"


@dataclass(frozen=True)
class Inputs:
    """What the evaluate stage gathered for the listed metrics (empty what none needs)."""

    params: Params
    root: Path
    weights: InceptionWeights  # the fid_stats stage's Inception weights
    features: Mapping[str, np.ndarray]  # the samples' features by Inception layer: (N, D) float64
    references: tuple[ReferenceStats, ...]  # the headline split (evaluate.fid.reference) first
    images_per_s: float  # Inception throughput on the samples


@dataclass(frozen=True)
class Measured:
    """What one metric measured."""

    metrics: dict[str, Any]  # numbers: metrics/eval.json and MLflow; texts: runs/evaluate.json
    summary: str  # its part of the stage's summary
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags of the evaluate run
    figures: tuple[Path, ...] = ()  # files it wrote (logged as artifacts)
    # (reference, label): its values compare only with values of the same pair (registry gate)
    comparable: tuple[str, str] = ("", "")


def no_check(params: Params, root: Path) -> None:
    """A metric with nothing to check before Ray starts."""


@dataclass(frozen=True)
class Metric:
    """One metric of the evaluate stage, as `evaluate.metrics` names it."""

    name: str
    params: tuple[str, ...]  # the params it reads (dotted keys of params.yaml)
    needs: frozenset[Need]
    layers: tuple[str, ...]  # Inception layers of the samples it reads (with Need.SAMPLES)
    logs: tuple[str, ...]  # its keys in metrics/eval.json and runs/evaluate.json (fnmatch)
    lower_is_better: tuple[str, ...]  # keys `mlflow.promote_on` may name (the champion gate)
    measure: Callable[[Inputs], Measured]
    check: Callable[[Params, Path], None] = no_check  # input checks, before Ray starts
