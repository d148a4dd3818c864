"""`stages.retrain` against real Ray heads: its submit-and-wait (one head killed mid-job, a
flaky proxy) and the CLI process itself."""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from pipelines.infra import jobs
from stages import retrain
from tests.helpers import REPO, RayHead, free_port


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


class FlakyProxy:
    """A TCP proxy in front of a real Ray head's job server that can fail every connection
    (accept, then reset: a failed poll, the head itself untouched) and later recover."""

    def __init__(self, target: str) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.failing, self.failed = threading.Event(), 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            if self.failing.is_set():
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # connection reset: the poll fails
                self.failed += 1
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def _job(tmp_path: Path, code: str) -> str:
    (tmp_path / "job.py").write_text(code)
    return "python job.py"


def test_lost_after_defaults_to_60_s() -> None:
    assert retrain.build_parser().parse_args([]).lost_after == 60.0 == jobs.LOST_AFTER_S
    assert retrain.build_parser().parse_args(["--lost-after", "5"]).lost_after == 5.0
    default = inspect.signature(retrain.submit_and_wait).parameters["lost_after_s"].default
    assert default == 60.0


def _new_running_job(address: str, before: set[str]) -> str:
    """The submission id of the first job not in `before` once it runs (the CLI names its id
    only in its output, which the test reads after it exits)."""
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 120  # bounds the wait only
    while time.monotonic() < deadline:
        for job in client.list_jobs():
            if job.submission_id not in before and job.status == JobStatus.RUNNING:
                return str(job.submission_id)
        time.sleep(0.2)
    raise TimeoutError("no new job ran")


@pytest.mark.ray
@pytest.mark.parametrize("blip", [True, False], ids=["blip", "stays-down"])
def test_failing_polls_are_a_loss_only_after_lost_after(
    blip: bool, ray_head: RayHead, tmp_path: Path
) -> None:
    """`python -m stages.retrain --wait` as a process, polling its job (the real `stages.all`,
    whose shard stage fails on a missing `data.root`) through a proxy that resets every
    connection once the job runs. A blip (2 failed polls, then the proxy recovers) with the
    default --lost-after: not a loss, the job's real outcome is reported (ended FAILED, exit 1).
    Failing on with --lost-after 3: LOST, exit 3, although the head still runs."""
    root = tmp_path / "checkout"
    _failing_pipeline_checkout(root, f"raw/missing-{'blip' if blip else 'down'}")
    proxy = FlakyProxy(ray_head.address)
    before = {str(j.submission_id) for j in JobSubmissionClient(ray_head.address).list_jobs()}
    running: list[str] = []

    def outage() -> None:
        running.append(_new_running_job(ray_head.address, before))
        proxy.failing.set()
        deadline = time.monotonic() + 120  # bounds the wait only
        while blip and proxy.failed < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        if blip:
            proxy.failing.clear()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    lost_after = () if blip else ("--lost-after", "3")  # the blip: the 60 s default
    try:
        out = _retrain(root, ray_head.env(), proxy.address, "--timeout", "300", *lost_after)
    finally:
        thread.join(timeout=130)
        proxy.close()
    assert proxy.failed >= 2 and running, (proxy.failed, out.stdout, out.stderr[-3000:])
    (sid,) = running
    assert f"retrain: submitted {sid}" in out.stdout
    state = json.loads((root / retrain.STATE_DIR / f"{sid}.json").read_text())
    if blip:
        assert out.returncode == retrain.EXIT_FAILED, out.stderr[-3000:]
        assert f"retrain: job {sid} ended FAILED" in out.stdout
        assert state["status"] == JobStatus.FAILED.value
    else:
        assert out.returncode == retrain.EXIT_LOST, out.stderr[-3000:]
        assert "stopped answering" in out.stdout and state["status"] == "LOST"
        _wait_job_ended(JobSubmissionClient(ray_head.address), sid)  # the head ran it on


@pytest.mark.ray
def test_a_failed_job_exits_1_and_a_timeout_exits_4(
    ray_head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", ray_head.env()["PATH"])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    failing = _job(tmp_path, "raise SystemExit(7)\n")
    base = f"retrain-{uuid.uuid4().hex[:8]}"
    assert retrain.submit_and_wait(tmp_path, ray_head.address, failing, base, 600) == 1
    state = json.loads((tmp_path / retrain.STATE_DIR / f"{base}.json").read_text())
    assert state["status"] == JobStatus.FAILED.value
    # --timeout 0: the first poll finds it pending or running, past the deadline.
    (tmp_path / "job.py").write_text("import time\ntime.sleep(600)\n")
    slow = f"retrain-{uuid.uuid4().hex[:8]}"
    try:
        assert retrain.submit_and_wait(tmp_path, ray_head.address, failing, slow, 0) == 4
    finally:
        JobSubmissionClient(ray_head.address).stop_job(slow)


def _checkout(root: Path, params: dict[str, object]) -> None:
    """A checkout of the code (the packages and pyproject.toml) under DVC, with `params`."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in jobs.CODE_PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=skip)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([jobs.dvc_executable(), "init", "--no-scm", "-q"], cwd=root, check=True)


def _failing_pipeline_checkout(root: Path, missing: str) -> None:
    """A checkout whose params read the raw data from `data.root` = `missing` (outside DVC: the
    tick submits), a folder that does not exist: the job's shard stage fails within seconds.
    Each `missing` gives a job id of its own."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"] |= {"source": "image_folder", "root": missing, "raw": "raw"}
    _checkout(root, raw)


def _retrain(
    root: Path, env: dict[str, str], address: str, *args: str, timeout_s: float = 400
) -> subprocess.CompletedProcess[str]:
    """`python -m stages.retrain --params params.yaml --wait --address <address> <args>` in
    `root`; `timeout_s` bounds the wait only."""
    cli = [sys.executable, "-m", "stages.retrain", "--params", "params.yaml", "--wait"]
    cli += ["--address", address, *args]
    return subprocess.run(cli, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.ray
def test_the_cli_exits_4_on_timeout_and_1_when_its_pipeline_job_fails(
    ray_head: RayHead, tmp_path: Path
) -> None:
    """`python -m stages.retrain` as a process on a real head, submitting the real entrypoint
    (`stages.all`) of `_failing_pipeline_checkout`. `--timeout 0`: exit 4; the next tick
    resubmits (`-2`) and waits: exit 1, FAILED."""
    root, env = tmp_path / "checkout", ray_head.env()
    _failing_pipeline_checkout(root, "raw/missing")
    wait = ("--lost-after", "60", "--timeout")

    timed_out = _retrain(root, env, ray_head.address, *wait, "0", timeout_s=300)
    assert timed_out.returncode == retrain.EXIT_TIMEOUT == 4, timed_out.stderr[-3000:]
    assert "data.root=" in timed_out.stdout and "retrain: submitted retrain-" in timed_out.stdout
    base = timed_out.stdout.split("retrain: submitted ")[1].split()[0]
    client = JobSubmissionClient(ray_head.address)
    client.stop_job(base)
    _wait_job_ended(client, base)

    failed = _retrain(root, env, ray_head.address, *wait, "300")
    assert failed.returncode == retrain.EXIT_FAILED == 1, failed.stderr[-3000:]
    assert f"retrain: submitted {base}-2" in failed.stdout
    assert f"retrain: job {base}-2 ended FAILED" in failed.stdout
    assert "raw/missing" in failed.stderr  # the job's log: its shard stage named the folder
    state = json.loads((root / retrain.STATE_DIR / f"{base}.json").read_text())
    assert state["submission_id"] == f"{base}-2" and state["status"] == JobStatus.FAILED.value


def _wait_job_ended(client: JobSubmissionClient, submission_id: str) -> None:
    deadline = time.monotonic() + 120  # bounds the wait only
    while JobStatus(client.get_job_status(submission_id)) not in jobs.TERMINAL:
        assert time.monotonic() < deadline, f"job {submission_id} never ended"
        time.sleep(0.2)
