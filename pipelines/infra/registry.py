"""The model registry: one version per trained model, and the promotion gate on its FID.

The train stage logs the model as an MLflow Model (`train.mlflow_model`) and registers it under
`mlflow.model_name` (null: logged, not registered). After evaluation `promote` gates the train
run's version (`gate`): it becomes the `champion` alias only when its FID beats the champion's
(lower is better) under the same FID reference split and the same comparability label; the first
version with a FID becomes champion. The alias is settled as a function of every version's tags
(`winner`), re-read after each move, so two evaluates racing on it agree on the result. Every
decision is tagged on the version (`promotion`, `promotion.reason`, the FID and its labels), so
the registry says why a version is not champion.
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
FID_TAG = "fid"
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


def decide(
    fid: float, reference: str, label: str, best: ModelVersion | None
) -> tuple[Outcome, str]:
    """The promotion rule, apart from the registry: (outcome, reason)."""
    if not math.isfinite(fid):
        return "rejected", f"FID is {fid}, not a finite number"
    if best is None:
        return "champion", f"first version with a FID ({fid:.4g}); no champion yet"
    have = (best.tags.get(REFERENCE_TAG), best.tags.get(LABEL_TAG))
    if have != (reference, label):
        return "not_compared", (
            f"FID not comparable with champion v{best.version}: reference {have[0]!r} vs "
            f"{reference!r}, comparability {have[1]!r} vs {label!r}"
        )
    best_fid = float(best.tags[FID_TAG])
    if fid < best_fid:
        return "champion", f"FID {fid:.4g} < champion v{best.version}'s {best_fid:.4g}"
    return "rejected", f"FID {fid:.4g} >= champion v{best.version}'s {best_fid:.4g}"


def _fid(version: ModelVersion) -> float:
    try:
        return float(version.tags.get(FID_TAG, "nan"))
    except ValueError:
        return math.nan


def _key(version: ModelVersion) -> tuple[str | None, str | None]:
    return version.tags.get(REFERENCE_TAG), version.tags.get(LABEL_TAG)


def winner(versions: list[ModelVersion], holder: ModelVersion | None) -> ModelVersion | None:
    """The rule, as a function of the gated versions (so racing gates agree on it): among the
    versions whose FID is comparable with the alias holder's (the lowest-numbered gated version
    when nobody holds it), the lowest finite FID; ties go to the lower version number."""
    gated = [v for v in versions if math.isfinite(_fid(v))]
    if holder is None:
        if not gated:
            return None
        holder = min(gated, key=lambda v: int(v.version))
    anchor = _key(holder)
    pool = [v for v in gated if _key(v) == anchor]
    return min(pool, key=lambda v: (_fid(v), int(v.version)), default=None)


SETTLE_ROUNDS = 20  # re-reads after moving the alias before a gate gives up (a live-lock guard)


def settle_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """Move `champion` to `winner` until a re-read finds it there; returns the champion.

    Every gate runs this after tagging its own version, so whichever gate moves the alias last
    re-reads every version's tags after its move: the alias ends on the winner of all of them,
    whatever the order of two racing gates.
    """
    for _ in range(SETTLE_ROUNDS):
        holder = champion(client, name)
        best = winner(list(client.search_model_versions(f"name = '{name}'")), holder)
        if best is None or (holder is not None and str(holder.version) == str(best.version)):
            return holder
        client.set_registered_model_alias(name, CHAMPION, str(best.version))
    raise RuntimeError(f"{name}: the champion alias did not settle in {SETTLE_ROUNDS} rounds")


def gate(
    client: MlflowClient, name: str, version: str, fid: float, reference: str, label: str
) -> Promotion:
    """Tag `version` with its FID and labels, then settle `champion` (`settle_champion`): it
    moves to `version` only if it wins (`decide` says why, against the champion before).

    Re-gating the champion itself (an evaluate rerun) updates its FID; it keeps the alias unless
    a comparable version now has a lower FID.
    """
    best = champion(client, name)
    # Versions are str over REST and int from a local (sqlite) store.
    previous = str(best.version) if best is not None else None
    # The FID last: a version with a FID tag has its labels (racing gates read tags midway).
    for key, value in {REFERENCE_TAG: reference, LABEL_TAG: label, FID_TAG: repr(fid)}.items():
        client.set_model_version_tag(name, version, key, value)
    holder = settle_champion(client, name)
    if holder is not None and str(holder.version) == str(version):
        outcome: Outcome = "champion"
        reason = (
            f"already champion; FID now {fid:.4g}"
            if previous == str(version)
            else decide(fid, reference, label, best)[1]
        )
    else:
        outcome, reason = decide(fid, reference, label, holder)
        if outcome == "champion":  # a tie, or a gate racing this one moved the alias on
            outcome, reason = "rejected", f"FID {fid:.4g}: v{holder and holder.version} won"
    client.set_model_version_tag(name, version, PROMOTION_TAG, outcome)
    client.set_model_version_tag(name, version, REASON_TAG, reason)
    log.info("%s v%s: %s (%s)", name, version, outcome, reason)
    return Promotion(name, version, outcome, reason, previous)


def promote(
    client: MlflowClient,
    name: str | None,
    run_id: str,
    model_id: str | None,
    fid: float,
    reference: str,
    label: str,
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
    decision = gate(client, name, str(version.version), fid, reference, label)
    return f"{name} v{decision.version}: {decision.outcome} ({decision.reason})"
