"""The tracked-stage lifecycle against a real `mlflow server` on loopback: what a stage left
unsent (a server stopped mid-stage, a killed process) is sent by the next run of that stage."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Params
from pipelines.infra.lifecycle import (
    claim_path,
    open_child_run,
    portable_outbox,
    replay_unfinished,
    run_tracked,
)
from pipelines.infra.run_files import read_run_file, run_file
from pipelines.infra.tracking import Tracker
from tests.helpers import REPO, MlflowServer, assert_portable, build_params, params_file

REPLAYED = "of an earlier sample run: sending its unsent calls"


@dataclass(frozen=True)
class Done:
    metrics_file: ClassVar[str] = "fake.json"

    def metrics(self) -> dict[str, Any]:
        return {"images": 2}


def _params(root: Path, url: str) -> Params:
    params = build_params(root)
    return dataclasses.replace(params, mlflow=dataclasses.replace(params.mlflow, tracking_uri=url))


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _quiet(params: Params, root: Path, tracker: Tracker) -> Done:
    return Done()


def test_the_next_run_of_a_stage_sends_what_an_outage_left_unsent_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    try:
        params = _params(tmp_path, server.url)

        def outage(params: Params, root: Path, tracker: Tracker) -> Done:
            tracker.log_metrics({"images": 1.0}, step=0)
            server.stop()  # down for the rest of the stage, its end included
            tracker.log_metrics({"images": 2.0}, step=1)
            return Done()

        first = open_child_run(params, "sample", tmp_path)
        run_tracked(params, tmp_path, "sample", first, outage, final_wait_s=0.5)
        details = read_run_file(params, "sample", tmp_path)["details"]  # type: ignore[index]
        assert details["mlflow_unsent"] > 0
        # runs/*.json is tracked by git: the outbox relative to the root, no machine's path
        assert_portable(run_file(params, "sample", tmp_path))
        assert (tmp_path / details["mlflow_outbox"]).resolve() == Path(first.outbox_dir or "")
        claim = claim_path(first)
        assert claim is not None and claim.is_file()
        server.start()
        client = MlflowClient(server.url)
        assert client.get_run(first.run_id).info.status == "RUNNING"  # its end never arrived
        # Another stage's run leaves sample's outbox alone.
        run_tracked(
            params, tmp_path, "evaluate", open_child_run(params, "evaluate", tmp_path), _quiet
        )
        assert claim.is_file() and client.get_run(first.run_id).info.status == "RUNNING"
        with caplog.at_level(logging.WARNING):
            second = open_child_run(params, "sample", tmp_path)
            run_tracked(params, tmp_path, "sample", second, _quiet)
            assert _steps(client, first.run_id, "images") == [0, 1]
            assert client.get_run(first.run_id).info.status == "FINISHED"
            files = [a.path for a in client.list_artifacts(first.run_id, "sample")]
            assert files == ["sample/fake.json"]
            assert not claim.exists() and not Path(first.outbox_dir or "").exists()
            # Exactly once: the next run finds nothing left to send.
            third = open_child_run(params, "sample", tmp_path)
            assert replay_unfinished(third, "sample") == 0
        assert caplog.text.count(REPLAYED) == 1
        assert client.get_run(second.run_id).info.status == "FINISHED"
        assert not claim_path(second).exists()  # type: ignore[union-attr]
    finally:
        server.stop()


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from pipelines.config import load_params
    from pipelines.infra.lifecycle import open_child_run, run_tracked

    def body(params, root, tracker):
        tracker.log_metrics({"images": 1.0}, step=0)
        print(tracker.run_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    root = Path(sys.argv[2])
    params = load_params(sys.argv[1])
    run_tracked(params, root, "sample", open_child_run(params, "sample", root), body)
    """
)


def test_a_stage_killed_mid_run_is_ended_failed_by_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    try:
        params = _params(tmp_path, server.url)
        path = params_file(params, tmp_path / "params.yaml")
        proc = subprocess.run(
            [sys.executable, "-c", KILLED, str(path), str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == -9, proc.stderr
        killed = proc.stdout.strip()
        client = MlflowClient(server.url)
        assert client.get_run(killed).info.status == "RUNNING"
        nxt = open_child_run(params, "sample", tmp_path)
        run_tracked(params, tmp_path, "sample", nxt, _quiet)
        assert client.get_run(killed).info.status == "FAILED"
        assert _steps(client, killed, "images") == [0]
        assert not (Path(nxt.outbox_dir or "").parent / f"{killed}.claim").exists()
    finally:
        server.stop()


def test_run_files_hold_no_machine_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runs/*.json is tracked by git: the outbox is written relative to the root, or as
    `<paths.ray_storage>/...` when that lies elsewhere; the committed files hold no such path."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    inside = Tracker("sqlite:///x.db", "abc", str(tmp_path / ".ray_storage/mlflow_outbox/abc"))
    assert portable_outbox(inside, tmp_path) == ".ray_storage/mlflow_outbox/abc"
    outside = Tracker("sqlite:///x.db", "abc", "/mnt/shared/ray/mlflow_outbox/abc")
    assert portable_outbox(outside, tmp_path) == "<paths.ray_storage>/mlflow_outbox/abc"
    for committed in sorted((REPO / "runs").glob("*.json")):
        assert_portable(committed)
