"""Released weights instead of training: a diffusers `UNet2DModel` folder -> the train outputs.

The weights load strictly into `UNet` (`ddpm_core.convert`) and are written by the model folder's
one writer (and exported again as a diffusers `DDPMPipeline` with the run's scheduler), so sample
and evaluate use a released model exactly as trained EMA weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ddpm_core.config import ConfigError
from ddpm_core.convert import state_dict_from_diffusers, unet_config_from_diffusers
from pipelines.artifacts.model_dir import build_unet, model_out_channels
from pipelines.config import Params
from pipelines.infra.files import read_json
from pipelines.infra.tracking import Tracker, best_effort
from pipelines.train.export import FID_CSV, LOSS_CSV, write_fid_csv, write_loss_csv, write_models
from pipelines.train.mlflow_model import log_mlflow_model
from pipelines.train.run import resolve
from pipelines.train.selection import FidCurve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleasedResult:
    """The train stage's outputs made from released weights; `metrics()` is `train.json`."""

    metrics_file: ClassVar[str] = "train.json"

    weights: Path
    source: str  # "released: <folder>"
    checkpoint: Path
    run_id: str  # the MLflow run

    def metrics(self) -> dict[str, Any]:
        return {"steps": 0, "weights": self.source}

    def summary(self) -> str:
        return f"{self.weights}: released weights from {self.checkpoint} (MLflow run {self.run_id})"


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
        # 2C with diffusion.var_type learned (the mean part and log sigma^2), else C
        "out_channels": model_out_channels(params),
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
                f"{value!r}; use a params file for this model "
                "(e.g. conf/profile/cifar10-paper.yaml)"
            )


# Our beta_schedule -> the diffusers DDPMScheduler name of the same betas.
DIFFUSERS_SCHEDULES = {"linear": "linear", "quad": "scaled_linear"}
SCHEDULER_FILES = ("scheduler_config.json", "scheduler/scheduler_config.json")


def _scheduler_config(checkpoint: Path) -> Path:
    """The released scheduler config beside the model (hub layout) or one folder up."""
    for base in (checkpoint, checkpoint.parent):
        for name in SCHEDULER_FILES:
            if (base / name).is_file():
                return base / name
    raise FileNotFoundError(
        f"{checkpoint / SCHEDULER_FILES[0]}: not found; the released scheduler (T, betas) must be "
        "checked against params diffusion.* (google/ddpm-cifar10-32 ships scheduler_config.json)"
    )


def check_scheduler(params: Params, checkpoint: Path) -> None:
    """ConfigError naming the file and key when the released scheduler is not `diffusion.*`:
    the weights were trained for its T and betas, and sample/evaluate use params' ones."""
    path = _scheduler_config(checkpoint)
    config = read_json(path, "a diffusers scheduler config")
    cfg = params.diffusion
    want = {
        "num_train_timesteps": cfg.T,
        "beta_schedule": DIFFUSERS_SCHEDULES.get(cfg.beta_schedule, cfg.beta_schedule),
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
    }
    for key, value in want.items():
        if key not in config:
            raise ConfigError(f"{path}: missing key {key!r} (expected a DDPMScheduler config)")
        have = config[key]
        same = abs(have - value) <= 1e-12 if isinstance(value, float) else have == value
        if not same:
            raise ConfigError(
                f"{path}: the released scheduler has {key}={have!r} but params diffusion.* give "
                f"{value!r}; use a params file for this model "
                "(e.g. conf/profile/cifar10-paper.yaml)"
            )
    if config.get("trained_betas") is not None:
        raise ConfigError(f"{path}: trained_betas are set; expected betas from beta_schedule")


def check_released(params: Params, checkpoint: Path) -> dict[str, Any]:
    """The released model's `UNet` kwargs, checked against params (before any run is opened)."""
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (expected a diffusers model folder)")
    try:
        kwargs = unet_config_from_diffusers(
            read_json(config_path, "a diffusers UNet2DModel config")
        )
    except KeyError as e:
        raise ConfigError(
            f"{config_path}: missing key {e.args[0]!r} (expected a diffusers UNet2DModel config)"
        ) from None
    _check_matches(kwargs, params, config_path)
    check_scheduler(params, checkpoint)
    return kwargs


def import_released(
    params: Params, root: Path, tracker: Tracker, checkpoint: Path
) -> ReleasedResult:
    """A diffusers `UNet2DModel` folder (config.json + weights) -> the train stage's outputs.

    The weights load strictly into `UNet` (`ddpm_core.convert`), so sample and evaluate use the
    released model exactly as they use trained EMA weights; the loss history is empty.
    """
    check_released(params, checkpoint)
    model = build_unet(params)
    model.load_state_dict(state_dict_from_diffusers(_diffusers_state_dict(checkpoint)))
    source = f"released: {checkpoint.resolve()}"
    weights = write_models(params, root, model.state_dict(), {"weights": source})
    tracker.set_tags({"weights": source})
    tracker.log_artifact(weights, "model")
    best_effort(  # registered like a trained model
        "logging the MLflow Model",
        lambda: log_mlflow_model(params, tracker, weights.parent, step=0),
        None,
    )
    write_loss_csv(resolve(root, params.paths.plots) / LOSS_CSV, [])
    write_fid_csv(resolve(root, params.paths.plots) / FID_CSV, FidCurve())
    log.info("wrote %s from %s (MLflow run %s)", weights, checkpoint, tracker.run_id)
    return ReleasedResult(weights, source, checkpoint, tracker.run_id)
