from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import MlflowConfig, Params
from pipelines.infra.tracking import open_run, read_run_file, stage_run, tracking_uri


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
    train = open_run(params, "train", root=tmp_path)
    train.log_metrics({"loss": 1.5}, step=3)
    train.finish()
    from pipelines.infra.tracking import write_run_file

    write_run_file(params, "train", train, tmp_path)
    with stage_run(params, "sample", root=tmp_path) as child:
        child.log_metrics({"images_per_s": 2.0}, step=0)
    client = MlflowClient(train.uri)
    run = client.get_run(child.run_id)
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
    with pytest.raises(RuntimeError), stage_run(params, "evaluate", root=tmp_path) as t:
        raise RuntimeError("boom")
    assert MlflowClient(t.uri).get_run(t.run_id).info.status == "FAILED"
    assert read_run_file(params, "evaluate", tmp_path) is None
