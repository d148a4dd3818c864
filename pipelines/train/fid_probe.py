"""The in-training FID of the EMA weights behind min-FID selection (`train.fid_every`).

The driver (`probe_for`) reads the Inception weights and the cached reference statistics of the
fid_stats stage (a dep of train); rank 0 (`small_fid`) samples `train.fid_images` images with
Algorithm 2 over every `train.fid_stride`-th timestep, image i keyed by (seed, i) as in the
sample stage, and scores them. Few images and a strided chain: the numbers rank checkpoints of one
run and are NOT comparable with published FIDs (`FidProbe.label` says so wherever they are shown).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.sampling import sample_batched
from pipelines.artifacts.fid_stats import FidStats, InceptionWeights, load_inception, load_stats
from pipelines.config import Params
from pipelines.fid.features import extract_features
from pipelines.fid.reference import headline_reference
from pipelines.fid.score import score

PROBE_BATCH = 64  # images per sampling batch (image i does not depend on the batch)


@dataclass(frozen=True)
class FidProbe:
    """What rank 0 needs to score the EMA weights: Inception weights and the reference file."""

    weights: InceptionWeights
    reference: str  # the fid_stats stage's .npz of the reference split
    label: str  # what the numbers are comparable with


def probe_for(params: Params, root: Path) -> FidProbe | None:
    """The probe of `train.fid_every` (None when off); the reference statistics come from the
    fid_stats stage (a dep of train; an error when missing or stale)."""
    cfg = params.train
    if cfg.fid_every == 0:
        return None
    weights = load_inception(root / params.paths.fid_stats)  # the ones the reference used
    ref = headline_reference(params, root, weights)
    label = (
        f"in-training FID of the EMA weights: {cfg.fid_images} samples, Algorithm 2 over every "
        f"{cfg.fid_stride}-th of {params.diffusion.T} timesteps, vs {ref.count} "
        f"{params.data.source} {ref.split} images, {weights.label}; ranks checkpoints of this run, "
        "NOT comparable with published figures"
    )
    return FidProbe(weights, str(ref.path), label)


def load_reference(probe: FidProbe) -> FidStats:
    return load_stats(Path(probe.reference))


@torch.no_grad()
def small_fid(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    params: Params,
    probe: FidProbe,
    reference: FidStats,
    device: torch.device,
) -> float:
    """FID of `train.fid_images` samples of `model` (strided Algorithm 2) against `reference`."""
    cfg, shape = params.train, params.data.image_shape
    chain = diffusion.respaced(cfg.fid_stride)
    images = sample_batched(
        model, chain, range(cfg.fid_images), params.seed, shape, PROBE_BATCH, device
    )  # (N, C, H, W) uint8
    extract = partial(extract_features, device=device)  # in-process, on this rank's device
    return score(images, probe.weights, [reference], None, extract, "in-training samples").fid[0]
