"""Released weights instead of training: a diffusers `UNet2DModel` folder -> the train outputs.

The weights load strictly into `UNet` (`ddpm_core.convert`) and are written by the model folder's
one writer, so sample and evaluate use a released model exactly as trained EMA weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ddpm_core.config import ConfigError
from ddpm_core.convert import state_dict_from_diffusers, unet_config_from_diffusers
from pipelines.artifacts.model_dir import build_unet, model_out_channels, write_model_dir
from pipelines.config import Params
from pipelines.infra.tracking import Tracker
from pipelines.train.export import LOSS_CSV, write_loss_csv
from pipelines.train.run import resolve

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
                f"{value!r}; use a params file for this model (e.g. profiles/cifar10-paper.yaml)"
            )


def check_released(params: Params, checkpoint: Path) -> dict[str, Any]:
    """The released model's `UNet` kwargs, checked against params (before any run is opened)."""
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (expected a diffusers model folder)")
    kwargs = unet_config_from_diffusers(json.loads(config_path.read_text()))
    _check_matches(kwargs, params, config_path)
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
    model_dir = resolve(root, params.paths.model)
    weights = write_model_dir(params, model.state_dict(), {"weights": source}, model_dir)
    tracker.set_tags({"weights": source})
    tracker.log_artifact(weights, "model")
    write_loss_csv(resolve(root, params.paths.plots) / LOSS_CSV, [])
    log.info("wrote %s from %s (MLflow run %s)", weights, checkpoint, tracker.run_id)
    return ReleasedResult(weights, source, checkpoint, tracker.run_id)
