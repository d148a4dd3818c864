"""The DVC hand-off files of tracked stages: `<paths.runs>/<stage>.json`.

A stage's MLflow run is handed to the stages after it through this small JSON file (run id,
experiment id, the redacted tracking URI, a sqlite store relative to the repository, and the
stage's `details`: the texts, hashes, flags and timings of its record that do not belong in the
DVC metrics file, `split_metrics`). Nothing here opens or ends a run (`infra.lifecycle`), and
nothing talks to MLflow but the experiment look-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from pipelines.config import Params
from pipelines.infra.files import write_json
from pipelines.infra.outbox import first_line
from pipelines.infra.tracking import Tracker, absolute_uri, fast_http, portable_uri, redact_uri

log = logging.getLogger(__name__)


def run_file(params: Params, stage: str, root: Path) -> Path:
    """`<paths.runs>/<stage>.json`: the run-id hand-off between DVC stages."""
    return root / params.paths.runs / f"{stage}.json"


def write_run_file(
    params: Params,
    stage: str,
    tracker: Tracker,
    root: Path,
    details: Mapping[str, Any] | None = None,
) -> None:
    """The hand-off file, with the stage's `details` (texts, hashes, timings) when it has any.

    The experiment id is null when the server cannot be reached (the run id is what matters).
    """
    try:
        with fast_http():
            experiment: str | None = tracker.client.get_run(tracker.run_id).info.experiment_id
    except MlflowException as e:
        log.warning("experiment of run %s unknown (%s)", tracker.run_id, first_line(e))
        experiment = None
    info: dict[str, Any] = {
        "run_id": tracker.run_id,
        "experiment_id": experiment,
        # runs/*.json is tracked by git: no credentials, no machine's absolute path
        "uri": portable_uri(redact_uri(tracker.uri), root),
    }
    if details:
        info["details"] = dict(details)
    write_json(run_file(params, stage, root), info)


def read_run_file(params: Params, stage: str, root: Path) -> dict[str, Any] | None:
    """The hand-off file of `stage` (its tracking URI resolved against `root`), or None."""
    path = run_file(params, stage, root)
    if not path.exists():
        return None
    info: dict[str, Any] = json.loads(path.read_text())
    if isinstance(info.get("uri"), str):
        info["uri"] = absolute_uri(info["uri"], root)  # the store as this machine sees it
    return info


TIMINGS = ("_time_s", "_per_s")  # wall_time_s, images_per_s, ...: vary run to run


def split_metrics(record: Mapping[str, Any]) -> tuple[dict[str, float | int], dict[str, Any]]:
    """(numbers, details) of a stage's record: the numbers go to the DVC metrics file, so
    `dvc exp show` and `dvc metrics diff` stay readable; texts (comparability, statuses), hashes,
    flags and timings go to `details` in the non-metrics `runs/<stage>.json`."""
    numbers: dict[str, float | int] = {}
    details: dict[str, Any] = {}
    for key, value in record.items():
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if is_number and not key.endswith(TIMINGS):
            numbers[key] = value
        else:
            details[key] = value
    return numbers, details
