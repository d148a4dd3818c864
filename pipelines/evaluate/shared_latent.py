"""The shared-latent figure of the evaluate stage (Ho et al. 2020, Sec. 4.3, Fig. 7).

"When conditioned on the same latent, samples share high-level attributes": for each of
`evaluate.shared_latent_images` reverse trajectories (Algorithm 2 from x_T ~ N(0, I), as the
paper and the official `p_sample_loop_trajectory` do; not q(x_t | x_0) of a real image), x_t is
frozen at each t of `evaluate.shared_latent_t` and `evaluate.shared_latent_draws` reverse
processes with different noise run from it to x_0 (`ddpm_core.sampling.shared_latent`). One row
per (trajectory, t): [x_t, draw 1, ..., draw K]; the paper draws each panel as 2x2 quadrants
(x_t bottom right, three draws), a table reads the same with labelled rows and columns. The
noise is keyed by (seed, SeedPurpose.SHARED_LATENT), so the figure depends on nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model
from ddpm_core.rng import SeedPurpose, mix_seed
from ddpm_core.sampling import shared_latent, to_uint8
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.config import Params
from pipelines.evaluate.report import data_label
from pipelines.infra.figures import save_image_table
from pipelines.infra.model_runner import evaluate_runner

log = logging.getLogger(__name__)

SHARED_LATENT_PNG = "shared_latent.png"


@torch.no_grad()
def shared_latent_cells(
    model: Model, params: Params, diffusion: GaussianDiffusion, device: torch.device
) -> Tensor:
    """(N R, K + 1, C, H, W) uint8: per trajectory n and t (rows), [x_t, K draws of x̂0]."""
    cfg = params.evaluate
    key = mix_seed(params.seed, SeedPurpose.SHARED_LATENT)
    out = shared_latent(
        model, diffusion, list(cfg.shared_latent_t), cfg.shared_latent_draws,
        cfg.shared_latent_images, key, params.data.image_shape, device,
    )  # fmt: skip
    x_t = to_uint8(out.x_t.cpu()).unsqueeze(2)  # (N, R, 1, C, H, W), clamped to [-1, 1] to show
    cells = torch.cat([x_t, to_uint8(out.x0.cpu())], dim=2)  # (N, R, K + 1, C, H, W)
    return cells.flatten(0, 1)


def shared_latent_label(params: Params) -> str:
    """What `shared_latent.png` shows (its title and the MLflow tag `shared_latent`)."""
    cfg = params.evaluate
    return (
        f"paper Fig. 7 construction on {data_label(params)} {params.data.resolution}x"
        f"{params.data.resolution} (not the paper's CelebA-HQ 256x256): {cfg.shared_latent_draws} "
        f"draws x̂0 ~ p(x_0 | x_t) from one x_t frozen on a reverse trajectory from x_T, at "
        f"t in {list(cfg.shared_latent_t)} of T={params.diffusion.T}, "
        f"{cfg.shared_latent_images} trajectory(ies); rows [x_t, draws...]"
    )


def row_labels(params: Params) -> list[str]:
    """'t=<t>' per row, with the trajectory number when there are several."""
    cfg = params.evaluate
    many = cfg.shared_latent_images > 1
    return [
        f"#{n + 1} t={t}" if many else f"t={t}"
        for n in range(cfg.shared_latent_images)
        for t in cfg.shared_latent_t
    ]


def compute_cells(params: Params, model_dir: Path) -> Tensor:
    """`shared_latent_cells` of the EMA model in `model_dir` (the body of one Ray task)."""
    model, device = evaluate_runner(params).load(load_ema_model, params, model_dir)
    return shared_latent_cells(model, params, GaussianDiffusion.from_config(params.diffusion),
                               device)  # fmt: skip


def draw_shared_latent(params: Params, cells: Tensor, path: Path) -> Path:
    """The figure of `cells` (N R, K + 1, C, H, W) uint8 with labelled rows and columns."""
    k = params.evaluate.shared_latent_draws
    cols = ["frozen x_t", *(f"x̂0 draw {j + 1}" for j in range(k))]
    title = shared_latent_label(params).replace(": ", ":\n", 1)
    return save_image_table(cells, row_labels(params), cols, title, path)


def write_shared_latent(params: Params, root: Path) -> Path:
    """Fig. 7 as `<paths.plots>/shared_latent.png`, drawn on a Ray task (a GPU with
    `evaluate.use_gpu`) and written here."""
    import ray

    task = evaluate_runner(params).remote(compute_cells)
    cells = ray.get(task.remote(params, root / params.paths.model))
    path = draw_shared_latent(params, cells, root / params.paths.plots / SHARED_LATENT_PNG)
    log.info("shared-latent figure %s: %d rows x %d columns", path, *cells.shape[:2])
    return path
