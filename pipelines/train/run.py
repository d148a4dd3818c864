"""The lifecycle of a training run: its inputs, its identity, its folder and its MLflow run.

Before Ray starts, the driver makes the run's one record, a `TrainPlan` (`plan_run`): the inputs
checked (`validate_inputs`) and the run named after `run_key`, a hash of everything that
determines the weights, so rerunning the same command finds the same Ray run folder and resumes.
That plan goes to `run_lock`, to `open_train_run` (the tracking server checked, Ray connected
and the cluster's fit checked by `connect`, then the MLflow run opened or reattached), to
`train.stage.run_train` and to every Ray Train worker. The run folder (`RunFolder`) holds Ray's
checkpoints and the two notes the run keeps for its driver: the MLflow run to reattach to, and
what the latest attempt did (the step it resumed from, a non-finite loss).
`infra.lifecycle.run_tracked` ends the MLflow run FINISHED or FAILED, like every stage's run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from pipelines.artifacts.shards import MANIFEST, read_manifest
from pipelines.config import Params
from pipelines.infra.files import file_digest, shared_root, write_json
from pipelines.infra.ray import check_fits, init_ray
from pipelines.infra.tracking import Tracker, open_run, require_server, tracking_uri
from pipelines.train.checkpoint import TrainingCheckpoint, UnloadableStateError
from pipelines.train.step import NonFiniteLossError

log = logging.getLogger(__name__)

# train.* keys that cannot change the weights: editing them keeps the run key (and resumes).
RESUME_NEUTRAL = (
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "max_failures",
    "cpus_per_worker",
    "gpus_per_worker",
    # memory only: the blocks recompute the same activations in backward (the same gradients),
    # so a run that ran out of memory resumes with it switched on
    "activation_checkpointing",
    "export",  # which saved EMA weights are written; a finished run re-exports without training
)


def resolve(root: Path, path: str) -> Path:
    """`path` from params, absolute (relative ones are under the repo root)."""
    return (root / path).resolve()


def validate_inputs(params: Params, root: Path) -> dict[str, Any]:
    """Shards, manifest and GPU options, checked before Ray starts; returns the manifest."""
    shards = resolve(root, params.paths.shards)
    if not (shards / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{shards / MANIFEST}: shard manifest not found (paths.shards={params.paths.shards}); "
            "run `dvc repro shard` (or `python -m stages.shard --params params.yaml`) first"
        )
    manifest = read_manifest(shards)
    want = list(params.data.image_shape)
    if list(manifest["image_shape"]) != want:
        raise ValueError(
            f"{shards / MANIFEST}: image_shape {manifest['image_shape']} does not match "
            f"data.channels={params.data.channels}, data.resolution={params.data.resolution} "
            f"(expected {want}); rerun `dvc repro shard` after changing data.*"
        )
    n_train = int(manifest["splits"].get("train", {}).get("num_images", 0))
    if n_train < params.train.num_workers:
        raise ValueError(
            f"{shards / MANIFEST}: split 'train' has {n_train} images, fewer than "
            f"train.num_workers={params.train.num_workers}"
        )
    return manifest


def run_key(params: Params, manifest_sha1: str) -> str:
    """12 hex digits of sha1(data, diffusion, unet, train params, seed, manifest hash)."""
    train = {k: v for k, v in asdict(params.train).items() if k not in RESUME_NEUTRAL}
    key = {
        "data": asdict(params.data),
        "diffusion": asdict(params.diffusion),
        "unet": asdict(params.unet),
        "train": train,
        "seed": params.seed,
        "manifest": manifest_sha1,
    }
    blob = json.dumps(key, sort_keys=True, default=list).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# The run folder and its notes


@dataclass(frozen=True)
class RunFolder:
    """`<paths.ray_storage>/ddpm-train-<run key>/`: Ray's checkpoints and the run's own notes.

    `mlflow_run_id` is written by the driver and read when a rerun reattaches; `attempt.json` is
    written by rank 0 (where the attempt resumed from; a non-finite loss) and read by the driver
    after `fit()`.
    """

    path: Path

    SIDECAR = "mlflow_run_id"
    ATTEMPT = "attempt.json"

    def mlflow_run_id(self) -> str | None:
        sidecar = self.path / self.SIDECAR
        return sidecar.read_text().strip() if sidecar.is_file() else None

    def remember_mlflow_run(self, run_id: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / self.SIDECAR).write_text(run_id + "\n")

    def attempt(self) -> dict[str, Any]:
        """The latest attempt's note: `resumed_from`, and `nonfinite` when it stopped on one."""
        note = self.path / self.ATTEMPT
        return dict(json.loads(note.read_text())) if note.is_file() else {}

    def begin_attempt(self, resumed_from: int, unusable: list[str] | None = None) -> None:
        """Rank 0, as an attempt starts: the step it resumed from (0 when fresh), and the
        checkpoint folders skipped because they could not be loaded, by this attempt or an
        earlier one of the same stage run (a worker restart after a fallback still names them;
        the driver clears the note as the stage starts)."""
        skipped = sorted({*self.attempt().get("unusable_checkpoints", ()), *(unusable or ())})
        note: dict[str, Any] = {"resumed_from": resumed_from}
        if skipped:
            note["unusable_checkpoints"] = skipped
        write_json(self.path / self.ATTEMPT, note)

    def note_nonfinite(self, error: str, step: int, last_checkpoint: str | None) -> None:
        """Rank 0, when the loss became NaN/inf: all ranks stop, the driver raises (no retries)."""
        note = {"error": error, "step": step, "last_checkpoint": last_checkpoint}
        write_json(self.path / self.ATTEMPT, {**self.attempt(), "nonfinite": note})

    def finished_checkpoint(self, steps: int) -> tuple[Path, TrainingCheckpoint] | None:
        """A checkpoint of the final step `steps` that loads (its folder and record), or None:
        with one, the run is finished, and a rerun (another `train.export`, lost outputs)
        exports it without workers."""
        for folder in sorted(self.path.glob(f"step_{steps:08d}*"), reverse=True):
            try:
                ckpt = TrainingCheckpoint.read(folder)
            except (FileNotFoundError, UnloadableStateError):
                continue
            if ckpt.step == steps:
                return folder, ckpt
        return None

    def clear_attempt(self) -> None:
        (self.path / self.ATTEMPT).unlink(missing_ok=True)

    def raise_if_nonfinite(self) -> None:
        note = self.attempt().get("nonfinite")
        if note is not None:
            raise NonFiniteLossError(
                f"training stopped: {note['error']}; last good checkpoint: "
                f"{note['last_checkpoint'] or 'none (no checkpoint yet)'}"
            )


# ----------------------------------------------------------------------------------------------
# Planning and opening a run


@dataclass(frozen=True)
class TrainPlan:
    """Where and under which name a training run lives; every path absolute (Ray Train workers
    `chdir` into Ray's per-run folder). The one record of the run's location: the driver makes
    it (`plan_run`) and passes it as it is to the run lock, the MLflow run, `train.stage` and
    every worker (in `train_loop_config`: Ray pickles the frozen record)."""

    key: str  # run_key(params, manifest hash)
    name: str  # ddpm-train-<key>: the Ray run's name and folder
    storage: Path  # paths.ray_storage
    shards: Path  # paths.shards
    manifest_sha1: str

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.storage / self.name)


def plan_run(params: Params, root: Path) -> TrainPlan:
    """The run's one plan, made once by the CLI and passed to `run_lock`, `open_train_run` and
    `train.stage.run_train`: the inputs checked (once), the manifest hashed (once), the run named.

    Every failure here comes before a Ray worker starts or an MLflow run is opened.
    """
    validate_inputs(params, root)
    return name_run(params, root)


def connect(params: Params) -> None:
    """Connect to Ray and check the cluster fits `train.num_workers` workers."""
    init_ray(params.ray)
    cfg = params.train
    check_fits(cfg.num_workers, cfg.cpus_per_worker, cfg.gpus_per_worker * cfg.use_gpu, "train")


def name_run(params: Params, root: Path) -> TrainPlan:
    """The run's key, name and folders, from the params and the shard manifest (no Ray)."""
    shards = resolve(root, params.paths.shards)
    manifest_sha1 = file_digest(shards / MANIFEST, "sha1")
    key = run_key(params, manifest_sha1)
    storage = resolve(shared_root(root), params.paths.ray_storage)  # shared by DVC experiments
    return TrainPlan(key, f"ddpm-train-{key}", storage, shards, manifest_sha1)


class RunLockedError(RuntimeError):
    """Another live process trains the same run key (same checkpoints, same MLflow run)."""


@contextlib.contextmanager
def run_lock(plan: TrainPlan) -> Iterator[Path]:
    """Hold `<paths.ray_storage>/ddpm-train-<key>.lock` for the whole training run, or refuse.

    Two processes training the same run key would interleave checkpoints in one folder and log
    into one MLflow run; the second is refused with the holder's pid. The lock is an `flock`:
    the kernel drops it when its holder dies (a kill leaves no stale lock). On a shared file
    system it holds only where the file system supports `flock` (local, NFSv4).
    """
    plan.storage.mkdir(parents=True, exist_ok=True)
    path = plan.storage / f"{plan.name}.lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunLockedError(
                f"{path}: run {plan.name} is being trained by another process ({holder}); "
                "wait for it to finish (a rerun then resumes from its checkpoints)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_train_run(params: Params, root: Path, plan: TrainPlan) -> Tracker:
    """The MLflow run of this training run: reattach to the folder's run id, else create one.

    The tracking server is checked first, then Ray is connected and the cluster checked
    (`connect`), before a run is opened.
    """
    require_server(tracking_uri(params.mlflow, root))
    connect(params)
    folder = plan.folder
    tracker = None
    run_id = folder.mlflow_run_id()
    if run_id is not None:
        try:
            tracker = open_run(params, "train", root, resume_run_id=run_id)
            log.info("reattached to MLflow run %s", run_id)
        except MlflowException as e:
            log.warning("MLflow run %s of %s not usable (%s); new run", run_id, folder.path, e)
    if tracker is None:
        tracker = open_run(params, "train", root, run_name=plan.name)
        folder.remember_mlflow_run(tracker.run_id)
        log_shards_input(params, plan, tracker)
    tracker.set_tags({"data.manifest_sha1": plan.manifest_sha1, "ray.run_name": plan.name})
    return tracker


def log_shards_input(params: Params, plan: TrainPlan, tracker: Tracker) -> None:
    """The shard manifest as the run's training dataset (name, manifest digest, split sizes)."""
    manifest = read_manifest(plan.shards)
    splits = {f"{k}_images": int(v["num_images"]) for k, v in manifest["splits"].items()}
    skipped = manifest.get("skipped_images", [])  # data.bad_images: skip
    profile = {
        **splits,
        "image_shape": list(manifest["image_shape"]),
        "skipped_images": len(skipped),
    }
    name = f"{params.data.source}-{params.data.resolution}px"
    tracker.log_dataset(name, plan.manifest_sha1[:12], plan.shards / MANIFEST, profile, "training")
    if skipped:  # every skipped image by name, with its error: the manifest lists them
        tracker.log_artifact(plan.shards / MANIFEST, "data")
