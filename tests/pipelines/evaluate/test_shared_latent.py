"""The shared-latent figure (paper Sec. 4.3, Fig. 7) with the tiny U-Net, without Ray."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_core.config import ConfigError
from ddpm_core.diffusion import GaussianDiffusion
from pipelines.artifacts.model_dir import build_unet
from pipelines.config import Params
from pipelines.evaluate.shared_latent import (
    draw_shared_latent,
    row_labels,
    shared_latent_cells,
    shared_latent_label,
)

CPU = torch.device("cpu")


@pytest.fixture
def setup(make_params: Callable[..., Params]) -> tuple[Params, torch.nn.Module, GaussianDiffusion]:
    params = make_params({"evaluate.shared_latent_images": 2, "evaluate.shared_latent_draws": 3})
    torch.manual_seed(0)
    model = build_unet(params).eval()
    return params, model, GaussianDiffusion.from_config(params.diffusion)


def test_rows_are_x_t_then_the_draws_and_the_figure_is_deterministic(
    setup: tuple, tmp_path: Path
) -> None:
    params, model, diffusion = setup
    cells = shared_latent_cells(model, params, diffusion, CPU)
    ts = params.evaluate.shared_latent_t  # (20, 10, 5) of T = 20
    assert cells.shape == (2 * len(ts), 1 + 3, 1, 8, 8) and cells.dtype == torch.uint8
    assert row_labels(params) == ["#1 t=20", "#1 t=10", "#1 t=5", "#2 t=20", "#2 t=10", "#2 t=5"]
    for row in cells:  # draws from one x_t differ from each other
        draws = row[1:]
        assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(cells[0, 0], cells[len(ts), 0])  # two trajectories, two x_T
    a = draw_shared_latent(params, cells, tmp_path / "a.png")
    b = draw_shared_latent(params, shared_latent_cells(model, params, diffusion, CPU),
                           tmp_path / "b.png")  # fmt: skip
    with Image.open(a) as fa, Image.open(b) as fb:  # the same seed: the same pixels
        assert np.array_equal(np.asarray(fa), np.asarray(fb))
    other = dataclasses.replace(params, seed=params.seed + 1)
    assert not torch.equal(shared_latent_cells(model, other, diffusion, CPU), cells)


def test_the_label_says_what_and_on_which_data(setup: tuple) -> None:
    params = setup[0]
    label = shared_latent_label(params)
    assert "paper Fig. 7" in label and "digits 8x8 (not the paper's CelebA-HQ 256x256)" in label
    assert "t in [20, 10, 5] of T=20" in label and "3 draws" in label


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"evaluate.shared_latent_t": [21]}, ["evaluate.shared_latent_t", "diffusion.T=20"]),
        ({"evaluate.shared_latent_t": [0, 10]}, ["evaluate.shared_latent_t", "1..diffusion.T"]),
        ({"evaluate.shared_latent_t": []}, ["evaluate.shared_latent_t", "non-empty"]),
        ({"evaluate.shared_latent_t": [10, 10]}, ["evaluate.shared_latent_t", "distinct"]),
        ({"evaluate.shared_latent_draws": 1}, ["evaluate.shared_latent_draws", ">= 2"]),
        ({"evaluate.shared_latent_images": 0}, ["evaluate.shared_latent_images", ">= 1"]),
    ],
)
def test_bad_shared_latent_params_are_refused_at_load(
    make_params: Callable[..., Params], overrides: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_params(overrides)
    assert all(w in str(info.value) for w in words), str(info.value)
