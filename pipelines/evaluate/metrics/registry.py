"""The metrics the evaluate stage can compute, by the name `evaluate.metrics` lists them.

Adding a metric is one file in this folder defining a `Metric` (see `kid.py`) and its entry in
`METRICS`; its params go into `EvaluateConfig` when it has its own. `listed` checks the names
and `mlflow.promote_on` (a lower-is-better key of a listed metric) before Ray starts.
"""

from __future__ import annotations

from ddpm_core.config import ConfigError
from pipelines.config import Params
from pipelines.evaluate.metrics.base import Metric, Need
from pipelines.evaluate.metrics.fid import FID
from pipelines.evaluate.metrics.isc import ISC
from pipelines.evaluate.metrics.kid import KID
from pipelines.evaluate.metrics.nll import NLL

METRICS: dict[str, Metric] = {m.name: m for m in (FID, ISC, KID, NLL)}


def lower_is_better(metrics: tuple[Metric, ...]) -> dict[str, Metric]:
    """{key: metric} of every key the champion gate may promote on."""
    return {key: m for m in metrics for key in m.lower_is_better}


def listed(params: Params) -> tuple[Metric, ...]:
    """The metrics of `evaluate.metrics`, in that order; ConfigError naming the key otherwise."""
    unknown = [n for n in params.evaluate.metrics if n not in METRICS]
    if unknown:
        raise ConfigError(
            f"evaluate.metrics: got unknown {unknown}, expected names among {sorted(METRICS)}"
        )
    metrics = tuple(METRICS[n] for n in params.evaluate.metrics)
    gates = lower_is_better(metrics)
    if params.mlflow.promote_on not in gates:
        every = sorted(lower_is_better(tuple(METRICS.values())))
        raise ConfigError(
            f"mlflow.promote_on: got {params.mlflow.promote_on!r}, expected a lower-is-better "
            f"metric of evaluate.metrics={list(params.evaluate.metrics)}: {sorted(gates)} "
            f"(every metric declares its own: {every})"
        )
    return metrics


def needs(metrics: tuple[Metric, ...]) -> frozenset[Need]:
    return frozenset().union(*(m.needs for m in metrics))
