"""Per-image deterministic sampling, uint8 conversion and progressive frames."""

from __future__ import annotations

import pytest
import torch

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.rng import CounterNoise
from ddpm_core.samplers import DDIM, Ancestral, make_sampler, reverse_loop
from ddpm_core.sampling import (
    batches,
    from_uint8,
    interpolate,
    sample_batched,
    sample_indices,
    snapshot_timesteps,
    to_uint8,
)
from ddpm_core.schedule import make_betas
from tests.helpers import TinyEps

T = 12
SHAPE = (2, 4, 4)


def _diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", T, 1e-4, 0.1))


def test_uint8_round_trip_and_clamp() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(levels)), levels)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]
    with pytest.raises(ValueError, match="x"):
        from_uint8(torch.zeros(2))
    with pytest.raises(ValueError, match="x"):
        to_uint8(levels)


def test_batch_composition_invariance() -> None:
    d, model = _diffusion(), TinyEps()
    full = sample_indices(model, d, [0, 1, 2, 3], seed=11, shape=SHAPE)
    assert full.dtype == torch.uint8 and full.shape == (4, *SHAPE)
    assert torch.equal(full, sample_indices(model, d, [0, 1, 2, 3], seed=11, shape=SHAPE))

    # float level: image i's sample is the same in any batch, up to batched-conv rounding
    def floats(idx: list[int]) -> torch.Tensor:
        noise = CounterNoise(11, idx, torch.device("cpu"))
        return reverse_loop(model, d, Ancestral(), noise((len(idx), *SHAPE)), noise).sample

    f_all = floats([0, 1, 2, 3])
    assert torch.allclose(floats([2]), f_all[2:3], atol=1e-5)
    assert torch.allclose(floats([3, 1]), f_all[[3, 1]], atol=1e-5)
    part = sample_indices(model, d, [3, 1], seed=11, shape=SHAPE)
    assert (part.int() - full[[3, 1]].int()).abs().max() <= 1
    other = sample_indices(model, d, [0, 1, 2, 3], seed=12, shape=SHAPE)
    assert not torch.equal(full, other)


def test_progressive_frames_end_at_the_sample() -> None:
    d, model = _diffusion(), TinyEps()
    x, frames = sample_indices(model, d, [5, 6], seed=0, shape=SHAPE, x0_every=4)
    labels = snapshot_timesteps(d, 4)
    assert labels == [8, 4, 0] and frames.shape == (3, 2, *SHAPE) and frames.dtype == torch.uint8
    assert torch.equal(frames[-1], x)  # at t = 0 the mean is x0_pred and no noise is added
    assert torch.equal(x, sample_indices(model, d, [5, 6], seed=0, shape=SHAPE))
    r = d.respaced(3)
    assert snapshot_timesteps(r, 2) == [6, 0]


def test_bad_input() -> None:
    d, model = _diffusion(), TinyEps()
    with pytest.raises(ValueError, match="indices"):
        sample_indices(model, d, [], seed=0, shape=SHAPE)
    with pytest.raises(ValueError, match="shape"):
        sample_indices(model, d, [0], seed=0, shape=(2, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x0_every"):
        sample_indices(model, d, [0], seed=0, shape=SHAPE, x0_every=0)


def test_interpolation_ends_match_their_images_and_share_the_noise() -> None:
    d, model = _diffusion(), TinyEps()
    g = torch.Generator().manual_seed(4)
    pair = torch.rand(2, *SHAPE, generator=g) * 2 - 1
    rows = interpolate(model, d, pair, t=5, lambdas=[0.0, 0.5, 1.0], seed=3)
    assert rows.shape == (3, *SHAPE) and rows.dtype == torch.uint8
    assert torch.equal(rows, interpolate(model, d, pair, t=5, lambdas=[0.0, 0.5, 1.0], seed=3))
    # lambda = 0 and 1 decode each image alone (the shared reverse noise does not depend on L)
    alone = interpolate(model, d, pair, t=5, lambdas=[1.0], seed=3)
    assert torch.equal(alone[0], rows[2])
    assert not torch.equal(rows[1], rows[0]) and not torch.equal(rows[1], rows[2])
    assert not torch.equal(rows, interpolate(model, d, pair, t=5, lambdas=[0.0, 0.5, 1.0], seed=4))
    with pytest.raises(ValueError, match="lambdas"):
        interpolate(model, d, pair, t=5, lambdas=[1.5], seed=3)
    with pytest.raises(ValueError, match="x0_pair"):
        interpolate(model, d, pair[:1], t=5, lambdas=[0.5], seed=3)


def test_ddim_sampler_is_per_image_and_deterministic_at_eta_0() -> None:
    """sampler="ddim": image i depends only on (seed, i); eta = 0 draws no per-step noise, so
    the images depend only on x_T; eta = 1 with the same keys differs."""
    d, model = _diffusion().respaced(3), TinyEps()
    ddim = make_sampler("ddim")
    full = sample_indices(model, d, [0, 1, 2], seed=5, shape=SHAPE, sampler=ddim)
    one = sample_indices(model, d, [2], seed=5, shape=SHAPE, sampler=ddim)
    assert full.dtype == torch.uint8 and torch.equal(full[2:], one)
    x_t = CounterNoise(5, [0, 1, 2], torch.device("cpu"))((3, *SHAPE))
    zeros = iter([torch.zeros_like(x_t)] * d.num_timesteps)
    by_hand = to_uint8(reverse_loop(model, d, DDIM(0.0), x_t, lambda s: next(zeros)).sample)
    assert torch.equal(full, by_hand)
    noisy = sample_indices(model, d, [0, 1, 2], seed=5, shape=SHAPE, sampler=DDIM(1.0))
    assert not torch.equal(full, noisy)
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("euler")
    # DDIM has the x̂0 trace too: the last frame (t = 0) is the sample
    x, frames = sample_indices(model, d, [0, 1, 2], seed=5, shape=SHAPE, sampler=ddim, x0_every=2)
    assert torch.equal(x, full) and frames.shape == (2, 3, *SHAPE) and torch.equal(frames[-1], x)


@pytest.mark.parametrize("sampler", [Ancestral(), DDIM(0.0), DDIM(1.0)])
def test_sample_batched_equals_one_batch_for_any_batch_size(sampler: object) -> None:
    """The one batched helper: batch size changes nothing in uint8 (image i keyed by (seed, i))."""
    d, model = _diffusion().respaced(2), TinyEps()
    idx = [4, 0, 7, 1, 2]
    one = sample_indices(model, d, idx, seed=3, shape=SHAPE, sampler=sampler)  # type: ignore[arg-type]
    for bs in (1, 2, 5, 9):
        got = sample_batched(model, d, idx, 3, SHAPE, bs, sampler=sampler)  # type: ignore[arg-type]
        assert got.shape == (5, *SHAPE) and (got.int() - one.int()).abs().max() <= 1
    x, frames = sample_batched(model, d, idx, 3, SHAPE, 2, x0_every=3)
    x1, frames1 = sample_indices(model, d, idx, seed=3, shape=SHAPE, x0_every=3)
    assert frames.shape == frames1.shape == (2, 5, *SHAPE)
    assert (frames.int() - frames1.int()).abs().max() <= 1
    assert [list(b) for b in batches(range(5), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="batch_size"):
        batches([0], 0)
