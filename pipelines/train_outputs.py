"""The train stage's DVC outputs, written atomically from the final Ray Train checkpoint."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from ddpm_core.checkpoint import load_training_state, save_weights
from ddpm_core.config import Params, to_dict
from pipelines.tracking import write_run_file
from pipelines.train_inputs import resolve
from pipelines.train_ray import TrainResult
from pipelines.train_step import STATE_FILE
from stages.common import atomic_path, write_json

log = logging.getLogger(__name__)

WEIGHTS_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "train.json"
LOSS_CSV = "train_loss.csv"


def export_outputs(params: Params, result: TrainResult, root: Path) -> dict[str, Any]:
    """EMA weights + resolved config into `paths.model`, metrics and the loss history CSV.

    Ends the MLflow run FINISHED (after logging the weights; FAILED if writing fails) and
    writes `runs/train.json`. Returns the metrics dict written to `<paths.metrics>/train.json`.
    """
    try:
        metrics = _write(params, result, root)
    except BaseException:
        result.tracker.finish("FAILED")
        raise
    result.tracker.finish("FINISHED")
    write_run_file(params, "train", result.tracker, root)
    return metrics


def _write(params: Params, result: TrainResult, root: Path) -> dict[str, Any]:
    state = load_training_state(result.checkpoint / STATE_FILE)
    model_dir = resolve(root, params.paths.model)
    config_json = json.dumps(to_dict(params), sort_keys=True)
    metadata = {
        "config": config_json,
        "step": str(int(state["step"])),
        "run_key": result.run_key,
        "mlflow_run_id": result.tracker.run_id,
        "weights": "ema",
    }
    weights = model_dir / WEIGHTS_FILE
    save_weights(weights, state["ema"]["shadow"], metadata)  # atomic (temp file + rename)
    write_json(model_dir / CONFIG_FILE, to_dict(params))
    history = [(int(s), float(v)) for s, v in state["history"].tolist()]
    write_loss_csv(resolve(root, params.paths.plots) / LOSS_CSV, history)
    metrics = {
        "steps": int(state["step"]),
        "final_loss": float(result.metrics.get("loss", history[-1][1] if history else "nan")),
        "images_per_s": float(result.metrics.get("images_per_s", 0.0)),
        "wall_time_s": round(result.wall_time_s, 3),
        "resumed_from": int(result.metrics.get("resumed_from", 0)),
    }
    write_json(resolve(root, params.paths.metrics) / METRICS_FILE, metrics)
    result.tracker.log_metrics(
        {f"final_{k}": float(v) for k, v in metrics.items()}, metrics["steps"]
    )
    result.tracker.log_artifact(weights, "model")
    result.tracker.log_artifact(model_dir / CONFIG_FILE, "model")
    log.info("wrote %s (EMA at step %d) and %s", weights, metrics["steps"], METRICS_FILE)
    return metrics


def write_loss_csv(path: Path, history: list[tuple[int, float]]) -> None:
    """`step,loss` rows (mean loss over each logging window) for `dvc plots`."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((s, f"{v:.6g}") for s, v in history)
