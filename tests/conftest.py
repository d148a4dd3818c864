"""Shared fixtures: a tiny `Params` rooted in a temporary folder."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ddpm_core.config import Params, from_dict

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests share 2 cores with Ray workers; one intra-op thread keeps timings predictable.
torch.set_num_threads(1)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

TINY: dict[str, Any] = {
    "data.resolution": 8,
    "data.max_images": 64,
    "data.shard_size": 16,
    "diffusion.T": 20,
    "unet.ch": 8,
    "unet.ch_mult": [1, 2],
    "unet.num_res_blocks": 1,
    "unet.attn_resolutions": [4],
    "unet.dropout": 0.0,
    "train.steps": 4,
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.sample_every": 0,
    "train.cpus_per_worker": 0.5,
    "sample.num_images": 8,
    "sample.batch_size": 4,
    "sample.cpus_per_worker": 0.5,
    "sample.progressive_every": 5,
    "sample.progressive_images": 2,
    "sample.grid_images": 4,
    "evaluate.fid_images": 8,
    "evaluate.fid_reference_images": 16,
    "evaluate.nll_images": 4,
    "evaluate.nll_batch_size": 4,
    "evaluate.cpus_per_worker": 0.5,
    "ray.num_cpus": 2,
}


def default_params_dict() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text())
    return raw


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def build_params(root: Path, overrides: dict[str, Any] | None = None, tiny: bool = True) -> Params:
    """params.yaml with every path under `root`, the TINY overrides, then `overrides`."""
    raw = copy.deepcopy(default_params_dict())
    for k, v in {**(TINY if tiny else {}), **(overrides or {})}.items():
        set_dotted(raw, k, v)
    for k, v in raw["paths"].items():
        raw["paths"][k] = str(root / v)
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    return from_dict(Params, raw)


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Params]:
    def make(overrides: dict[str, Any] | None = None, tiny: bool = True) -> Params:
        return build_params(tmp_path, overrides, tiny)

    return make
