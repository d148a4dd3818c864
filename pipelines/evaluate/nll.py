"""The variational bound in bits/dim (Ho et al. 2020, eq. 5 / Table 1 NLL) over Ray actors.

`calc_bpd_loop` costs T forward passes per image, so the test images are cut into fixed chunks
of `chunk_size` and spread over a pool of actors, each of which builds the (EMA) model once. Chunk
image i draws its noise from a counter-based stream keyed by (seed, i) only
(`ddpm_core.rng.CounterNoise`), so the result is the same for any number of workers or chunk
size. Also the rate-distortion curve (paper Sec. 4.3,
Fig. 5, Table 4).

A lost actor (killed, its node gone) is restarted and only its chunk in flight is redone
(`ACTOR_RESTARTS`): finished chunks are kept by the driver, and a chunk's result does not depend
on which actor, or which attempt, computed it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_core.config import DiffusionConfig
from ddpm_core.diffusion import GaussianDiffusion, Model
from ddpm_core.metrics import rate_distortion
from ddpm_core.rng import CounterNoise, SeedPurpose, mix_seed
from ddpm_core.sampling import from_uint8
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.config import Params
from pipelines.infra.accel import InferenceOptions
from pipelines.infra.model_runner import ModelRunner

log = logging.getLogger(__name__)

ModelFn = Callable[[], torch.nn.Module]  # picklable factory, called once per actor
KEYS = ("total_bpd", "prior_bpd", "terms_bpd", "mse")
EAGER_FP32 = InferenceOptions()
# Restarts of each actor and retries of its task in flight, bounded: a chunk that kills its
# actor every time (out of memory) fails the stage instead of looping.
ACTOR_RESTARTS = 3


@dataclass(frozen=True)
class NllSummary:
    """The bound over a set of images: mean bits/dim, its standard error and two of its terms."""

    bpd: float  # mean total bits/dim (L_T + sum L_{t-1} + L_0)
    sem: float  # standard error of that mean
    prior_bpd: float  # mean L_T
    decoder_bpd: float  # mean L_0
    images: int

    def metrics(self) -> dict[str, float | int]:
        return {
            "nll_bpd": self.bpd,
            "nll_bpd_sem": self.sem,
            "prior_bpd": self.prior_bpd,
            "decoder_bpd": self.decoder_bpd,
            "nll_images": self.images,
        }


@dataclass(frozen=True)
class BpdResult:
    """Per-image bound: total_bpd (N,), prior_bpd (N,), terms_bpd (N, T), mse (N, T), float64."""

    total_bpd: np.ndarray
    prior_bpd: np.ndarray
    terms_bpd: np.ndarray
    mse: np.ndarray

    def summary(self) -> NllSummary:
        """Mean bits/dim and its standard error over images (NaN SEM for a single image)."""
        n = len(self.total_bpd)
        sem = float(self.total_bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return NllSummary(
            bpd=float(self.total_bpd.mean()),
            sem=sem,
            prior_bpd=float(self.prior_bpd.mean()),
            decoder_bpd=float(self.terms_bpd[:, 0].mean()),  # L_0
            images=n,
        )

    def rate_distortion(self) -> dict[str, np.ndarray]:
        """reverse_step (T,), rate_bpd (T,), distortion_rmse (T,) over the dataset means."""
        rd = rate_distortion(self.terms_bpd, self.prior_bpd, self.mse)
        T = self.terms_bpd.shape[1]
        return {
            "reverse_step": np.arange(T, 0, -1),  # index t (0-based) = paper t+1 -> T - t
            "rate_bpd": np.asarray(rd["rate"], dtype=np.float64),
            "distortion_rmse": np.asarray(rd["distortion_rmse"], dtype=np.float64),
        }


@torch.no_grad()
def bpd_chunk(
    model: Model,
    diffusion: GaussianDiffusion,
    images: torch.Tensor,
    seed: int,
    first: int,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """`calc_bpd_loop` (clip_denoised=True, as the official code) on uint8 images (B, C, H, W)
    whose dataset indices are first .. first + B - 1: image i's noise depends on (seed, i) only
    (counter-based on NLL's own stream `SeedPurpose.NLL`, not the sample stage's, drawn on
    `device`), so its bound does not depend on the chunking."""
    key, idx = mix_seed(seed, SeedPurpose.NLL), range(first, first + len(images))
    noise = CounterNoise(key, idx, torch.device(device))
    x0 = from_uint8(images).to(device)  # (B, C, H, W) in [-1, 1]
    out = diffusion.calc_bpd_loop(model, x0, clip_denoised=True, noise_fn=noise)
    return {k: out[k].to(torch.float64).cpu().numpy() for k in KEYS}


class BpdWorker:
    """Holds one model copy; `run(chunk)` evaluates the bound on a chunk of images."""

    def __init__(self, model_fn: ModelFn, diffusion: DiffusionConfig, runner: ModelRunner) -> None:
        self.model, self.device = runner.load(model_fn)
        self.diffusion = GaussianDiffusion.from_config(diffusion)

    def run(
        self, images: torch.Tensor, seed: int, chunk: int, first: int
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Chunk number `chunk`: images first .. first + B - 1 of the evaluated set."""
        return chunk, bpd_chunk(self.model, self.diffusion, images, seed, first, self.device)


def gather_chunks(parts: dict[int, dict[str, np.ndarray]]) -> BpdResult:
    ordered = [parts[i] for i in sorted(parts)]
    return BpdResult(**{k: np.concatenate([p[k] for p in ordered]) for k in KEYS})


def evaluate_bpd(
    images: torch.Tensor,
    model_fn: ModelFn,
    diffusion: DiffusionConfig,
    *,
    seed: int,
    chunk_size: int,
    num_workers: int,
    cpus_per_worker: float = 1.0,
    use_gpu: bool = False,
    options: InferenceOptions = EAGER_FP32,
) -> BpdResult:
    """The bound on uint8 (N, C, H, W) images over `num_workers` Ray actors (order preserved).

    Chunk k = images[k*chunk_size : (k+1)*chunk_size]; image i's noise is keyed by (seed, i).
    """
    import ray
    from ray.util import ActorPool

    if len(images) == 0:
        raise ValueError("evaluate.nll_images: no test images to evaluate")
    if chunk_size < 1 or num_workers < 1:
        raise ValueError(f"chunk_size={chunk_size}, num_workers={num_workers}: expected >= 1")
    chunks = list(torch.split(images, chunk_size))  # (<=chunk_size, C, H, W) each
    workers = min(num_workers, len(chunks))
    runner = ModelRunner(cpus_per_worker, use_gpu, "evaluate", options)
    actor_cls = runner.remote(
        BpdWorker, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS
    )
    actors = [actor_cls.remote(model_fn, diffusion, runner) for _ in range(workers)]
    pool = ActorPool(actors)
    jobs = [(c, k, k * chunk_size) for k, c in enumerate(chunks)]
    parts: dict[int, dict[str, np.ndarray]] = {}
    run = lambda a, job: a.run.remote(job[0], seed, job[1], job[2])  # noqa: E731
    for index, part in pool.map_unordered(run, jobs):
        parts[index] = part
        log.info("bpd chunk %d/%d done", len(parts), len(chunks))
    for actor in actors:
        ray.kill(actor)
    return gather_chunks(parts)


@dataclass(frozen=True)
class EmaModelLoader:
    """Picklable `ModelFn`: the EMA U-Net of a train-stage output folder, checked against params."""

    params: Params
    model_dir: str

    def __call__(self) -> torch.nn.Module:
        return load_ema_model(self.params, Path(self.model_dir))
