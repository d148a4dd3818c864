"""MLflow tracking: URI precedence, child runs, the tracked-stage runner, picklable handles."""

from __future__ import annotations

import dataclasses
import getpass
import json
import pickle
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import MlflowConfig, Params
from pipelines.infra.jobs import runtime_env
from pipelines.infra.lifecycle import open_child_run, run_tracked
from pipelines.infra.run_files import read_run_file, split_metrics, write_run_file
from pipelines.infra.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GIT_COMMIT_ENV,
    Tracker,
    _artifact_location,
    best_effort,
    experiment_id,
    open_run,
    redact_uri,
    tracking_uri,
)
from tests.helpers import MlflowServer, free_port


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
    cfg = MlflowConfig(None, "e", model_name=None, system_metrics=False, promote_on="fid")
    assert tracking_uri(cfg, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(cfg, tmp_path) == "http://127.0.0.1:5000"
    cfg = MlflowConfig(
        "sqlite:///rel/x.db", "e", model_name=None, system_metrics=False, promote_on="fid"
    )
    assert tracking_uri(cfg, tmp_path) == f"sqlite:///{tmp_path.resolve()}/rel/x.db"


def test_local_store_is_shared_by_dvc_temporary_workspaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `dvc exp run --temp/--queue` a stage runs in a temporary copy while `DVC_ROOT` names
    the main workspace: the relative sqlite store and its artifacts resolve there."""
    main, temp = tmp_path / "main", tmp_path / "main" / ".dvc" / "tmp" / "exps" / "tmp1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(main))
    cfg = MlflowConfig(None, "e", model_name=None, system_metrics=False, promote_on="fid")
    assert tracking_uri(cfg, temp) == f"sqlite:///{main.resolve()}/mlflow.db"
    assert _artifact_location(tracking_uri(cfg, temp), temp) == (main / "mlartifacts").as_uri()


def test_split_metrics_keeps_numbers_and_moves_texts_flags_and_timings() -> None:
    record = {"fid": 3.2, "steps": 10, "ok": True, "comparability": "NOT comparable: x"}
    record |= {"wall_time_s": 1.5, "images_per_s": 9.0, "ordered_hash": "ab" * 32}
    numbers, details = split_metrics(record)
    assert numbers == {"fid": 3.2, "steps": 10}
    assert set(details) == {"ok", "comparability", "wall_time_s", "images_per_s", "ordered_hash"}


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
    assert written == {"images": 3}  # numbers only: `dvc exp show` stays readable
    assert read_run_file(params, "sample", tmp_path)["details"] == {"label": "x"}  # type: ignore[index]
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


def test_run_files_name_no_machines_absolute_store_path(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    """runs/*.json is committed: a sqlite store inside the repository is written relative to it
    (two machines write the same file) and read back as this machine's absolute URI."""
    params = make_params()  # tracking_uri sqlite:///<tmp_path>/mlflow.db
    train = open_run(params, "train", tmp_path)
    train.finish()
    write_run_file(params, "train", train, tmp_path)
    written = json.loads((Path(params.paths.runs) / "train.json").read_text())
    assert written["uri"] == "sqlite:///mlflow.db"
    assert str(tmp_path) not in (Path(params.paths.runs) / "train.json").read_text()
    info = read_run_file(params, "train", tmp_path)
    assert info is not None and info["uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert MlflowClient(info["uri"]).get_run(train.run_id).info.status == "FINISHED"


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


def test_runs_carry_mlflows_standard_tags_and_a_training_experiment_kind(
    tmp_path: Path, make_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `mlflow.start_run` tags runs; outside git (a Ray job's upload) the commit comes from
    the environment. The experiment opens on the model-training runs view."""
    params = make_params()
    monkeypatch.setenv(GIT_COMMIT_ENV, "0123abcd")
    run = open_run(params, "train", tmp_path)  # tmp_path: no .git
    client = MlflowClient(run.uri)
    tags = client.get_run(run.run_id).data.tags
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.source.git.commit"] == tags["git.commit"] == "0123abcd"
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    # In a git checkout the checkout's commit wins over the environment.
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                 "--allow-empty", "-m", "x"]):  # fmt: skip
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = client.get_run(open_run(params, "train", repo).run_id).data.tags
    assert tags["mlflow.source.git.commit"] == head != "0123abcd"

    # An experiment made elsewhere gets the kind once; a kind someone chose is kept.
    old = client.create_experiment("made-by-hand")
    assert experiment_id(client, "made-by-hand", run.uri, tmp_path) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    client.set_experiment_tag(old, EXPERIMENT_KIND_TAG, "genai_development")
    experiment_id(client, "made-by-hand", run.uri, tmp_path)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "genai_development"


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


def test_best_effort_skips_an_unreachable_server_and_raises_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Model logging and the registry after a stage's work: a down server is a warning and the
    fallback (the work is kept), a refused request (404 here) still an error."""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    got = best_effort("the gate", lambda: MlflowClient(down).get_run("r" * 32), "fallback")
    assert got == "fallback" and "MLflow server unreachable: the gate skipped" in caplog.text
    local = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(Exception, match="not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        best_effort("the gate", lambda: local.get_run("r" * 32), "fallback")
