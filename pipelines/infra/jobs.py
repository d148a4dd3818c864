"""Submitting the pipeline to a Ray cluster as a job, and the scheduled-retraining decision.

A scheduler (cron, a Kubernetes CronJob) runs `python -m stages.retrain` in a checkout of the
repository. It asks DVC whether inputs changed since the last `dvc.lock` (missing outputs of a
shallow clone do not count), and treats raw data under `data.root` (outside DVC) as always
possibly changed; if so it submits `python -m stages.all` as a Ray job whose submission id is
derived from the inputs' hash (params, dvc.lock, code, a fingerprint of the raw data), so a
later tick with the same inputs finds the job already there (pending, running or succeeded)
and submits nothing: idempotent. A failed or stopped job is retried under
`<id>-2`, `<id>-3`, ...

A cluster that stops answering (head lost, address unreachable) raises `ClusterLost`: the
retrain CLI reports the job as lost and the next tick submits again (a new head has no record of
the job; one that kept its job table reports it failed, which is retried as `<id>-2`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from pipelines.infra.outbox import first_line
from pipelines.infra.tracking import GIT_COMMIT_ENV, redact_uri, source_commit

log = logging.getLogger(__name__)

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
LOST_AFTER_S = 60.0  # polls failing this long (not a blip) mean the cluster is gone
POLL_S = 2.0
# Never upload these with the working dir (.git and .venv are excluded by Ray already); anchored
# at its root ("/data/"): a bare "data/" would also drop the package pipelines/data/.
EXCLUDES = ["/data/", "/models/", "/.ray_storage/", "/mlartifacts/", "/mlflow.db", "/.dvc/cache/"]
# Environment forwarded from the submitter to every task of the job.
CODE_PACKAGES = ("ddpm_core", "pipelines", "stages")
FORWARD_ENV = ("MLFLOW_TRACKING_URI", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "DDPM_TRIGGER")


class ClusterLost(RuntimeError):
    """The Ray cluster cannot be reached, or no longer knows the job: its fate is unknown."""


@dataclass(frozen=True)
class Decision:
    """What a retraining tick decided: whether inputs changed, and the job it maps to."""

    changed: bool
    reason: str
    submission_id: str


def dvc_executable() -> str:
    """`dvc` on PATH, else the one installed beside this interpreter (a venv not on PATH)."""
    return shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")


def dvc_status(root: Path) -> dict[str, Any]:
    """`dvc status --json` in `root`: {} when every stage is up to date with `dvc.lock`."""
    proc = subprocess.run(
        [dvc_executable(), "status", "--json"], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc status` failed in {root}: {proc.stderr.strip()}")
    out = proc.stdout.strip()
    status: dict[str, Any] = json.loads(out) if out else {}
    return status


def input_changes(status: dict[str, Any]) -> list[str]:
    """Stages of `dvc status --json` whose inputs changed: params, command or a dep's content.

    Missing outputs ("not in cache", "deleted") are not input changes: a fresh or shallow clone
    (the Kubernetes CronJob's `git clone --depth 1`) has no DVC cache, so every output and every
    dep that is an upstream output reads as missing there on every tick.
    """
    changed = []
    for stage, entries in status.items():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                changed.append(stage)  # e.g. "changed checksum": an edited dvc.yaml stage
                break
            deps = entry.get("changed deps", {})
            others = set(entry) - {"changed deps", "changed outs"}
            if others or any(v != "deleted" for v in deps.values()):
                changed.append(stage)
                break
    return sorted(set(changed))


def code_files(root: Path) -> list[Path]:
    """What the pipeline runs: the packages' sources, dvc.yaml and pyproject.toml."""
    files = [p for pkg in CODE_PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    return files + [root / name for name in ("dvc.yaml", "pyproject.toml")]


def data_root(root: Path, params_file: str) -> Path | None:
    """`data.root` of the job's params file (resolved against `root`), or None."""
    raw = yaml.safe_load((root / params_file).read_text()) if (root / params_file).is_file() else {}
    value = ((raw or {}).get("data") or {}).get("root")
    return None if value is None else root / Path(str(value)).expanduser()


def data_fingerprint(folder: Path | None) -> str:
    """Path, size and mtime of every file under the raw data (DVC does not track `data.root`)."""
    if folder is None:
        return "<none>"
    if not folder.exists():
        return "<missing>"
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return "\n".join(
        f"{p.relative_to(folder).as_posix()} {p.stat().st_size} {p.stat().st_mtime_ns}"
        for p in files
    )


def inputs_hash(root: Path, params_file: str) -> str:
    """Hash of everything a retrain depends on: the job's params file, DVC's params.yaml and
    dvc.lock, the code (`code_files`) and the raw data under `data.root` (`data_fingerprint`).
    The same inputs map to the same job id; any change, a new one."""
    h = hashlib.sha256()
    names = sorted({params_file, "params.yaml", "dvc.lock"})
    for path in [root / n for n in names] + code_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    h.update(data_fingerprint(data_root(root, params_file)).encode())
    return h.hexdigest()[:10]


def decide(root: Path, params_file: str, force: bool = False) -> Decision:
    """Retrain when DVC reports changed inputs, when the raw data lives outside DVC's view
    (`data.root` set: the job id, which hashes it, decides), or when forced."""
    changed = input_changes(dvc_status(root))
    external = data_root(root, params_file)
    if changed:
        reason = "changed: " + ", ".join(changed)
    elif force:
        reason = "forced"
    elif external is not None:
        reason = f"data.root={external} is outside DVC: submit unless this input hash has a job"
    else:
        reason = "up to date with dvc.lock"
    submit = bool(changed) or force or external is not None
    return Decision(submit, reason, submission_id=f"retrain-{inputs_hash(root, params_file)}")


def runtime_env(working_dir: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime env: code upload, excludes and the forwarded environment.

    A job's runtime env is stored in the cluster and shown by the dashboard and `ray job list`,
    so credentials in `MLFLOW_TRACKING_URI` are removed: the cluster's nodes authenticate with
    their own `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (or `MLFLOW_TRACKING_TOKEN`),
    set from a secret (deploy/). The upload has no `.git`, so the commit travels as an env var.
    """
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    env[GIT_COMMIT_ENV] = source_commit(working_dir)
    env.update(extra_env or {})
    uri = env.get("MLFLOW_TRACKING_URI")
    if uri and redact_uri(uri, mask="") != uri:
        env["MLFLOW_TRACKING_URI"] = redact_uri(uri, mask="")
        log.warning(
            "MLFLOW_TRACKING_URI holds credentials: forwarded to the job without them as %s; "
            "give the cluster MLFLOW_TRACKING_USERNAME/PASSWORD from a secret",
            env["MLFLOW_TRACKING_URI"],
        )
    return {"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env}


def existing_status(client: JobSubmissionClient, submission_id: str) -> JobStatus | None:
    """The status of a job with this submission id, or None if the cluster has none."""
    try:
        return JobStatus(client.get_job_status(submission_id))
    except RuntimeError as e:  # the client raises RuntimeError("... does not exist")
        if "does not exist" in str(e):
            return None
        raise


def next_submission_id(client: JobSubmissionClient, base: str) -> tuple[str, bool]:
    """(id, submit?): the first of `base`, `base-2`, ... that is free or not failed/stopped."""
    for attempt in range(1, 1000):
        sid = base if attempt == 1 else f"{base}-{attempt}"
        status = existing_status(client, sid)
        if status is None:
            return sid, True
        if status not in (JobStatus.FAILED, JobStatus.STOPPED):
            return sid, False  # pending, running or succeeded: nothing to do
    raise RuntimeError(f"job {base}: 999 failed attempts; giving up")


def submit(
    address: str,
    entrypoint: str,
    base_id: str,
    working_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> tuple[JobSubmissionClient, str, bool]:
    """Submit unless an equivalent job exists; returns (client, submission id, newly submitted).

    `ClusterLost` when the cluster at `address` does not answer.
    """
    try:
        client = JobSubmissionClient(address)
    except (OSError, RuntimeError) as e:  # ConnectionError("Failed to connect to Ray at ...")
        raise ClusterLost(f"Ray at {address} unreachable ({first_line(e)})") from e
    submission_id, new = next_submission_id(client, base_id)
    if not new:
        log.info("job %s already exists; not submitting again", submission_id)
        return client, submission_id, False
    client.submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env=runtime_env(working_dir, extra_env),
        entrypoint_num_cpus=0,
    )
    log.info("submitted job %s: %s", submission_id, entrypoint)
    return client, submission_id, True


def wait(
    client: JobSubmissionClient,
    submission_id: str,
    timeout_s: float,
    lost_after_s: float = LOST_AFTER_S,
) -> JobStatus:
    """Poll until the job ends (or `timeout_s` passes); log its output at the end.

    Polls that keep failing for `lost_after_s` (the head is gone), or a cluster that no longer
    knows the job (a new head), raise `ClusterLost`.
    """
    deadline = time.monotonic() + timeout_s
    failing_since: float | None = None
    while True:
        try:
            status = JobStatus(client.get_job_status(submission_id))
            failing_since = None
        except (OSError, RuntimeError) as e:  # connection refused/reset; "does not exist"
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            if "does not exist" in str(e) or now - failing_since >= lost_after_s:
                raise ClusterLost(
                    f"job {submission_id} lost: Ray at {client.get_address()} "
                    f"stopped answering ({first_line(e)})"
                ) from e
            time.sleep(POLL_S)
            continue
        if status in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    log.info("job %s: %s\n%s", submission_id, status, client.get_job_logs(submission_id)[-4000:])
    return status
