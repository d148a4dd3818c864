"""MLflow tracking: URI precedence, child runs, the tracked-stage runner, picklable handles."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import MlflowConfig, Params
from pipelines.infra.jobs import runtime_env
from pipelines.infra.tracking import (
    Tracker,
    open_child_run,
    open_run,
    read_run_file,
    redact_uri,
    run_tracked,
    tracking_uri,
    write_run_file,
)
from tests.helpers import MlflowServer


@dataclass(frozen=True)
class FakeResult:
    metrics_file: ClassVar[str] = "fake.json"
    run_id: str

    def metrics(self) -> dict[str, Any]:
        return {"images": 3, "label": "x"}


def _stage(params: Params, root: Path, tracker: Tracker) -> FakeResult:
    tracker.log_metrics({"images": 3}, step=0)
    return FakeResult(tracker.run_id)


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = MlflowConfig(tracking_uri=None, experiment="e")
    assert tracking_uri(cfg, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(cfg, tmp_path) == "http://127.0.0.1:5000"
    cfg = MlflowConfig(tracking_uri="sqlite:///rel/x.db", experiment="e")
    assert tracking_uri(cfg, tmp_path) == f"sqlite:///{tmp_path.resolve()}/rel/x.db"


def test_stage_runs_nest_under_train(tmp_path: Path, make_params: Callable[..., Params]) -> None:
    params = make_params()
    train = open_run(params, "train", tmp_path)
    train.log_metrics({"loss": 1.5}, step=3)
    train.finish()
    write_run_file(params, "train", train, tmp_path)
    child = open_child_run(params, "sample", tmp_path)
    result = run_tracked(params, tmp_path, "sample", child, _stage)
    assert result.run_id == child.run_id
    written = json.loads((Path(params.paths.metrics) / "fake.json").read_text())
    assert written == {"images": 3, "label": "x"}
    client = MlflowClient(train.uri)
    run = client.get_run(child.run_id)
    assert run.data.metrics["images"] == 3.0
    assert [a.path for a in client.list_artifacts(child.run_id, "sample")] == ["sample/fake.json"]
    assert run.data.tags["mlflow.parentRunId"] == train.run_id
    assert run.data.params["diffusion.T"] == str(params.diffusion.T)
    assert run.info.status == "FINISHED"
    assert read_run_file(params, "sample", tmp_path)["run_id"] == child.run_id
    assert client.get_metric_history(train.run_id, "loss")[0].step == 3
    # the handle survives pickling (it is sent to Ray workers) and reattaches
    clone = pickle.loads(pickle.dumps(train))
    clone.log_metrics({"loss": 1.0}, step=4)
    assert len(client.get_metric_history(train.run_id, "loss")) == 2


def test_failed_stage_marks_run_failed_and_writes_no_file(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    params = make_params()
    t = open_child_run(params, "evaluate", tmp_path)  # no train run file: a top-level run

    def boom(params: Params, root: Path, tracker: Tracker) -> FakeResult:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_tracked(params, tmp_path, "evaluate", t, boom)
    assert MlflowClient(t.uri).get_run(t.run_id).info.status == "FAILED"
    assert read_run_file(params, "evaluate", tmp_path) is None
    assert not (Path(params.paths.metrics) / "fake.json").exists()


def test_credentials_in_the_tracking_uri_are_never_written(
    tmp_path: Path,
    make_params: Callable[..., Params],
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real server on loopback reached as http://user:token@host: runs work, nothing leaks."""
    secret = "s3cr3t-token"
    uri = mlflow_server.url.replace("http://", f"http://ddpm:{secret}@")
    assert redact_uri(uri) == mlflow_server.url.replace("http://", "http://***@")
    params = make_params()
    params = dataclasses.replace(
        params, mlflow=dataclasses.replace(params.mlflow, tracking_uri=uri)
    )
    train = open_run(params, "train", tmp_path)
    write_run_file(params, "train", train, tmp_path)
    child = open_child_run(params, "sample", tmp_path)  # still nests: redacted URIs compared
    run_tracked(params, tmp_path, "sample", child, _stage)
    client = MlflowClient(mlflow_server.url)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == train.run_id
    for run_id in (train.run_id, child.run_id):
        logged = client.get_run(run_id).data
        assert not [v for v in [*logged.params.values(), *logged.tags.values()] if secret in v]
    for path in Path(params.paths.runs).glob("*.json"):
        assert secret not in path.read_text() and "***@" in path.read_text()
    assert secret not in repr(train)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    env = runtime_env(tmp_path)["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == mlflow_server.url
    assert secret not in caplog.text
