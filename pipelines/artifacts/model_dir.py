"""The train stage's output: a model folder of EMA weights and the params they were made with.

`ema.safetensors` holds the U-Net's state dict (with the resolved params and provenance as
str metadata: never a run id or a time, so identical trainings give byte-identical files and DVC
reruns nothing downstream), `config.json` the resolved params. `write_model_dir` is its only
writer (a trained run and released weights alike) and `load_ema_model` its verified reader:
the U-Net is rebuilt from the training config, which must agree with the params it runs with.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ddpm_core.config import ConfigError, UNetConfig
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.unet import UNet
from pipelines.config import Params, from_dict, to_dict
from pipelines.infra.files import atomic_path, read_json, recover, write_json

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STEP_KEY = "step"  # weights metadata: the training step of the EMA weights (trained runs only)
# Keys the trained weights depend on; a fixed var_type is a sampling choice (sigma^2 = beta or
# beta~), a learned one is part of the network (2C output channels): checked apart.
TRAINED_DIFFUSION_KEYS = ("T", "beta_schedule", "beta_start", "beta_end", "mean_type")


def model_out_channels(params: Params) -> int:
    """The network's output channels: 2C (mean part, log sigma^2) with a learned Sigma, else C."""
    return GaussianDiffusion.from_config(params.diffusion).model_out_channels(params.data.channels)


def build_unet(params: Params, unet: UNetConfig | None = None) -> UNet:
    """The U-Net for `params` (or another `unet` config): C in, `model_out_channels` out."""
    C, out = params.data.channels, model_out_channels(params)
    return UNet.from_config(unet or params.unet, C, params.data.resolution, out_channels=out)


# ----------------------------------------------------------------------------------------------
# Weights files


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
) -> Path:
    """Write `state_dict` (tensors, moved to CPU) and str->str `metadata` to a safetensors file."""
    bad = {
        k: type(v).__name__
        for k, v in metadata.items()
        if not isinstance(k, str) or not isinstance(v, str)
    }
    if bad:
        raise ValueError(f"metadata: values must be str, got {bad}")
    not_tensor = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensor:
        raise ValueError(f"state_dict: keys {not_tensor} are not tensors")
    # clone: safetensors refuses tensors that share storage (views, tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    blob = canonical_header(save(tensors, metadata=dict(metadata)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    logger.info("saved %d tensors to %s", len(tensors), path)
    return Path(path)


def canonical_header(blob: bytes) -> bytes:
    """A safetensors file's bytes with the header's `__metadata__` in sorted key order.

    safetensors keeps the metadata in a Rust HashMap, whose iteration order changes from call to
    call: the same weights and metadata would give different bytes (and DVC hashes) on every
    write. The header is an 8-byte little-endian length, then JSON padded with spaces so the
    data (unchanged: its offsets are relative to the data) stays 8-byte aligned.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a `save_weights` file -> (state_dict on CPU, metadata).

    FileNotFoundError when missing, ValueError naming the file when it is not valid safetensors
    or holds NaN/inf values (such weights sample black images that would then be scored).
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"weights file not found: {source}")
    try:
        with safe_open(str(source), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"weights file {source}: not a readable safetensors file ({err})") from err
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"weights file {source}: tensors {bad[:5]} ({len(bad)} in all) hold NaN or inf; "
            "expected finite weights (retrain, or restore an earlier checkpoint)"
        )
    return tensors, metadata


# ----------------------------------------------------------------------------------------------
# The model folder


def write_model_dir(
    params: Params,
    state_dict: Mapping[str, torch.Tensor],
    metadata: dict[str, str],
    model_dir: Path,
) -> Path:
    """`ema.safetensors` (+ the resolved params as metadata) and `config.json`: one atomic unit.

    Both files are written into a temporary folder that then replaces `model_dir` whole, so a
    crash never pairs new weights with an old config. Returns the weights file.
    """
    config = {"config": json.dumps(to_dict(params), sort_keys=True), **metadata}
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        save_weights(tmp / WEIGHTS_FILE, state_dict, config)
        write_json(tmp / CONFIG_FILE, to_dict(params))
    return model_dir / WEIGHTS_FILE


def check_trained_config(trained: dict[str, Any], params: Params, where: Path) -> None:
    """ConfigError naming `where` when the model's training config differs from `params`."""
    now = to_dict(params)
    keys = [("unet", k) for k in now["unet"]] + [("data", "channels"), ("data", "resolution")]
    keys += [("diffusion", k) for k in TRAINED_DIFFUSION_KEYS]
    for section, key in keys:
        have = trained.get(section, {}).get(key, "<missing>")
        if have != now[section][key]:
            raise ConfigError(
                f"{where}: the model was trained with {section}.{key}={have!r} but params have "
                f"{now[section][key]!r}; retrain (dvc repro) or restore the params"
            )
    have_var = trained.get("diffusion", {}).get("var_type", "<missing>")
    if (have_var == "learned") != (now["diffusion"]["var_type"] == "learned"):
        raise ConfigError(
            f"{where}: the model was trained with diffusion.var_type={have_var!r} but params have "
            f"{now['diffusion']['var_type']!r}; a learned variance changes the network's output "
            "channels: retrain (dvc repro) or restore the params"
        )


def exported_step(model_dir: Path) -> int:
    """The training step whose EMA weights `<model_dir>/ema.safetensors` holds (its `step`
    metadata); 0 for released weights, which carry none (their MLflow Model is logged at 0)."""
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"weights file not found: {weights} (run the train stage first)")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            step = (f.metadata() or {}).get(STEP_KEY, "0")
    except (SafetensorError, OSError) as err:
        message = f"weights file {weights}: not a readable safetensors file ({err})"
        raise ValueError(message) from err
    if not step.isdigit():
        raise ValueError(f"weights file {weights}: metadata step={step!r}, expected an integer")
    return int(step)


def load_ema_model(params: Params, model_dir: Path) -> UNet:
    """The EMA U-Net from `<model_dir>/ema.safetensors`, checked against `config.json`."""
    config, weights = recover(model_dir) / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not config.is_file():
        raise FileNotFoundError(f"{config}: model config not found (run the train stage first)")
    trained = read_json(config, "the train stage's resolved config (rerun it)")
    check_trained_config(trained, params, config)
    unet_cfg = from_dict(UNetConfig, trained["unet"], "unet.")
    model = build_unet(params, unet_cfg)
    state_dict, _ = load_weights(weights)  # FileNotFoundError / ValueError name the file
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[1:3]
        raise ValueError(f"{weights}: weights do not fit the U-Net of {config}: {detail}") from e
    return model.eval().requires_grad_(False)
