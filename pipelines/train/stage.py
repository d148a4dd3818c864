"""The train stage: Algorithm 1 on Ray Train (V2), from the shards to the EMA model folder.

`run_train` takes the run's plan (`train.run.plan_run`: inputs, run key, folders) and either
exports a finished run's final checkpoint without workers (`finished_attempt`) or starts
`TorchTrainer.fit()` on `train.num_workers` workers (`fit`, `train.worker`) under the run's name,
so a rerun of the same command resumes from the latest checkpoint in `paths.ray_storage`. Then it
writes the model folder and the loss history from that checkpoint (`train.export`), logs the
final metrics (`log_final`) and the MLflow Model (`with_mlflow_model`, `train.mlflow_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from pipelines.config import Params
from pipelines.infra.monitor import system_metrics
from pipelines.infra.sampler_params import check_samplers
from pipelines.infra.tracking import Tracker, best_effort, numeric
from pipelines.train.checkpoint import TrainingCheckpoint
from pipelines.train.export import ExportedModel, export_model
from pipelines.train.fid_probe import FidProbe, probe_for
from pipelines.train.mlflow_model import log_mlflow_model
from pipelines.train.run import TrainPlan
from pipelines.train.worker import train_loop_per_worker

log = logging.getLogger(__name__)

CONTROLLER_FAILURE_LIMIT = 2  # Ray's default (-1) retries an unschedulable group forever
LoopFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    """What the train stage made; `metrics()` is `metrics/train.json`."""

    metrics_file: ClassVar[str] = "train.json"

    steps: int
    final_loss: float
    images_per_s: float  # of the latest attempt
    wall_time_s: float
    resumed_from: int  # the step the latest attempt started from
    run_key: str
    run_name: str
    run_dir: Path  # Ray's run folder: checkpoints and the run's notes
    model_dir: Path
    run_id: str  # the MLflow run
    exported_step: int  # the step whose EMA weights are in `model_dir`
    export_reason: str  # why that step (train.export)
    best_fid_small: float | None  # the lowest in-training FID; None when train.fid_every is 0
    fid_label: str  # what the in-training FID is comparable with
    model_uri: str  # the MLflow Model (models:/<model id>), a pyfunc that samples
    model_version: str | None  # its version of mlflow.model_name (None: not registered)

    unusable_checkpoints: tuple[str, ...] = ()  # skipped on resume: they could not be loaded

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "steps": self.steps,
            "final_loss": self.final_loss,
            "images_per_s": self.images_per_s,
            "wall_time_s": round(self.wall_time_s, 3),
            "resumed_from": self.resumed_from,
            "exported_step": self.exported_step,
            "export_reason": self.export_reason,  # texts go to runs/train.json details
            "fid_train_small_label": self.fid_label,
        }
        if self.best_fid_small is not None:
            out["best_fid_train_small"] = self.best_fid_small
        if self.unusable_checkpoints:  # a text: goes to details in runs/train.json
            out["unusable_checkpoints"] = ", ".join(self.unusable_checkpoints)
        return out

    def summary(self) -> str:
        return (
            f"{self.model_dir}: EMA weights at step {self.steps}, final loss "
            f"{self.final_loss:.4f}, {self.images_per_s:.0f} img/s (Ray run {self.run_name}, "
            f"MLflow run {self.run_id}, resumed from step {self.resumed_from}); exported: "
            f"{self.export_reason}; MLflow Model {self.model_uri}"
            + (f", version {self.model_version}" if self.model_version else "")
        )


def trainer_for(
    params: Params,
    config: dict[str, Any],
    plan: TrainPlan,
    loop_fn: LoopFn,
    callbacks: Sequence[ray.train.UserCallback],
) -> TorchTrainer:
    cfg = params.train
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    return TorchTrainer(
        loop_fn,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=plan.name,
            storage_path=str(plan.storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT
            ),
            callbacks=list(callbacks),
        ),
    )


@dataclass(frozen=True)
class Attempt:
    """The checkpoint this stage run exports, and what the attempt that wrote it reported."""

    checkpoint: Path  # the final Ray Train checkpoint folder
    record: TrainingCheckpoint | None  # its record when already read (a finished run's)
    reported: dict[str, Any]  # the last report's metrics with the run folder's attempt note


def finished_attempt(params: Params, plan: TrainPlan) -> Attempt | None:
    """The run's checkpoint of step `train.steps` when it has one: the run is finished, and it
    is exported without starting workers (another `train.export`, lost outputs)."""
    finished = plan.folder.finished_checkpoint(params.train.steps)
    if finished is None:
        return None
    checkpoint, record = finished
    log.info("%s: the run is finished; exported without starting workers", checkpoint)
    return Attempt(checkpoint, record, {"resumed_from": params.train.steps})


def fit(
    params: Params,
    plan: TrainPlan,
    tracker: Tracker,
    probe: FidProbe | None,
    loop_fn: LoopFn,
    callbacks: Sequence[ray.train.UserCallback],
) -> Attempt:
    """`TorchTrainer.fit()` on the workers (resuming the run's latest checkpoint), with system
    metrics; a non-finite loss or a run without a checkpoint raises."""
    config = {"params": params, "run": plan, "tracker": tracker, "fid": probe}  # Ray pickles them
    with system_metrics(tracker, params.mlflow.system_metrics):
        fitted = trainer_for(params, config, plan, loop_fn, callbacks).fit()
    folder = plan.folder
    folder.raise_if_nonfinite()
    if fitted.checkpoint is None:
        raise RuntimeError(f"{folder.path}: training reported no checkpoint")
    reported = {**(fitted.metrics or {}), **folder.attempt()}  # the note is this attempt's
    return Attempt(Path(fitted.checkpoint.path), None, reported)


def train_result(
    plan: TrainPlan,
    tracker: Tracker,
    probe: FidProbe | None,
    model: ExportedModel,
    attempt: Attempt,
    wall_s: float,
) -> TrainResult:
    """The stage's result from the exported model and the attempt's report (no MLflow Model
    yet: `with_mlflow_model` adds it)."""
    reported = attempt.reported
    last_loss = model.history[-1][1] if model.history else float("nan")
    return TrainResult(
        steps=model.steps,
        final_loss=float(reported.get("loss", last_loss)),
        images_per_s=float(reported.get("images_per_s", 0.0)),
        wall_time_s=wall_s,
        resumed_from=int(reported.get("resumed_from", 0)),
        run_key=plan.key,
        run_name=plan.name,
        run_dir=plan.folder.path,
        model_dir=model.weights.parent,
        run_id=tracker.run_id,
        exported_step=model.choice.step,
        export_reason=model.choice.reason,
        best_fid_small=best[1] if (best := model.fid_curve.best) else None,
        fid_label=probe.label if probe else "off (train.fid_every: 0)",
        model_uri="",
        model_version=None,
        unusable_checkpoints=tuple(reported.get("unusable_checkpoints", ())),
    )


def log_final(tracker: Tracker, result: TrainResult) -> None:
    """The final metrics and the export's tags on the MLflow run; a warning naming the
    checkpoints skipped on resume."""
    if result.unusable_checkpoints:
        log.warning(
            "%s: checkpoints %s could not be loaded; resumed from step %d instead",
            result.run_dir, ", ".join(result.unusable_checkpoints), result.resumed_from,
        )  # fmt: skip
    final = {f"final_{k}": v for k, v in numeric(result.metrics()).items()}
    tracker.log_metrics(final, result.steps)
    tracker.set_tags({"fid_train_small.label": result.fid_label, "export": result.export_reason})


def with_mlflow_model(params: Params, tracker: Tracker, result: TrainResult) -> TrainResult:
    """`result` with the MLflow Model of its model folder (`train.mlflow_model`), or saying it
    was not logged when the server is unreachable. Called after `log_final`: MLflow links the
    run's metrics at the model's step to the model."""
    logged = best_effort(
        "logging the MLflow Model",
        lambda: log_mlflow_model(params, tracker, result.model_dir, result.steps),
        None,
    )
    if logged is None:
        return dataclasses.replace(result, model_uri="not logged (MLflow server unreachable)")
    return dataclasses.replace(result, model_uri=logged.model_uri, model_version=logged.version)


def run_train(
    params: Params,
    root: Path,
    tracker: Tracker,
    *,
    plan: TrainPlan,
    loop_fn: LoopFn = train_loop_per_worker,
    callbacks: Sequence[ray.train.UserCallback] = (),
) -> TrainResult:
    """`fit()` (resuming a run of the same key) logging to `tracker`, or a finished run's final
    checkpoint; then the outputs and the MLflow Model (registered under `mlflow.model_name`).

    `plan` is the CLI's (`train.run.plan_run`), `tracker` the run's MLflow run
    (`train.run.open_train_run`). `loop_fn` and `callbacks` exist for tests (fault injection).
    """
    check_samplers(params)  # the MLflow Model's sampling defaults: fail now, not after fit()
    probe = probe_for(params, root)  # train.fid_every: Inception weights + reference statistics
    log.info("Ray run %s (storage %s), MLflow run %s", plan.name, plan.storage, tracker.run_id)
    plan.folder.clear_attempt()
    start = time.perf_counter()
    attempt = finished_attempt(params, plan)
    if attempt is None:
        attempt = fit(params, plan, tracker, probe, loop_fn, callbacks)
    wall_s = time.perf_counter() - start
    # No MLflow run id: it would make identical trainings write different `models/` hashes.
    meta = {"run_key": plan.key}
    model = export_model(params, root, attempt.checkpoint, meta, tracker, attempt.record)
    result = train_result(plan, tracker, probe, model, attempt, wall_s)
    log_final(tracker, result)
    return with_mlflow_model(params, tracker, result)
