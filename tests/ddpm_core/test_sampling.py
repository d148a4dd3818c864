"""Per-image deterministic sampling, uint8 conversion and progressive frames."""

from __future__ import annotations

import pytest
import torch

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.rng import CounterNoise, mix_seed
from ddpm_core.samplers.ancestral import Ancestral
from ddpm_core.samplers.ddim import DDIM
from ddpm_core.samplers.loop import reverse_loop
from ddpm_core.samplers.registry import make_sampler
from ddpm_core.sampling import (
    batches,
    from_uint8,
    interpolate,
    sample_batched,
    sample_indices,
    shared_latent,
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


class GaussianOracle(torch.nn.Module):
    """The exact eps_theta for data x_0 ~ N(0, s^2 I): E[eps | x_t] =
    sqrt(1 - a_bar_t) x_t / (a_bar_t s^2 + 1 - a_bar_t), so p_theta(x_0 | x_t) has a spread
    that grows with t (the posterior variance of x_0 given x_t does)."""

    def __init__(self, d: GaussianDiffusion, s: float = 0.3) -> None:
        super().__init__()
        self.a_bar = torch.as_tensor(d.alphas_cumprod, dtype=torch.float32)
        self.s2 = s * s

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.a_bar[t].reshape(-1, 1, 1, 1)
        return torch.sqrt(1 - a) * x / (a * self.s2 + 1 - a)


def test_shared_latent_draws_share_the_frozen_x_t_and_differ() -> None:
    """Fig. 7: each row's x_t is the one trajectory frozen at t (x_T at t = T), the draws from it
    differ from each other, and everything follows from the seed alone."""
    d, model = _diffusion(), TinyEps()
    ts = [T, 6, 1]
    out = shared_latent(model, d, ts, draws=3, images=2, seed=5, shape=SHAPE)
    assert out.t == (T, 6, 1)
    assert out.x_t.shape == (2, 3, *SHAPE) and out.x0.shape == (2, 3, 3, *SHAPE)
    again = shared_latent(model, d, ts, draws=3, images=2, seed=5, shape=SHAPE)
    assert torch.equal(again.x_t, out.x_t) and torch.equal(again.x0, out.x0)
    # the frozen x_t: the trajectory of image n (its own stream) stopped at t
    traj = CounterNoise(mix_seed(5, 0), [0, 1], torch.device("cpu"))
    x_T = traj((2, *SHAPE))
    assert torch.equal(out.x_t[:, 0], x_T)
    x_6 = reverse_loop(model, d, Ancestral(), x_T, traj, t_start=T - 1, t_end=6).sample
    assert torch.equal(out.x_t[:, 1], x_6)
    # a row's x_t and draws depend on neither the other rows nor the number of draws
    alone = shared_latent(model, d, [6], draws=5, images=2, seed=5, shape=SHAPE)
    assert torch.equal(alone.x_t[:, 0], x_6) and torch.equal(alone.x0[:, 0, :3], out.x0[:, 1])
    for r in (0, 1):  # different noise draws from the same x_t give different x̂0
        for j, k in ((0, 1), (0, 2), (1, 2)):
            assert not torch.equal(out.x0[0, r, j], out.x0[0, r, k])
    # t = 1: the last step adds no noise, so every draw from the same x_t is the same x̂0 (a
    # check that the draws start from one x_t)
    last = out.x0[:, 2]  # (N, K, C, H, W) at t = 1
    assert torch.equal(last[:, 0], last[:, 1]) and torch.equal(last[:, 0], last[:, 2])
    assert not torch.equal(out.x_t[0], out.x_t[1])  # two images, two trajectories
    other = shared_latent(model, d, ts, draws=3, images=2, seed=6, shape=SHAPE)
    assert not torch.equal(other.x0, out.x0)


def test_shared_latent_spread_grows_with_t() -> None:
    """With the exact model of Gaussian data, the spread of x̂0 over draws from one x_t is
    monotone in t: a small t keeps all but details, a large t only coarse attributes."""
    d = GaussianDiffusion(make_betas("linear", 50, 1e-4, 0.2), var_type="fixedsmall")
    ts = [1, 5, 15, 30, 50]
    out = shared_latent(GaussianOracle(d), d, ts, draws=32, images=2, seed=0, shape=(1, 8, 8))
    spread = out.x0.std(dim=2).mean(dim=(0, 2, 3, 4))  # (R,): std over draws, mean over pixels
    assert spread[0] == 0  # t = 1: no noise left to draw
    assert all(a < b for a, b in zip(spread[:-1], spread[1:], strict=True)), spread.tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ts": []}, "ts"),
        ({"ts": [0]}, r"ts: got \[0\], expected distinct ints in 1..T=12"),
        ({"ts": [T + 1]}, "ts"),
        ({"ts": [3, 3]}, "ts"),
        ({"draws": 0}, "draws"),
        ({"images": 0}, "images"),
    ],
)
def test_shared_latent_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"ts": [3], "draws": 2, "images": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        shared_latent(TinyEps(), _diffusion(), seed=0, shape=SHAPE, **args)


def test_reverse_loop_stops_at_t_end() -> None:
    """t_end = k runs the steps T-1 .. k (T - k model calls); continuing from k - 1 is the same
    as one run to 0 on the same noise stream."""
    d, model = _diffusion(), TinyEps()
    noise = CounterNoise(1, [0], torch.device("cpu"))
    x_T = noise((1, *SHAPE))
    part = reverse_loop(model, d, Ancestral(), x_T, noise, t_end=4)
    assert [int(t) for t in model.calls] == list(range(T - 1, 3, -1))
    rest = reverse_loop(model, d, Ancestral(), part.sample, noise, t_start=3)
    noise2 = CounterNoise(1, [0], torch.device("cpu"))
    whole = reverse_loop(model, d, Ancestral(), noise2((1, *SHAPE)), noise2)
    assert torch.equal(rest.sample, whole.sample)
    with pytest.raises(ValueError, match="t_end"):
        reverse_loop(model, d, Ancestral(), x_T, noise, t_start=3, t_end=4)
