"""`stages.retrain`'s submit-and-wait against real Ray heads, one of them killed mid-job."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from stages import retrain
from tests.helpers import RayHead, free_port


def _stop_when_running(head: RayHead, submission_id: str) -> None:
    """Kill the head's processes once the job runs (a lost head, not a refused submission)."""
    deadline = time.monotonic() + 120
    client = JobSubmissionClient(head.address)
    while time.monotonic() < deadline:
        try:
            if client.get_job_status(submission_id) == JobStatus.RUNNING:
                break
        except RuntimeError:  # not submitted yet
            pass
        time.sleep(0.2)
    head.stop()


@pytest.mark.ray
def test_a_lost_head_is_reported_as_lost_and_the_next_tick_resubmits(
    ray_head: RayHead,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", ray_head.env()["PATH"])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    go = tmp_path / "go"
    (tmp_path / "job.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.2)\n"
    )
    base = f"retrain-{uuid.uuid4().hex[:8]}"
    state = tmp_path / retrain.STATE_DIR / f"{base}.json"
    doomed = RayHead(num_cpus=1).start()
    killer = threading.Thread(target=_stop_when_running, args=(doomed, base), daemon=True)
    killer.start()
    try:
        code = retrain.submit_and_wait(
            tmp_path, doomed.address, "python job.py", base, timeout_s=600, lost_after_s=5
        )
    finally:
        killer.join(timeout=60)
        doomed.stop()
    # One line, a distinct exit code, the state recorded; no traceback.
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == retrain.EXIT_LOST == 3
    assert last.startswith(f"retrain: job {base} lost: Ray at ") and "submits again" in last
    assert json.loads(state.read_text())["status"] == "LOST"
    # The next tick, on the cluster that replaced it: submitted again, and it succeeds.
    go.touch()
    code = retrain.submit_and_wait(tmp_path, ray_head.address, "python job.py", base, 120)
    assert code == 0 and json.loads(state.read_text())["status"] == JobStatus.SUCCEEDED.value
    # No cluster at the address at all: lost as well, before anything is submitted.
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert retrain.submit_and_wait(tmp_path, nowhere, "python job.py", base, None) == 3
    assert "unreachable" in capsys.readouterr().out
