"""The train stage's DVC outputs, written atomically from the final Ray Train checkpoint."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ddpm_core.config import ConfigError
from ddpm_core.convert import state_dict_from_diffusers, unet_config_from_diffusers
from ddpm_core.unet import UNet
from pipelines.config import Params, to_dict
from pipelines.infra.files import atomic_path, write_json
from pipelines.infra.tracking import open_run, write_run_file
from pipelines.train.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_training_state, save_weights
from pipelines.train.run import resolve
from pipelines.train.step import STATE_FILE
from pipelines.train.worker import TrainResult

log = logging.getLogger(__name__)

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
    metadata = {
        "step": str(int(state["step"])),
        "run_key": result.run_key,
        "mlflow_run_id": result.tracker.run_id,
        "weights": "ema",
    }
    weights = write_model_dir(params, state["ema"]["shadow"], metadata, model_dir)
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
        {f"final_{k}": float(v) for k, v in metrics.items()}, int(metrics["steps"])
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


def write_model_dir(
    params: Params, state_dict: dict[str, Any], metadata: dict[str, str], model_dir: Path
) -> Path:
    """`ema.safetensors` (+ the resolved params as metadata) and `config.json`, each atomic."""
    config = {"config": json.dumps(to_dict(params), sort_keys=True), **metadata}
    weights = save_weights(model_dir / WEIGHTS_FILE, state_dict, config)
    write_json(model_dir / CONFIG_FILE, to_dict(params))
    return weights


# ----------------------------------------------------------------------------------------------
# Released weights instead of training


def _diffusers_state_dict(checkpoint: Path) -> dict[str, Any]:
    """`diffusion_pytorch_model.safetensors` (or `.bin`) of a diffusers model folder."""
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        path = checkpoint / name
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return dict(load_file(str(path)))
            return dict(torch.load(path, map_location="cpu", weights_only=True))
    raise FileNotFoundError(
        f"{checkpoint}: no diffusion_pytorch_model.safetensors or .bin (expected a diffusers "
        "UNet2DModel folder such as a download of google/ddpm-cifar10-32)"
    )


def _check_matches(kwargs: dict[str, Any], params: Params, where: Path) -> None:
    """The released architecture must be the one params describe (sample/evaluate rebuild it)."""
    want = {
        "in_channels": params.data.channels,
        "resolution": params.data.resolution,
        "ch": params.unet.ch,
        "ch_mult": params.unet.ch_mult,
        "num_res_blocks": params.unet.num_res_blocks,
        "attn_resolutions": params.unet.attn_resolutions,
        "num_groups": 32,
    }
    for key, value in want.items():
        if kwargs[key] != value:
            raise ConfigError(
                f"{where}: the released model has {key}={kwargs[key]!r} but params give "
                f"{value!r}; use a params file for this model (e.g. profiles/cifar10-paper.yaml)"
            )


def import_diffusers(params: Params, checkpoint: Path, root: Path) -> Path:
    """A diffusers `UNet2DModel` folder (config.json + weights) -> the train stage's model folder.

    The weights load strictly into `UNet` (`ddpm_core.convert`), so sample and evaluate use the
    released model exactly as they use trained EMA weights. Returns the weights file written.
    """
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (expected a diffusers model folder)")
    kwargs = unet_config_from_diffusers(json.loads(config_path.read_text()))
    _check_matches(kwargs, params, config_path)
    model = UNet.from_config(params.unet, params.data.channels, params.data.resolution)
    model.load_state_dict(state_dict_from_diffusers(_diffusers_state_dict(checkpoint)))
    source = f"released: {checkpoint.resolve()}"
    model_dir = resolve(root, params.paths.model)
    weights = write_model_dir(params, model.state_dict(), {"weights": source}, model_dir)
    # The train stage's other outputs, so `dvc commit train` records the import as its result
    # and sample/evaluate nest their MLflow runs under this one.
    tracker = open_run(params, "train", root=root, run_name="released-weights")
    tracker.set_tags({"weights": source})
    tracker.log_artifact(weights, "model")
    write_loss_csv(resolve(root, params.paths.plots) / LOSS_CSV, [])
    metrics = {"steps": 0, "weights": source}
    write_json(resolve(root, params.paths.metrics) / METRICS_FILE, metrics)
    tracker.finish("FINISHED")
    write_run_file(params, "train", tracker, root)
    log.info("wrote %s from %s (MLflow run %s)", weights, checkpoint, tracker.run_id)
    return weights
