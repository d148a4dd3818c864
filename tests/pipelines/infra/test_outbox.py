"""The tracking outbox against a real MLflow server that is stopped and started again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import urllib3
from mlflow.tracking import MlflowClient

from pipelines.infra.outbox import JOURNAL, Outbox, PermanentError, read_journal
from pipelines.infra.tracking import Tracker
from tests.helpers import MlflowServer


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _count_attempts(
    tracker: Tracker, port: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[int]]:
    """Record each outbox try (its op kind) and each TCP connect to `port` (urllib3's)."""
    tries: list[str] = []
    connects: list[int] = []
    send, connect = tracker.outbox.send, urllib3.util.connection.create_connection

    def counted_send(op: dict[str, Any]) -> None:
        tries.append(op["op"])
        send(op)

    def counted_connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        if address[1] == port:
            connects.append(port)
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(tracker.outbox, "send", counted_send)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", counted_connect)
    return tries, connects


def test_tracker_buffers_while_the_server_is_down_and_catches_up_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = MlflowServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    server.start()
    try:
        client = MlflowClient(server.url)
        run_id = client.create_run(client.create_experiment("outbox")).info.run_id
        outbox = tmp_path / "outbox"
        tracker = Tracker(server.url, run_id, str(outbox))
        tracker.log_metrics({"loss": 1.0}, step=1)
        assert not outbox.exists()  # nothing buffered while the server answers
        server.stop()
        grid = tmp_path / "tmp" / "grid.png"
        grid.parent.mkdir()
        grid.write_bytes(b"png bytes")
        tries, connects = _count_attempts(tracker, server.port, monkeypatch)
        with caplog.at_level(logging.WARNING):
            for step in (2, 3, 4):
                tracker.log_metrics({"loss": float(step)}, step=step)
            tracker.log_artifact(grid, "samples")
            tracker.finish()
        # No MLflow client retry loop (8 connections over minutes per call): each outbox try is
        # one refused connection and MLflow's one retry, and the backoff skips most calls.
        assert 1 <= len(tries) < 5 and len(connects) <= 2 * len(tries), (tries, connects)
        monkeypatch.undo()
        assert caplog.text.count("unreachable, buffering") == 1  # one warning per outage
        grid.unlink()  # the caller's temporary file is gone; the outbox kept a copy
        assert len(read_journal(outbox / JOURNAL)) == 5
        # The process ends during the outage: a new handle on the same run and outbox (the next
        # run, a restarted worker) finds the journal and sends it once the server is back.
        assert tracker.pending() == 5
        server.start()
        again = Tracker(server.url, run_id, str(outbox))
        assert again.pending(wait_s=30) == 0
        # ... and the first handle, alive again, re-sends its buffer: stored once regardless.
        assert tracker.pending(wait_s=30) == 0
        assert _steps(client, run_id, "loss") == [1, 2, 3, 4]
        assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/grid.png"]
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not outbox.exists()
        assert "reachable again" in caplog.text
    finally:
        server.stop()


def test_outbox_keeps_order_drops_refused_calls_and_bounds_memory(tmp_path: Path) -> None:
    sent: list[int] = []
    up = {"ok": False}

    def send(op: dict[str, Any]) -> None:
        if op["n"] < 0:
            raise PermanentError("bad request")
        if not up["ok"]:
            raise ConnectionRefusedError("down")
        sent.append(op["n"])

    box = Outbox(send, tmp_path / "box", max_ops=3)
    for n in range(5):
        box.submit({"n": n})
    assert len(box.ops) == 3 and box.dropped == 2 and len(box) == 5
    up["ok"] = True
    assert box.flush(wait_s=5) is False  # two fell out of memory: they stay in the journal
    assert sent == [2, 3, 4] and (tmp_path / "box" / JOURNAL).is_file()
    sent.clear()
    replay = Outbox(send, tmp_path / "box")  # the next process sends the whole journal
    assert replay.flush() is True and sent == [0, 1, 2, 3, 4]
    replay.submit({"n": -1})  # refused for good: logged and dropped, not retried
    assert len(replay) == 0 and not (tmp_path / "box").exists()


def test_truncated_journal_line_is_skipped(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL
    journal.write_text('{"n": 1}\n{"n": 2}\n{"n"')
    assert read_journal(journal) == [{"n": 1}, {"n": 2}]
