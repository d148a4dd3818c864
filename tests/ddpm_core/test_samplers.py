"""Every registered sampler through the one loop: per-image noise, the x̂0 trace, the network
calls it declares; the registry's option checks; the docs table against the registry."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.samplers.registry import (
    OPTION_TYPES,
    SAMPLERS,
    make_sampler,
    name_of,
    options,
    options_of,
)
from ddpm_core.sampling import sample_batched, sample_indices
from ddpm_core.schedule import make_betas
from tests.helpers import REPO, TinyEps

SHAPE = (2, 4, 4)


def chain(stride: int = 4) -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", 20)).respaced(stride)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_images_depend_only_on_seed_and_index(name: str) -> None:
    """Image i is the same alone, in a batch, in any batch size: the samplers' state and
    extra network calls stay per image."""
    model, d, sampler = TinyEps(), chain(), make_sampler(name)
    full = sample_indices(model, d, [0, 1, 2], seed=5, shape=SHAPE, sampler=sampler)
    one = sample_indices(model, d, [2], seed=5, shape=SHAPE, sampler=sampler)
    assert torch.equal(full[2:], one)
    assert torch.equal(sample_batched(model, d, [0, 1, 2], 5, SHAPE, 2, sampler=sampler), full)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_trace_ends_at_the_sample_and_calls_are_as_declared(name: str) -> None:
    """x̂0 at t = 0 is the sample (every sampler ends at a_bar = 1); a step makes
    `calls_per_step` network calls (one fewer at the last step of a second-order one);
    `on_step` once a step."""
    model, d, sampler = TinyEps(), chain(), make_sampler(name)
    steps: list[int] = []
    x, frames = sample_indices(
        model, d, [0, 1], seed=3, shape=SHAPE, sampler=sampler, x0_every=2, on_step=steps.append
    )
    n = d.num_timesteps
    assert frames.shape[0] == 3 and steps == list(range(1, n + 1))
    assert (frames[-1].int() - x.int()).abs().max() <= 1  # the same image up to rounding
    calls = [int(t[0]) for t in model.calls]
    want = n * sampler.calls_per_step - (sampler.calls_per_step - 1)
    assert len(calls) == want and calls[0] == int(d.timesteps[-1]) and calls[-1] == 0


def test_options_are_declared_typed_and_defaulted() -> None:
    for name, cls in SAMPLERS.items():
        assert cls.title and cls.reference and name_of(make_sampler(name)) == name
        for key, (tp, default) in options_of(name).items():
            assert tp in OPTION_TYPES and type(default) is tp, f"{name}.{key}"
        assert options(make_sampler(name)) == {k: d for k, (_, d) in options_of(name).items()}
    assert [n for n, c in SAMPLERS.items() if c.paper] == ["ancestral"]


@pytest.mark.parametrize(
    ("name", "opts", "message"),
    [
        ("euler", {}, "sampler: got 'euler', expected one of ['ancestral', 'ddim', 'dpmpp_2m'"),
        ("ddim", {"eta": 1.5}, "ddim.eta: got 1.5, expected a number in [0, 1]"),
        ("ddim", {"eta": "0"}, "ddim.eta: got '0', expected float"),
        ("heun", {"clip_denoised": 1}, "heun.clip_denoised: got 1, expected bool"),
        ("heun", {"churn": 0.0}, "heun: unknown option(s) ['churn']; declared: ['clip_denoised']"),
    ],
)
def test_bad_options_name_the_sampler_and_option(name: str, opts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_sampler(name, opts)


def test_ints_are_floats_where_declared() -> None:
    assert make_sampler("ddim", {"eta": 1}) == dataclasses.replace(make_sampler("ddim"), eta=1.0)


def test_architecture_table_lists_the_registry() -> None:
    """docs/architecture.md's sampler table: a row per registered sampler, its options with
    their defaults and its network calls a step."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(\w+\.py)` \| ([^|]*) \| (\d)", text, re.MULTILINE)
    assert [r[0] for r in rows] == list(SAMPLERS)
    for name, file, opts, calls in rows:
        assert SAMPLERS[name].__module__ == f"ddpm_core.samplers.{file[:-3]}"
        want = [f"`{k}` ({str(d).lower()})" for k, (_, d) in options_of(name).items()]
        assert opts == ", ".join(want) and int(calls) == SAMPLERS[name].calls_per_step
