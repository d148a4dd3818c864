"""The interpolation figure of the evaluate stage (Ho et al. 2020, Sec. 4.3, Figs. 8 and 9).

For each of `evaluate.interpolation_pairs` pairs of test images (0 and 1, 2 and 3, ...), two
rows: the pair encoded to x_t at t = `evaluate.interpolation_t` (paper Fig. 8: t = 500), mixed
as (1 - lambda) x_t + lambda x'_t and decoded by the reverse process (`ddpm_core.sampling.
interpolate`); and the same at t = T, where the sources are forgotten and the row holds novel
samples (the last row of Fig. 9). Each row is [x_0, decoded lambdas..., x'_0]. Pair p's noise
is keyed by (seed, purpose, p), so the figure does not depend on the device or the pair count.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model
from ddpm_core.rng import SeedPurpose, mix_seed
from ddpm_core.sampling import from_uint8, interpolate
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.artifacts.shards import load_split, read_manifest
from pipelines.config import Params
from pipelines.evaluate.report import data_label
from pipelines.infra.figures import save_image_table
from pipelines.infra.model_runner import evaluate_runner

log = logging.getLogger(__name__)

INTERP_PNG = "interpolation.png"


def source_pairs(params: Params, shards_dir: Path) -> Tensor:
    """The first 2 * `interpolation_pairs` test images as pairs (P, 2, C, H, W) uint8; training
    images when there is no test split (data.test_fraction 0, as the official 256^2 runs)."""
    pairs = params.evaluate.interpolation_pairs
    splits = read_manifest(shards_dir)["splits"]
    name = "test" if "test" in splits else "train"
    have = int(splits.get(name, {}).get("num_images", 0))
    if have < 2 * pairs:
        raise ValueError(
            f"evaluate.interpolation_pairs: {pairs} pairs need {2 * pairs} {name} images, "
            f"{shards_dir} has {have}; lower it (or raise data.test_fraction)"
        )
    images, _ = load_split(shards_dir, name, max_images=2 * pairs)  # (2P, C, H, W)
    return images.reshape(pairs, 2, *images.shape[1:])


@torch.no_grad()
def interpolation_rows(
    model: Model,
    diffusion: GaussianDiffusion,
    pairs: Tensor,
    t: int,
    lambdas: tuple[float, ...],
    seed: int,
    device: torch.device,
) -> Tensor:
    """(2P, L + 2, C, H, W) uint8: per pair the row at `t` (1-based, paper style) and at T.

    pairs: (P, 2, C, H, W) uint8 sources. Each row is [x_0, one image per lambda, x'_0].
    """
    rows = []
    for p, pair in enumerate(pairs):
        x0 = from_uint8(pair)  # (2, C, H, W) in [-1, 1]
        key = mix_seed(seed, SeedPurpose.INTERPOLATION, p)
        for t_row in (t, diffusion.num_timesteps):
            mixed = interpolate(model, diffusion, x0, t_row - 1, lambdas, key, device).cpu()
            rows.append(torch.cat([pair[:1], mixed, pair[1:]]))  # (L + 2, C, H, W)
    return torch.stack(rows)


def interpolation_label(params: Params) -> str:
    """What `interpolation.png` shows (the MLflow tag `interpolation`)."""
    cfg = params.evaluate
    return (
        f"paper Fig. 8 construction on {cfg.interpolation_pairs} pair(s) of {data_label(params)} "
        f"test images: latent mix at t={cfg.interpolation_t} (paper: 500 of 1000, CelebA-HQ) "
        f"and at t=T={params.diffusion.T}, lambda in {list(cfg.interpolation_lambdas)}; "
        "rows [x_0, lambdas..., x'_0]"
    )


def compute_rows(params: Params, model_dir: Path, pairs: Tensor) -> Tensor:
    """`interpolation_rows` of the EMA model in `model_dir` (the body of one Ray task)."""
    model, device = evaluate_runner(params).load(load_ema_model, params, model_dir)
    diffusion = GaussianDiffusion.from_config(params.diffusion)
    cfg = params.evaluate
    return interpolation_rows(
        model, diffusion, pairs, cfg.interpolation_t, cfg.interpolation_lambdas, params.seed,
        device,
    )  # fmt: skip


def write_interpolation(params: Params, root: Path, pairs: Tensor) -> Path:
    """Fig. 8 (with the t = T rows) as `<paths.plots>/interpolation.png`, drawn on a Ray task
    (a GPU with `evaluate.use_gpu`) and written here."""
    import ray

    task = evaluate_runner(params).remote(compute_rows)
    rows = ray.get(task.remote(params, root / params.paths.model, pairs))
    path = draw_interpolation(params, rows, root / params.paths.plots / INTERP_PNG)
    log.info("interpolation figure %s: %d rows x %d columns", path, *rows.shape[:2])
    return path


def interpolation_axes(params: Params) -> tuple[list[str], list[str]]:
    """The figure's row labels (pair and t, two rows a pair) and column labels (x_0, λ, x'_0)."""
    cfg = params.evaluate
    rows = [
        f"pair {p + 1}, t={t_row}"
        for p in range(cfg.interpolation_pairs)
        for t_row in (cfg.interpolation_t, params.diffusion.T)
    ]
    return rows, ["x_0", *(f"λ={lam:g}" for lam in cfg.interpolation_lambdas), "x'_0"]


def draw_interpolation(params: Params, rows: Tensor, path: Path) -> Path:
    """`rows` (2P, L + 2, C, H, W) as a table whose rows name the pair and t, columns λ."""
    row_labels, col_labels = interpolation_axes(params)
    title = interpolation_label(params).replace(": ", ":\n", 1)
    return save_image_table(rows, row_labels, col_labels, title, path)
