"""The model registry: one version per trained model, and the promotion gate on one metric.

The train stage logs the model as an MLflow Model (`train.mlflow_model`) and registers it under
`mlflow.model_name` (null: logged, not registered). After evaluation `promote` gates the train
run's version (`gate`) on the metric `mlflow.promote_on` names (default `fid`; any key a metric of
`pipelines.evaluate.metrics` declares lower-is-better: `kid`, `nll_bpd`): it becomes the
`champion` alias only when its value beats the champion's under the same reference and the same
comparability label; the first version with a value becomes champion. The alias is settled as a
function of every version's tags (`winner`), re-read after each move, so two evaluates racing on
it agree on the result. Every decision is tagged on the version (`promotion`, `promotion.reason`,
the value as `<metric>` and its labels as `<metric>.reference`, `<metric>.comparability`), so the
registry says why a version is not champion. A champion gated on another metric is not compared.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
FID_TAG = "fid"  # the default metric's tags: <metric>, <metric>.reference, <metric>.comparability
REFERENCE_TAG = "fid.reference"
LABEL_TAG = "fid.comparability"
PROMOTION_TAG = "promotion"
REASON_TAG = "promotion.reason"

Outcome = Literal["champion", "rejected", "not_compared"]


def _is(error: MlflowException, code: int) -> bool:
    return bool(error.error_code == ErrorCode.Name(code))


def register(client: MlflowClient, name: str, model_id: str, run_id: str) -> ModelVersion:
    """Version of `name` for the logged model `model_id` of run `run_id` (created once).

    A rerun of a finished training logs no new model (`train.mlflow_model`), so it finds its
    version here instead of adding one.
    """
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if not _is(e, RESOURCE_ALREADY_EXISTS):
            raise
    source = f"models:/{model_id}"
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.source == source:  # (search results leave `model_id` empty)
            return version
    return client.create_model_version(name, source, run_id=run_id, model_id=model_id)


def logged_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The model the run logged last (its LoggedModel output at the largest step), if any."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs else []
    return str(max(models, key=lambda m: m.step).model_id) if models else None


def log_model_metrics(
    client: MlflowClient, run_id: str, model_id: str, metrics: Mapping[str, float], step: int
) -> None:
    """`metrics` on run `run_id` and linked to the logged model `model_id` (its metrics tab)."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step, model_id=model_id) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=batch)


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The newest version of `name` registered from the train run `run_id`, if any."""
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as e:
        if _is(e, RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return max(found, key=lambda v: int(v.version), default=None)


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version holding the `champion` alias, or None."""
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


@dataclass(frozen=True)
class Promotion:
    """What the gate decided for one version, and why."""

    name: str
    version: str
    outcome: Outcome
    reason: str
    previous: str | None  # the champion's version before the decision

    @property
    def promoted(self) -> bool:
        return self.outcome == "champion"


def _name(metric: str) -> str:
    return metric.upper() if metric in ("fid", "kid") else metric


def decide(
    value: float, reference: str, label: str, best: ModelVersion | None, metric: str = FID_TAG
) -> tuple[Outcome, str]:
    """The promotion rule on `metric` (lower is better), apart from the registry."""
    name = _name(metric)
    if not math.isfinite(value):
        return "rejected", f"{name} is {value}, not a finite number"
    if best is None:
        return "champion", f"first version with a {name} ({value:.4g}); no champion yet"
    if metric not in best.tags:
        return "not_compared", f"champion v{best.version} has no {name}: gated on another metric"
    have = _key(best, metric)
    if have != (reference, label):
        return "not_compared", (
            f"{name} not comparable with champion v{best.version}: reference {have[0]!r} vs "
            f"{reference!r}, comparability {have[1]!r} vs {label!r}"
        )
    best_value = float(best.tags[metric])
    if value < best_value:
        return "champion", f"{name} {value:.4g} < champion v{best.version}'s {best_value:.4g}"
    return "rejected", f"{name} {value:.4g} >= champion v{best.version}'s {best_value:.4g}"


def _value(version: ModelVersion, metric: str) -> float:
    try:
        return float(version.tags.get(metric, "nan"))
    except ValueError:
        return math.nan


def _key(version: ModelVersion, metric: str) -> tuple[str | None, str | None]:
    return version.tags.get(f"{metric}.reference"), version.tags.get(f"{metric}.comparability")


def winner(
    versions: list[ModelVersion], holder: ModelVersion | None, metric: str = FID_TAG
) -> ModelVersion | None:
    """The rule, as a function of the gated versions (so racing gates agree on it): among the
    versions whose `metric` is comparable with the alias holder's (the lowest-numbered gated
    version when nobody holds it), the lowest finite value; ties go to the lower version."""
    gated = [v for v in versions if math.isfinite(_value(v, metric))]
    if holder is None:
        if not gated:
            return None
        holder = min(gated, key=lambda v: int(v.version))
    anchor = _key(holder, metric)
    pool = [v for v in gated if _key(v, metric) == anchor]
    return min(pool, key=lambda v: (_value(v, metric), int(v.version)), default=None)


SETTLE_ROUNDS = 20  # re-reads after moving the alias before a gate gives up (a live-lock guard)


def settle_champion(client: MlflowClient, name: str, metric: str = FID_TAG) -> ModelVersion | None:
    """Move `champion` to `winner` until a re-read finds it there; returns the champion.

    Every gate runs this after tagging its own version, so whichever gate moves the alias last
    re-reads every version's tags after its move: the alias ends on the winner of all of them,
    whatever the order of two racing gates.
    """
    for _ in range(SETTLE_ROUNDS):
        holder = champion(client, name)
        best = winner(list(client.search_model_versions(f"name = '{name}'")), holder, metric)
        if best is None or (holder is not None and str(holder.version) == str(best.version)):
            return holder
        client.set_registered_model_alias(name, CHAMPION, str(best.version))
    raise RuntimeError(f"{name}: the champion alias did not settle in {SETTLE_ROUNDS} rounds")


def gate(
    client: MlflowClient,
    name: str,
    version: str,
    value: float,
    reference: str,
    label: str,
    metric: str = FID_TAG,
) -> Promotion:
    """Tag `version` with its `metric` value and labels, then settle `champion`
    (`settle_champion`): it moves to `version` only if it wins (`decide` says why, against the
    champion before).

    Re-gating the champion itself (an evaluate rerun) updates its value; it keeps the alias
    unless a comparable version now has a lower one.
    """
    best = champion(client, name)
    # Versions are str over REST and int from a local (sqlite) store.
    previous = str(best.version) if best is not None else None
    # The value last: a version with a value tag has its labels (racing gates read tags midway).
    tags = {f"{metric}.reference": reference, f"{metric}.comparability": label}
    for key, text in (tags | {metric: repr(value)}).items():
        client.set_model_version_tag(name, version, key, text)
    holder = settle_champion(client, name, metric)
    if holder is not None and str(holder.version) == str(version):
        outcome: Outcome = "champion"
        reason = (
            f"already champion; {_name(metric)} now {value:.4g}"
            if previous == str(version)
            else decide(value, reference, label, best, metric)[1]
        )
    else:
        outcome, reason = decide(value, reference, label, holder, metric)
        if outcome == "champion":  # a tie, or a gate racing this one moved the alias on
            won = f"v{holder and holder.version} won"
            outcome, reason = "rejected", f"{_name(metric)} {value:.4g}: {won}"
    client.set_model_version_tag(name, version, PROMOTION_TAG, outcome)
    client.set_model_version_tag(name, version, REASON_TAG, reason)
    log.info("%s v%s: %s (%s)", name, version, outcome, reason)
    return Promotion(name, version, outcome, reason, previous)


def promote(
    client: MlflowClient,
    name: str | None,
    run_id: str,
    model_id: str | None,
    value: float,
    reference: str,
    label: str,
    metric: str = FID_TAG,
) -> str:
    """The gate on the version registered from train run `run_id` -> the decision, as text
    (also when there is nothing to gate: no `mlflow.model_name`, no logged model, no version)."""
    if name is None:
        return "not gated: mlflow.model_name is null (the model is not registered)"
    if model_id is None:
        return f"not gated: train run {run_id} logged no MLflow Model"
    version = version_of_run(client, name, run_id)
    if version is None:
        return f"not gated: no version of {name!r} from train run {run_id}"
    decision = gate(client, name, str(version.version), value, reference, label, metric)
    return f"{name} v{decision.version}: {decision.outcome} ({decision.reason})"
