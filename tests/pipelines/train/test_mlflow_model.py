"""The MLflow Model of a training run: where it is logged, and the tracking-store switch."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import mlflow
import pytest

from pipelines.infra.tracking import open_run
from pipelines.train.mlflow_model import MLFLOW_TRACKING_URI_ENV, log_mlflow_model, tracking_store
from tests.helpers import build_params, make_model_dir


def test_the_model_is_logged_in_the_training_runs_experiment(tmp_path: Path) -> None:
    """`Model.log` with a run id but no active run put the LoggedModel (and its artifacts) in
    the Default experiment (id 0), where a basic-auth server's user may not write: it belongs
    to the training run's experiment, and no run or experiment is left active."""
    params = build_params(tmp_path)
    params = dataclasses.replace(params, mlflow=dataclasses.replace(params.mlflow, model_name=None))
    tracker = open_run(params, "train", tmp_path)
    logged = log_mlflow_model(params, tracker, make_model_dir(params), params.train.steps)
    client = tracker.client
    experiment = client.get_experiment(client.get_run(tracker.run_id).info.experiment_id)
    model = client.get_logged_model(logged.model_id)
    assert experiment.experiment_id != "0"
    assert (model.experiment_id, model.source_run_id) == (experiment.experiment_id, tracker.run_id)
    assert model.artifact_location.startswith(experiment.artifact_location), model.artifact_location
    assert mlflow.active_run() is None


@pytest.mark.parametrize("before", ["http://mlflow.example.invalid:5000", None])
def test_tracking_store_leaves_the_environment_as_it_was(
    before: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's `_use_tracking_uri` alone unset MLFLOW_TRACKING_URI on exit, so `stages.all`
    logged every stage after train to the default sqlite store instead of the user's server."""
    if before is None:
        monkeypatch.delenv(MLFLOW_TRACKING_URI_ENV, raising=False)
    else:
        monkeypatch.setenv(MLFLOW_TRACKING_URI_ENV, before)
    inner = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_store(inner):
        assert mlflow.get_tracking_uri() == inner
    assert os.environ.get(MLFLOW_TRACKING_URI_ENV) == before
