"""The interpolation figure (paper Sec. 4.3, Fig. 8) on real digits, without Ray."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ddpm_core.diffusion import GaussianDiffusion
from pipelines.artifacts.model_dir import build_unet
from pipelines.config import Params, replace_path
from pipelines.evaluate.interpolation import interpolation_rows, source_pairs

CPU = torch.device("cpu")


@pytest.fixture
def setup(
    make_params: Callable[..., Params], shards_dir: Path
) -> tuple[Params, torch.nn.Module, GaussianDiffusion]:
    params = replace_path(make_params({"evaluate.interpolation_pairs": 2}), shards=str(shards_dir))
    torch.manual_seed(0)
    model = build_unet(params).eval()
    return params, model, GaussianDiffusion.from_config(params.diffusion)


def test_rows_hold_the_sources_and_one_image_per_lambda(setup: tuple) -> None:
    params, model, diffusion = setup
    pairs = source_pairs(params, Path(params.paths.shards))  # (2, 2, 1, 8, 8) test digits
    assert pairs.shape == (2, 2, 1, 8, 8) and pairs.dtype == torch.uint8
    lambdas = params.evaluate.interpolation_lambdas
    rows = interpolation_rows(model, diffusion, pairs, 10, lambdas, params.seed, CPU)
    assert rows.shape == (4, len(lambdas) + 2, 1, 8, 8) and rows.dtype == torch.uint8
    for p in range(2):  # rows 2p (t) and 2p + 1 (t = T) start with x_0 and end with x'_0
        for r in (2 * p, 2 * p + 1):
            assert torch.equal(rows[r, 0], pairs[p, 0]) and torch.equal(rows[r, -1], pairs[p, 1])
    again = interpolation_rows(model, diffusion, pairs[1:], 10, lambdas, params.seed, CPU)
    assert not torch.equal(again, rows[2:])  # pair p's noise is keyed by its index p
    assert torch.equal(interpolation_rows(model, diffusion, pairs, 10, lambdas, params.seed,
                                          CPU), rows)  # fmt: skip


def test_at_small_t_the_endpoints_decode_to_the_sources(setup: tuple) -> None:
    """x_1 = sqrt(alpha_bar_1) x_0 + 0.01 eps: the latent still holds the image, so lambda = 0
    and 1 decode to x_0 and x'_0 (up to the network's 0.01 eps_theta), and lambda = 1/2 to their
    pixel mean (in latent space a small t is a cross-fade; the paper uses t = 500)."""
    params, model, diffusion = setup
    pairs = source_pairs(params, Path(params.paths.shards))[:1]
    rows = interpolation_rows(model, diffusion, pairs, 1, (0.0, 0.5, 1.0), params.seed, CPU)
    a, b = pairs[0, 0].int(), pairs[0, 1].int()
    assert (a - b).abs().max() > 100  # two different digits
    start, mid, end = rows[0, 1].int(), rows[0, 2].int(), rows[0, 3].int()
    assert (start - a).abs().max() <= 8 and (end - b).abs().max() <= 8
    assert ((mid - (a + b) / 2).abs().max()) <= 8


def test_too_few_test_images_are_refused_naming_the_key(
    make_params: Callable[..., Params], shards_dir: Path
) -> None:
    params = replace_path(
        make_params({"evaluate.interpolation_pairs": 500}), shards=str(shards_dir)
    )
    with pytest.raises(ValueError, match=r"evaluate.interpolation_pairs: 500 pairs need 1000"):
        source_pairs(params, shards_dir)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"evaluate.interpolation_t": 21}, ["evaluate.interpolation_t", "diffusion.T=20"]),
        ({"evaluate.interpolation_t": 0}, ["evaluate.interpolation_t"]),
        ({"evaluate.interpolation_lambdas": [0.0, 1.5]}, ["evaluate.interpolation_lambdas"]),
        ({"evaluate.interpolation_lambdas": [0.5]}, ["evaluate.interpolation_lambdas"]),
        ({"evaluate.interpolation_pairs": 0}, ["evaluate.interpolation_pairs"]),
    ],
)
def test_bad_interpolation_params_are_refused_at_load(
    make_params: Callable[..., Params], overrides: dict[str, object], words: list[str]
) -> None:
    from ddpm_core.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_params(overrides)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_the_figure_names_its_rows_t_and_its_columns_lambda(make_params) -> None:
    from pipelines.evaluate.interpolation import interpolation_axes, interpolation_label

    params = make_params({"evaluate.interpolation_pairs": 2, "evaluate.interpolation_t": 7})
    rows, cols = interpolation_axes(params)
    assert rows == ["pair 1, t=7", "pair 1, t=20", "pair 2, t=7", "pair 2, t=20"]
    lambdas = [f"λ={lam:g}" for lam in params.evaluate.interpolation_lambdas]
    assert cols == ["x_0", *lambdas, "x'_0"]
    assert "digits" in interpolation_label(params)  # the figure says on which data
