"""The analysis stages (sample, evaluate): an MLflow child run of the train run + a metrics file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.infra.files import write_json
from pipelines.infra.tracking import Tracker, repo_root, stage_run


def run_child_stage(
    params: Params,
    stage: str,
    metrics_file: str,
    body: Callable[[Params, Path, Tracker], dict[str, Any]],
) -> tuple[dict[str, Any], str]:
    """`body(params, root, tracker)` in an MLflow child run of the train run; its metrics go to
    `<paths.metrics>/<metrics_file>` and to the run as an artifact. Returns (metrics, run id)."""
    root = repo_root()
    with stage_run(params, stage, root=root) as tracker:
        metrics = body(params, root, tracker)
        path = root / params.paths.metrics / metrics_file
        write_json(path, metrics)
        tracker.log_artifact(path, stage)
    return metrics, tracker.run_id
