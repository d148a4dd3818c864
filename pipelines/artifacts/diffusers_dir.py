"""The train stage's second model output: the EMA U-Net as a diffusers `DDPMPipeline` folder.

    model_index.json                          DDPMPipeline = UNet2DModel + DDPMScheduler
    unet/config.json                          the same network in diffusers' terms
    unet/diffusion_pytorch_model.safetensors  the weights (fused qkv split into to_q/to_k/to_v)
    scheduler/scheduler_config.json           the run's T and betas, variance, clipping, target

`diffusers.DDPMPipeline.from_pretrained(folder)` loads it, so a trained (or imported) model
leaves the pipeline in the form the field uses. Three models are not exported: one trained with
`diffusion.mean_type: mean` (Table 2's mu target; DDPMScheduler predicts eps or x0), one with a
learned variance (its 2C-output head is not mapped) and one narrower than 32 channels (our
GroupNorm takes min(32, width) groups per layer, diffusers one count for all); their folder
holds only a `README.md` saying why, so the output exists and the stage does not fail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ddpm_core.config import ConfigError, DiffusionConfig
from ddpm_core.convert import (
    diffusers_config_from_unet,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)
from ddpm_core.schedule import make_betas
from ddpm_core.unet import UNet
from pipelines.config import Params
from pipelines.infra.files import atomic_path

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
# The diffusers release whose file layout this writes (any later one reads it).
DIFFUSERS_VERSION = "0.30.0"
# Our parameterisations / reverse variances -> DDPMScheduler's; mean_type "mean" has none.
PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample"}
VARIANCE_TYPE = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}
README = "README.md"
NUM_GROUPS = 32  # `UNet`'s GroupNorm groups (min(32, width)); diffusers' norm_num_groups


def unet_kwargs(params: Params) -> dict[str, Any]:
    """`UNet(**kwargs)` of the model params describe (what `UNet.from_config` builds)."""
    u = params.unet
    return {
        "in_channels": params.data.channels,
        "out_channels": params.data.channels,
        "ch": u.ch,
        "ch_mult": u.ch_mult,
        "num_res_blocks": u.num_res_blocks,
        "attn_resolutions": u.attn_resolutions,
        "dropout": u.dropout,
        "resolution": params.data.resolution,
    }


def not_exportable(params: Params) -> str | None:
    """Why the model params describe has no diffusers `DDPMPipeline` equivalent, or None."""
    if params.diffusion.var_type not in VARIANCE_TYPE:
        return (
            f"diffusion.var_type is {params.diffusion.var_type!r}: only the fixed variances "
            f"{sorted(VARIANCE_TYPE)} are exported (the 2C-output U-Net is not mapped)"
        )
    if params.diffusion.mean_type not in PREDICTION_TYPE:
        return (
            f"diffusion.mean_type is {params.diffusion.mean_type!r}: diffusers' DDPMScheduler "
            f"predicts {' or '.join(PREDICTION_TYPE.values())} ({sorted(PREDICTION_TYPE)})"
        )
    if params.unet.ch < NUM_GROUPS:
        return (
            f"unet.ch is {params.unet.ch}: below {NUM_GROUPS} our GroupNorm uses one group per "
            f"channel at each width, diffusers' UNet2DModel one norm_num_groups for all layers"
        )
    return None


def scheduler_config(diffusion: DiffusionConfig) -> dict[str, Any]:
    """The `DDPMScheduler` config of the run's forward process and sampler (Algorithm 2)."""
    betas = make_betas(
        diffusion.beta_schedule, diffusion.T, diffusion.beta_start, diffusion.beta_end
    )
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": diffusion.T,
        # trained_betas is what diffusers uses; the schedule's name and ends are kept for reading.
        "beta_schedule": diffusion.beta_schedule,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "trained_betas": betas.tolist(),
        "variance_type": VARIANCE_TYPE[diffusion.var_type],
        "clip_sample": True,  # x0 clipped to [-1, 1] as in the official sampler
        "clip_sample_range": 1.0,
        "prediction_type": PREDICTION_TYPE[diffusion.mean_type],
        "thresholding": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }


def write_diffusers_dir(
    params: Params, state_dict: Mapping[str, torch.Tensor], folder: Path
) -> Path:
    """The `DDPMPipeline` folder of `state_dict` (a `UNet` of params' shape), atomically.

    A model `not_exportable` gets a folder holding only `README.md` with the reason. A state dict
    of another network raises before anything is written; an existing folder is replaced only
    once the new one is complete.
    """
    reason = not_exportable(params)
    if reason is not None:
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / README).write_text(f"No diffusers export of this model: {reason}.\n")
        logger.warning("%s: no diffusers export (%s)", folder, reason)
        return folder
    kwargs = unet_kwargs(params)
    UNet(**kwargs).load_state_dict(dict(state_dict), strict=True)  # RuntimeError names the keys
    unet = {"_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION}
    unet |= diffusers_config_from_unet({**kwargs, "num_groups": NUM_GROUPS})
    tensors = state_dict_to_diffusers(state_dict, len(params.unet.ch_mult))
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()
    }
    files = {
        MODEL_INDEX: {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        },
        UNET_CONFIG: unet,
        SCHEDULER_CONFIG: scheduler_config(params.diffusion),
    }
    with atomic_path(folder) as tmp:
        for name, obj in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        save_file(tensors, str(tmp / UNET_WEIGHTS), metadata={"format": "pt"})
    logger.info("wrote the diffusers DDPMPipeline folder %s", folder)
    return folder


def load_diffusers_dir(params: Params, folder: Path) -> UNet:
    """The U-Net of a `write_diffusers_dir` folder, checked against params.

    FileNotFoundError names a missing file; ConfigError names the file and key whose value
    differs from what params describe (architecture, T, betas, variance, prediction type).
    """
    if (folder / README).is_file() and not (folder / MODEL_INDEX).is_file():
        raise ValueError(f"{folder}: {(folder / README).read_text().strip()}")
    for name in (MODEL_INDEX, UNET_CONFIG, UNET_WEIGHTS, SCHEDULER_CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: not found (expected a diffusers DDPMPipeline folder)"
            )
    kwargs = unet_config_from_diffusers(json.loads((folder / UNET_CONFIG).read_text()))
    for key, want in unet_kwargs(params).items():
        if kwargs[key] != want:
            raise ConfigError(
                f"{folder / UNET_CONFIG}: {key}={kwargs[key]!r}, params give {want!r}"
            )
    _check_scheduler(json.loads((folder / SCHEDULER_CONFIG).read_text()), params, folder)
    model = UNet(**kwargs)
    model.load_state_dict(
        state_dict_from_diffusers(load_file(str(folder / UNET_WEIGHTS))), strict=True
    )
    return model.eval().requires_grad_(False)


def _check_scheduler(have: dict[str, Any], params: Params, folder: Path) -> None:
    want = scheduler_config(params.diffusion)
    for key in ("num_train_timesteps", "variance_type", "clip_sample", "prediction_type"):
        if have.get(key) != want[key]:
            raise ConfigError(
                f"{folder / SCHEDULER_CONFIG}: {key}={have.get(key)!r}, params give {want[key]!r}"
            )
    betas = torch.tensor(have.get("trained_betas") or [], dtype=torch.float64)
    if betas.shape != (params.diffusion.T,) or not torch.equal(
        betas, torch.tensor(want["trained_betas"], dtype=torch.float64)
    ):
        raise ConfigError(
            f"{folder / SCHEDULER_CONFIG}: trained_betas differ from the betas of params' "
            f"diffusion.{{beta_schedule,beta_start,beta_end,T}}"
        )
