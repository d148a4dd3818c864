"""Checks and the run key of a training run, computed in the driver before Ray starts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.data.stream import MANIFEST, read_manifest

# train.* keys that cannot change the weights: editing them keeps the run key (and resumes).
RESUME_NEUTRAL = (
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "max_failures",
    "cpus_per_worker",
    "gpus_per_worker",
)


def resolve(root: Path, path: str) -> Path:
    """`path` from params, absolute (relative ones are under the repo root)."""
    return (root / path).resolve()


def validate_inputs(params: Params, root: Path) -> dict[str, Any]:
    """Shards, manifest and GPU options, checked before Ray starts; returns the manifest."""
    shards = resolve(root, params.paths.shards)
    if not (shards / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{shards / MANIFEST}: shard manifest not found (paths.shards={params.paths.shards}); "
            "run `dvc repro shard` (or `python -m stages.shard --params params.yaml`) first"
        )
    manifest = read_manifest(shards)
    want = [params.data.channels, params.data.resolution, params.data.resolution]
    if list(manifest["image_shape"]) != want:
        raise ValueError(
            f"{shards / MANIFEST}: image_shape {manifest['image_shape']} does not match "
            f"data.channels={params.data.channels}, data.resolution={params.data.resolution} "
            f"(expected {want}); rerun `dvc repro shard` after changing data.*"
        )
    n_train = int(manifest["splits"].get("train", {}).get("num_images", 0))
    if n_train < params.train.num_workers:
        raise ValueError(
            f"{shards / MANIFEST}: split 'train' has {n_train} images, fewer than "
            f"train.num_workers={params.train.num_workers}"
        )
    cfg = params.train
    if cfg.use_gpu and cfg.gpus_per_worker <= 0:
        raise ValueError(
            f"train.gpus_per_worker: got {cfg.gpus_per_worker}, expected > 0 with train.use_gpu"
        )
    if not cfg.use_gpu and cfg.gpus_per_worker > 0:
        raise ValueError(
            f"train.gpus_per_worker: got {cfg.gpus_per_worker} with train.use_gpu: false "
            "(set use_gpu: true or gpus_per_worker: 0)"
        )
    return manifest


def run_key(params: Params, manifest_sha1: str) -> str:
    """12 hex digits of sha1(data, diffusion, unet, train params, seed, manifest hash)."""
    train = {k: v for k, v in asdict(params.train).items() if k not in RESUME_NEUTRAL}
    key = {
        "data": asdict(params.data),
        "diffusion": asdict(params.diffusion),
        "unet": asdict(params.unet),
        "train": train,
        "seed": params.seed,
        "manifest": manifest_sha1,
    }
    blob = json.dumps(key, sort_keys=True, default=list).encode()
    return hashlib.sha1(blob).hexdigest()[:12]
