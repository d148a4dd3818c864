"""The trained model as an MLflow pyfunc: `predict` samples images (Algorithm 2).

This file is the model's code ("models from code": MLflow copies it into the model and runs it
at load time, no pickle). It imports only `ddpm_core` (shipped with the model as `code_paths`),
torch, numpy, pandas, safetensors and mlflow, so the model loads without this repository:

    model = mlflow.pyfunc.load_model("models:/ddpm-digits@champion")
    images = model.predict(pd.DataFrame({"index": range(16)}), params={"stride": 10})

Input: a DataFrame with an int column `index`, one row per image; image i depends only on
(seed, i), as in the sample stage. Params (defaults from the training run's params): `seed`,
`stride` (1 = all T steps, the paper; k > 1 = every k-th timestep, fast), `sampler` (a name in
`ddpm_core.samplers.registry`) and `<sampler>.<option>` for each option a sampler declares
(e.g. `ddim.eta`). Output: (N, H, W, C) uint8 images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel
from safetensors.torch import load_file

from ddpm_core.config import DiffusionConfig, UNetConfig
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.samplers.base import ReverseSampler
from ddpm_core.samplers.registry import make_sampler, options_of
from ddpm_core.sampling import sample_batched
from ddpm_core.unet import UNet

MODEL_DIR = "model_dir"  # the artifact key of the model folder (ema.safetensors + config.json)
WEIGHTS_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
INDEX = "index"
# Imported by the pipeline, this module only defines the class; MLflow runs it under a name of
# its own, and then it hands the model over (`set_model` at the bottom).
MODULE = "pipelines.infra.pyfunc_model"


def build_unet(config: dict[str, Any]) -> tuple[UNet, GaussianDiffusion]:
    """The U-Net and the diffusion of a model folder's `config.json` (the resolved params)."""
    unet = config["unet"]
    unet_cfg = UNetConfig(
        ch=unet["ch"],
        ch_mult=tuple(unet["ch_mult"]),
        num_res_blocks=unet["num_res_blocks"],
        attn_resolutions=tuple(unet["attn_resolutions"]),
        dropout=unet["dropout"],
    )
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(**config["diffusion"]))
    c, r = config["data"]["channels"], config["data"]["resolution"]
    out = diffusion.model_out_channels(c)
    return UNet.from_config(unet_cfg, c, r, out_channels=out), diffusion


def check_indices(frame: pd.DataFrame) -> list[int]:
    """The image indices of `frame` (one row per image, column `index`); clear errors."""
    if INDEX not in frame.columns:
        raise ValueError(f"input: expected a column {INDEX!r}, got columns {list(frame.columns)}")
    indices = [int(i) for i in frame[INDEX]]
    if not indices:
        raise ValueError(f"input: column {INDEX!r} is empty; expected one row per image")
    if min(indices) < 0:
        raise ValueError(f"input: {INDEX} must be >= 0, got {min(indices)}")
    return indices


class DdpmSampler(PythonModel):
    """Samples images from the EMA U-Net of a model folder."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[MODEL_DIR])
        self.config: dict[str, Any] = json.loads((folder / CONFIG_FILE).read_text())
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.diffusion = build_unet(self.config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        self.model = model.eval().requires_grad_(False).to(self.device)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """(N, H, W, C) uint8 images, image i from the counter-based noise of (seed, i)."""
        indices = check_indices(model_input)
        cfg, p = self.config, dict(params or {})
        seed = int(p.get("seed", cfg["seed"]))
        stride = int(p.get("stride", cfg["sample"]["stride"]))
        if seed < 0:
            raise ValueError(f"params.seed: got {seed}, expected an int >= 0")
        if stride < 1 or stride > self.diffusion.num_timesteps:
            raise ValueError(
                f"params.stride: got {stride}, expected 1 <= stride <= T="
                f"{self.diffusion.num_timesteps}"
            )
        chain = self.diffusion.respaced(stride)
        c, r = cfg["data"]["channels"], cfg["data"]["resolution"]
        batch = int(cfg["sample"]["batch_size"])
        step, shape = self.sampler(p), (c, r, r)
        images = sample_batched(self.model, chain, indices, seed, shape, batch, self.device, step)
        return images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)

    def sampler(self, p: dict[str, Any]) -> ReverseSampler:
        """`params.sampler` with its `<name>.<option>` params over the run's sample options."""
        sample = self.config["sample"]
        name = str(p.get("sampler", sample["sampler"]))
        try:
            given = dict(sample["sampler_options"].get(name, {}))
            for key, (tp, _) in options_of(name).items():  # MLflow may hand numpy scalars
                given |= {key: tp(p[f"{name}.{key}"])} if f"{name}.{key}" in p else {}
            return make_sampler(name, given)
        except ValueError as e:
            raise ValueError(f"params.{e}") from None


if __name__ != MODULE:
    mlflow.models.set_model(DdpmSampler())
