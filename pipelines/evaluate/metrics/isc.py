"""The Inception Score (Salimans et al. 2016) of the samples, when the weights have logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.artifacts.fid_stats import InceptionWeights
from pipelines.evaluate.metrics.base import Inputs, Measured, Metric, Need
from pipelines.fid.features import inception_score
from pipelines.fid.inception import HUB_FILE, LOGITS


@dataclass(frozen=True)
class IscResult:
    """Inception Score mean and std over `evaluate.isc_splits`, or why there is none."""

    status: str  # "ok" or "unavailable: <why>"
    mean: float | None = None
    std: float | None = None

    def metrics(self) -> dict[str, Any]:
        if self.mean is None:
            return {"isc_status": self.status}
        return {"isc_status": self.status, "isc_mean": self.mean, "isc_std": self.std}

    def summary(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}" if self.mean is not None else self.status


def unavailable(weights: InceptionWeights) -> IscResult:
    """Why there is no IS; names the hub file without this machine's path (runs/*.json)."""
    return IscResult(
        f"unavailable: {weights.label} has no logits layer; put torch-fidelity's full weights "
        f"({HUB_FILE}) in the torch hub cache ($TORCH_HOME/hub/checkpoints) or name them in "
        "evaluate.fid.inception_weights"
    )


def measure(inputs: Inputs) -> Measured:
    if LOGITS not in inputs.features:
        r = unavailable(inputs.weights)
    else:
        r = IscResult(
            "ok", *inception_score(inputs.features[LOGITS], inputs.params.evaluate.isc_splits)
        )
    return Measured(r.metrics(), f"IS {r.summary()}", {"isc.status": r.status})


ISC = Metric(
    name="isc",
    params=("evaluate.isc_splits",),
    needs=frozenset({Need.SAMPLES}),
    layers=(LOGITS,),  # dropped by the stage when the weights have none (pool3 only)
    logs=("isc_status", "isc_mean", "isc_std"),
    lower_is_better=(),  # higher is better: not a gate
    measure=measure,
)
