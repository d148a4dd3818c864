"""MLflow tracking for the pipeline: the client side of one run, and its HTTP retry policy.

Runs are created in the driver (never in Ray workers, which would make one run per retry).
`Tracker` is a picklable handle (tracking URI + run id) that rank 0 of a Ray Train run or a Ray
actor can use to log metrics to the driver's run; its calls go through an outbox
(`infra.outbox`) and fail fast (`fast_http`). The DVC hand-off files are `infra.run_files`, the
stage lifecycle (open, run, end, replay what an earlier run left unsent) `infra.lifecycle`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
)
from PIL import Image

from pipelines.config import MlflowConfig, Params, flatten, to_dict
from pipelines.infra.files import shared_root
from pipelines.infra.outbox import Op, Outbox, PermanentError, first_line

log = logging.getLogger(__name__)

MAX_PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
# MLflow 3's UI opens an experiment by its kind (mlflow/server/js: `mlflow.experimentKind`);
# without it a new experiment opens on the GenAI overview (traces, tokens), not the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The commit of the code a Ray job runs: its working dir is uploaded without `.git`.
GIT_COMMIT_ENV = "DDPM_GIT_COMMIT"
# The headline metrics also logged on the parent train run, so train runs sort by FID.
HEADLINE_METRICS = ("fid", "nll_bpd", "nll_bpd_sem")
OUTBOX = "mlflow_outbox"  # <paths.ray_storage>/mlflow_outbox/<run id>/: a run's unsent calls


def tracking_uri(cfg: MlflowConfig, root: Path) -> str:
    """params `mlflow.tracking_uri` > `MLFLOW_TRACKING_URI` > `sqlite:///<root>/mlflow.db`.

    Relative sqlite paths are made absolute against the shared root (`shared_root`: the main
    workspace, also for `dvc exp run --temp/--queue`): Ray workers `chdir` into per-run folders,
    and DVC's temporary workspaces are deleted, where a relative URI would silently create a
    second database.
    """
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return absolute_uri(uri, root)


SQLITE = "sqlite:///"


def absolute_uri(uri: str, root: Path) -> str:
    """A relative sqlite URI made absolute against `shared_root(root)`; others as they are."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + str((shared_root(root) / uri[len(SQLITE) :]).resolve())
    return uri


def portable_uri(uri: str, root: Path) -> str:
    """`uri` as a committed file may hold it: a sqlite store inside `shared_root(root)` relative
    to it (`sqlite:///mlflow.db`), so two machines write the same file; others as they are."""
    if uri.startswith(SQLITE + "/"):
        path, base = Path(uri[len(SQLITE) :]).resolve(), shared_root(root).resolve()
        if path.is_relative_to(base):
            return SQLITE + str(path.relative_to(base))
    return uri


def redact_uri(uri: str, mask: str = "***") -> str:
    """`uri` with its user:password (or token) part replaced by `mask` (removed when empty).

    `https://user:token@host/x` -> `https://***@host/x`: what may be written to files, logged,
    set as MLflow params or sent in a Ray job's runtime env. URIs without credentials pass as is.
    """
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{mask}@{host}" if mask else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def outbox_dir(params: Params, root: Path, run_id: str) -> str:
    """Where the run's unsent tracking calls are kept: under `paths.ray_storage`, the storage
    every Ray node sees, and found again by the next process that logs to the same run."""
    return str((shared_root(root) / params.paths.ray_storage / OUTBOX / run_id).resolve())


def _artifact_location(uri: str, root: Path) -> str | None:
    """Local stores keep artifacts in `<root>/mlartifacts`; a server decides for itself."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (shared_root(root) / "mlartifacts").resolve().as_uri()


def experiment_id(client: MlflowClient, name: str, uri: str, root: Path) -> str:
    """Get or create the experiment `name` (tolerating a concurrent creation).

    It is marked a model-training experiment (`mlflow.experimentKind`) unless it has a kind.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        try:
            location = _artifact_location(uri, root)
            return str(client.create_experiment(name, artifact_location=location, tags=kind))
        except Exception:  # another process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def git_commit(root: Path) -> str:
    """HEAD's commit, with `-dirty` when the tree has changes; `unknown` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def source_commit(root: Path) -> str:
    """`git_commit(root)`, else `$DDPM_GIT_COMMIT` (set for Ray jobs), else `unknown`."""
    commit = git_commit(root)
    if commit == "unknown":
        commit = os.environ.get(GIT_COMMIT_ENV) or commit
    return commit


def run_tags(params: Params, stage: str, root: Path) -> dict[str, str]:
    """MLflow's standard tags (user, source, git commit) as `mlflow.start_run` sets them, and
    lineage: DVC stage and experiment, profile."""
    commit = source_commit(root)
    tags = {
        **resolve_tags(),  # mlflow.user, mlflow.source.name, mlflow.source.type
        "git.commit": commit,
        "dvc.stage": stage,
        "profile": params.profile,
        "data.source": params.data.source,
    }
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit.removesuffix("-dirty")
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DDPM_TRIGGER"):
        tags["trigger"] = os.environ["DDPM_TRIGGER"]
    return tags


# In-loop calls fail fast and the outbox retries: MLflow's HTTP client would otherwise retry a
# refused connection 7 times with exponential backoff (minutes) and wait 120 s for each answer.
FAST_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# Clients' answers that retrying cannot change (not 408 timeout, not 429 rate limit).
PERMANENT_HTTP = set(range(400, 500)) - {408, 429}


@contextlib.contextmanager
def fast_http() -> Iterator[None]:
    """MLflow's HTTP client with `FAST_HTTP` (read from the environment at each request)."""
    saved = {k: os.environ.get(k) for k in FAST_HTTP}
    os.environ.update(FAST_HTTP)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


T = TypeVar("T")


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the tracking server is down (connection refused, timeouts, 5xx)
    rather than that it refused the request (4xx other than 408/429)."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() not in PERMANENT_HTTP  # type: ignore[no-untyped-call]
    return isinstance(error, ConnectionError | TimeoutError | requests.RequestException)


def best_effort(what: str, call: Callable[[], T], fallback: T) -> T:
    """`call()` against the tracking server; `fallback` and a warning when it is unreachable.

    For the unbuffered calls after a stage's computation (logging the MLflow Model, the
    registry and its promotion gate): an outage must not lose the work before them, and
    rerunning the stage repeats them (each is idempotent).
    """
    try:
        with fast_http():
            return call()
    except Exception as e:
        if not unreachable(e):
            raise
        log.warning(
            "MLflow server unreachable: %s skipped (rerun the stage to do it): %s",
            what, first_line(e),
        )  # fmt: skip
        return fallback


@dataclass
class Tracker:
    """A picklable handle on one MLflow run: safe to send to Ray workers and actors.

    Metrics, artifacts and the run's end go through an `Outbox`: while the server is down they
    are buffered (on disk under `outbox_dir` when set) and sent when it is back, so a tracking
    outage never fails the computation. `pending()` says how many are still unsent.
    """

    uri: str = field(repr=False)  # may hold credentials: never in a repr
    run_id: str
    outbox_dir: str | None = None  # where unsent calls are kept (shared by driver and rank 0)
    _client: MlflowClient | None = field(default=None, repr=False, compare=False)
    _outbox: Outbox | None = field(default=None, repr=False, compare=False)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            folder = Path(self.outbox_dir) if self.outbox_dir else None
            self._outbox = Outbox(self._send, folder, f"MLflow server {redact_uri(self.uri)}")
        return self._outbox

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_outbox": None}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log `metrics` at `step`; the timestamp is fixed now, so a re-send is stored once."""
        now = int(time.time() * 1000)
        batch = [[k, float(v), now, step] for k, v in metrics.items()]
        self.outbox.submit({"op": "metrics", "run_id": self.run_id, "metrics": batch})

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        op = {"op": "artifact", "run_id": self.run_id, "file": str(path), "dir": artifact_path}
        self.outbox.submit(op)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """An image (PIL or (H, W, C) uint8 array) under `key` at `step` (the UI's image panel),
        through the outbox as a PNG file like any artifact."""
        png = Path(tempfile.mkdtemp(prefix="ddpm-image-")) / f"{key}-{step}.png"
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        pil.save(png)
        now = int(time.time() * 1000)
        op = {"op": "image", "run_id": self.run_id, "file": str(png), "key": key, "step": step}
        self.outbox.submit(op | {"timestamp": now})
        if self.outbox_dir is not None:  # sent, or copied into the outbox folder: ours can go
            shutil.rmtree(png.parent, ignore_errors=True)

    def finish(self, status: str = "FINISHED") -> None:
        self.outbox.submit({"op": "end", "run_id": self.run_id, "status": status})

    def pending(self, wait_s: float = 0.0) -> int:
        """Calls still unsent after retrying for up to `wait_s` seconds (0: all sent)."""
        self.outbox.flush(wait_s)
        return len(self.outbox)

    def _send(self, op: Op) -> None:
        """One MLflow call for an outbox `op`; `PermanentError` when the server refuses it."""
        run_id = op["run_id"]
        try:
            with fast_http():
                if op["op"] == "metrics":
                    batch = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
                    self.client.log_batch(run_id, metrics=batch)  # one transaction on the server
                elif op["op"] == "artifact":
                    if not Path(op["file"]).is_file():  # sent and cleaned up by another process
                        raise PermanentError(f"{op['file']}: no longer exists")
                    self.client.log_artifact(run_id, op["file"], op["dir"])
                elif op["op"] == "image":
                    with Image.open(op["file"]) as im:
                        self.client.log_image(
                            run_id, im.copy(), key=op["key"], step=op["step"],
                            timestamp=op["timestamp"],
                        )  # fmt: skip
                elif op["op"] == "tags":
                    tags = [RunTag(k, v) for k, v in op["tags"].items()]
                    self.client.log_batch(run_id, tags=tags)
                elif op["op"] == "end":
                    self.client.set_terminated(run_id, op["status"])
                else:
                    raise PermanentError(f"unknown tracking call {op['op']!r}")
        except MlflowException as e:
            if e.get_http_status_code() in PERMANENT_HTTP:  # type: ignore[no-untyped-call]
                raise PermanentError(str(e)) from e
            raise

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not yet on the run (a resumed run keeps its original values)."""
        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        for i in range(0, len(new), MAX_PARAM_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MAX_PARAM_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set `tags` on the run, through the outbox like metrics (idempotent when re-sent)."""
        op = {"op": "tags", "run_id": self.run_id, "tags": {k: str(v) for k, v in tags.items()}}
        self.outbox.submit(op)

    def log_dataset(
        self, name: str, digest: str, source: Path, profile: Mapping[str, Any], context: str
    ) -> None:
        """Record a dataset as the run's input (`mlflow.log_input`: the runs table's Dataset)."""
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source.resolve().as_uri()}),
            profile=json.dumps(dict(profile), sort_keys=True),
        )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])

    def parent(self) -> Tracker | None:
        """The run this one is a child of (the train run of sample/evaluate), if any."""
        parent = self.client.get_run(self.run_id).data.tags.get(MLFLOW_PARENT_RUN_ID)
        return Tracker(self.uri, parent) if parent else None


SERVER_CONNECT_TIMEOUT_S = 10.0


def require_server(uri: str) -> None:
    """A stage starts only with its tracking server up: a `ConnectionError` naming the URI at
    once when an http(s) server does not accept a connection (the HTTP client would retry for
    minutes and end in a traceback). Outages after the start are the outbox's job."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.hostname is None:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=SERVER_CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConnectionError(
            f"MLflow tracking server {redact_uri(uri)} unreachable ({e.strerror or e}): start it, "
            "or point mlflow.tracking_uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


def open_run(
    params: Params,
    stage: str,
    root: Path,
    *,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    run_name: str | None = None,
) -> Tracker:
    """Create a run (or reattach to `resume_run_id`), tag it and log all resolved params."""
    uri = tracking_uri(params.mlflow, root)
    require_server(uri)
    client = MlflowClient(uri)
    if resume_run_id is not None:
        client.update_run(resume_run_id, status="RUNNING")
        tracker = Tracker(uri, resume_run_id, outbox_dir(params, root, resume_run_id))
    else:
        exp = experiment_id(client, params.mlflow.experiment, uri, root)
        tags = run_tags(params, stage, root)
        if parent_run_id is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
            tags["upstream.train"] = parent_run_id
        run = client.create_run(exp, tags=tags, run_name=run_name or stage)
        tracker = Tracker(uri, run.info.run_id, outbox_dir(params, root, run.info.run_id))
    logged = flatten(to_dict(params))
    if logged["mlflow.tracking_uri"]:
        logged["mlflow.tracking_uri"] = redact_uri(logged["mlflow.tracking_uri"])
    tracker.log_params(logged)
    return tracker


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among `metrics` (bools as 0/1), for `Tracker.log_metrics`; strings left out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
