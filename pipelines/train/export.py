"""The train stage's outputs besides its metrics: the model folder and the loss history.

`export_model` writes them from the final Ray Train checkpoint (`train.released` writes the same
outputs from released weights instead of training); `write_models` writes the model in both
forms: the model folder and its diffusers `DDPMPipeline` export.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts.diffusers_dir import write_diffusers_dir
from pipelines.artifacts.model_dir import CONFIG_FILE, write_model_dir
from pipelines.config import Params
from pipelines.infra.files import atomic_path
from pipelines.infra.tracking import Tracker
from pipelines.train.checkpoint import load_training_state
from pipelines.train.run import resolve
from pipelines.train.step import STATE_FILE

log = logging.getLogger(__name__)

LOSS_CSV = "train_loss.csv"


@dataclass(frozen=True)
class ExportedModel:
    """What `export_model` read from the final checkpoint and wrote."""

    steps: int
    weights: Path
    history: list[tuple[int, float]]  # (step, mean loss of the logging window)


def export_model(
    params: Params, root: Path, checkpoint: Path, metadata: dict[str, str], tracker: Tracker
) -> ExportedModel:
    """EMA weights + resolved config into `paths.model` (and `paths.diffusers`), loss history CSV.

    The weights and the config are logged to `tracker` (artifact path `model`).
    """
    state = load_training_state(checkpoint / STATE_FILE)
    steps = int(state["step"])
    meta = {"step": str(steps), **metadata, "weights": "ema"}
    weights = write_models(params, root, state["ema"]["shadow"], meta)
    history = [(int(s), float(v)) for s, v in state["history"].tolist()]
    write_loss_csv(resolve(root, params.paths.plots) / LOSS_CSV, history)
    tracker.log_artifact(weights, "model")
    tracker.log_artifact(weights.parent / CONFIG_FILE, "model")
    log.info("wrote %s (EMA at step %d)", weights, steps)
    return ExportedModel(steps, weights, history)


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
