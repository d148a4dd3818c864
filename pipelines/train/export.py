"""The train stage's outputs besides its metrics: the model folder and the loss history.

`export_model` writes them from the `TrainingCheckpoint` of the final Ray Train checkpoint
(`train.released` writes the same outputs from released weights instead of training);
`write_models` writes the model in both forms: the model folder and its diffusers
`DDPMPipeline` export.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts.diffusers_dir import write_diffusers_dir
from pipelines.artifacts.model_dir import CONFIG_FILE, STEP_KEY, write_model_dir
from pipelines.config import Params
from pipelines.infra.files import atomic_path
from pipelines.infra.tracking import Tracker
from pipelines.train.checkpoint import STATE_FILE, TrainingCheckpoint
from pipelines.train.run import resolve
from pipelines.train.selection import ExportChoice, FidCurve, choose_export

log = logging.getLogger(__name__)

LOSS_CSV = "train_loss.csv"
FID_CSV = "train_fid.csv"  # the in-training FID curve (header only with train.fid_every: 0)


@dataclass(frozen=True)
class ExportedModel:
    """What `export_model` read from the final checkpoint and wrote."""

    steps: int
    weights: Path
    history: list[tuple[int, float]]  # (step, mean loss of the logging window)
    fid_curve: FidCurve  # (step, in-training FID) points, empty when train.fid_every is 0
    choice: ExportChoice  # which step's EMA weights were written, and why


def export_model(
    params: Params,
    root: Path,
    checkpoint: Path,
    metadata: dict[str, str],
    tracker: Tracker,
    read: TrainingCheckpoint | None = None,
) -> ExportedModel:
    """EMA weights + resolved config into `paths.model` (and `paths.diffusers`), loss and FID CSVs.

    `train.export` picks the weights: the final EMA, or (best_fid) the EMA of the min-FID step,
    kept in the checkpoint. The weights and the config are logged to `tracker` (artifact path
    `model`). `read`: the checkpoint folder's record when the caller has already read it.
    """
    ckpt = TrainingCheckpoint.read(checkpoint) if read is None else read
    curve = ckpt.fid_curve
    choice = choose_export(params.train.export, curve, ckpt.step)
    ema = ckpt.ema_weights(choice.best)
    if not ema:  # a resume that lost the min-FID copy would otherwise export an empty model
        raise ValueError(
            f"{checkpoint / STATE_FILE}: train.export={params.train.export} picks the EMA at step "
            f"{choice.step}, but the checkpoint holds no copy of it (`best_ema` is empty)"
        )
    meta = {STEP_KEY: str(choice.step), **metadata, "weights": "ema", "export": choice.reason}
    weights = write_models(params, root, ema, meta)
    history = list(ckpt.history)
    plots = resolve(root, params.paths.plots)
    write_loss_csv(plots / LOSS_CSV, history)
    write_fid_csv(plots / FID_CSV, curve)
    tracker.log_artifact(weights, "model")
    tracker.log_artifact(weights.parent / CONFIG_FILE, "model")
    log.info("wrote %s (%s)", weights, choice.reason)
    return ExportedModel(ckpt.step, weights, history, curve, choice)


def write_models(
    params: Params, root: Path, state_dict: dict[str, Any], metadata: dict[str, str]
) -> Path:
    """The model folder (`paths.model`) and its diffusers export (`paths.diffusers`).

    The export is written first: a state dict diffusers cannot take leaves both folders as they
    were. Returns the weights file of the model folder.
    """
    write_diffusers_dir(params, state_dict, resolve(root, params.paths.diffusers))
    return write_model_dir(params, state_dict, metadata, resolve(root, params.paths.model))


def write_loss_csv(path: Path, history: list[tuple[int, float]]) -> None:
    """`step,loss` rows (mean loss over each logging window) for `dvc plots`."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((s, f"{v:.6g}") for s, v in history)


def write_fid_csv(path: Path, curve: FidCurve) -> None:
    """`step,fid` rows of the in-training FID for `dvc plots` (header only when off)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "fid"])
        writer.writerows((s, f"{v:.6g}") for s, v in curve.points)
