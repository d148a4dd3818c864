"""Bits/dim over Ray actors, worker-count independence, and the rate-distortion curve."""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_core.config import DiffusionConfig
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.rng import CounterNoise, SeedPurpose, mix_seed
from ddpm_core.sampling import from_uint8
from pipelines.config import Params
from pipelines.evaluate import nll


class EmpiricalBayesEps(torch.nn.Module):
    """The Bayes-optimal eps-predictor for data uniform over K images (an oracle, no training).

    x0_hat(x_t) = sum_k softmax_k(-||x_t - sqrt(abar_t) x_k||^2 / (2 (1 - abar_t))) x_k, and
    eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) (eq. 15 inverted).
    """

    def __init__(self, images: torch.Tensor, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.register_buffer("data", from_uint8(images).flatten(1))  # (K, D)
        abar = GaussianDiffusion.from_config(cfg).alphas_cumprod
        self.register_buffer("abar", torch.as_tensor(abar, dtype=torch.float32))  # (T,)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t][:, None]  # (B, 1)
        x, data = x_t.flatten(1), self.data  # (B, D), (K, D)
        d2 = (  # ||x_b - sqrt(abar_b) x_k||^2, (B, K)
            (x**2).sum(1, keepdim=True)
            - 2 * abar.sqrt() * (x @ data.T)
            + abar * (data**2).sum(1)[None]
        )
        w = torch.softmax(-d2 / (2 * (1 - abar)), dim=1)
        x0_hat = w @ data  # (B, D)
        return ((x - abar.sqrt() * x0_hat) / (1 - abar).sqrt()).reshape(x_t.shape)


@pytest.fixture
def setup(make_params: Callable[..., Params]) -> tuple[torch.Tensor, DiffusionConfig]:
    # T = 20 with a schedule that ends near pure noise (abar_T ~ 2e-3), so every t matters
    params = make_params({"diffusion.beta_start": 0.01, "diffusion.beta_end": 0.5})
    from sklearn.datasets import load_digits

    digits = load_digits().images[:6]  # (6, 8, 8), 0..16: real, mutually similar images
    images = torch.from_numpy((digits * 255 / 16).round().astype(np.uint8))[:, None]
    return images, params.diffusion


def test_nll_draws_its_own_noise_not_the_sample_stages(
    setup: tuple[torch.Tensor, DiffusionConfig],
) -> None:
    """NLL's q(x_t | x_0) noise of image i comes from (mix_seed(seed, NLL), i), a stream of its
    own: not the (seed, i) stream behind sample i of the sample stage."""
    images, cfg = setup
    model, d = EmpiricalBayesEps(images[:2], cfg), GaussianDiffusion.from_config(cfg)
    x0 = from_uint8(images[:2])
    got = nll.bpd_chunk(model, d, images[:2], seed=3, first=4)["terms_bpd"]

    def bound(key: int) -> np.ndarray:
        noise = CounterNoise(key, [4, 5], torch.device("cpu"))
        return d.calc_bpd_loop(model, x0, noise_fn=noise)["terms_bpd"].double().numpy()

    np.testing.assert_allclose(got, bound(mix_seed(3, SeedPurpose.NLL)), rtol=1e-6)
    assert not np.allclose(got, bound(3))  # the sample stage's keys


def _local(images: torch.Tensor, cfg: DiffusionConfig, chunk: int, model: torch.nn.Module):
    diffusion = GaussianDiffusion.from_config(cfg)
    parts = {
        i: nll.bpd_chunk(model, diffusion, c, seed=3, first=i * chunk)
        for i, c in enumerate(torch.split(images, chunk))
    }
    return nll.gather_chunks(parts)


def test_bpd_of_an_image_does_not_depend_on_the_chunking(
    setup: tuple[torch.Tensor, DiffusionConfig],
) -> None:
    """Image i's noise is keyed by (seed, i): chunks of 2 or 3 give the same bound per image."""
    images, cfg = setup
    model = EmpiricalBayesEps(images, cfg)
    two, three = _local(images, cfg, 2, model), _local(images, cfg, 3, model)
    np.testing.assert_allclose(two.total_bpd, three.total_bpd, rtol=1e-5)
    np.testing.assert_allclose(two.terms_bpd, three.terms_bpd, rtol=1e-4, atol=1e-6)
    other_seed = nll.bpd_chunk(model, GaussianDiffusion.from_config(cfg), images, seed=4, first=0)
    assert not np.allclose(other_seed["terms_bpd"], two.terms_bpd)


def test_oracle_bound_beats_a_null_model(setup: tuple[torch.Tensor, DiffusionConfig]) -> None:
    images, cfg = setup
    oracle = _local(images, cfg, 4, EmpiricalBayesEps(images, cfg))
    null = _local(images, cfg, 4, _ZeroEps())
    T = cfg.T
    assert oracle.terms_bpd.shape == oracle.mse.shape == (6, T)
    np.testing.assert_allclose(
        oracle.total_bpd, oracle.terms_bpd.sum(1) + oracle.prior_bpd, rtol=1e-6
    )
    assert oracle.total_bpd.mean() < null.total_bpd.mean() - 1.0  # bits/dim
    assert oracle.mse[:, 0].max() < 1e-6  # x_1 identifies the image: x0_hat exact
    s = oracle.summary()
    assert s.bpd == pytest.approx(oracle.total_bpd.mean()) and s.images == 6
    assert s.sem == pytest.approx(oracle.total_bpd.std(ddof=1) / math.sqrt(6))
    assert s.metrics()["nll_bpd"] == s.bpd


class _ZeroEps(torch.nn.Module):
    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)


def test_rate_distortion_is_monotone(setup: tuple[torch.Tensor, DiffusionConfig]) -> None:
    images, cfg = setup
    model = EmpiricalBayesEps(images, cfg)
    rd = _local(images.repeat(8, 1, 1, 1), cfg, 16, model).rate_distortion()  # 48 draws
    steps, rate, dist = rd["reverse_step"], rd["rate_bpd"], rd["distortion_rmse"]
    assert list(steps) == list(range(cfg.T, 0, -1))
    order = np.argsort(steps)  # by reverse steps taken, 1..T
    assert np.all(np.diff(rate[order]) >= 0)  # more steps received: more bits
    # ... and less distortion (exactly so in expectation; fresh noise per t jitters the plateau)
    assert np.all(np.diff(dist[order]) <= 0.05 * dist.max())
    assert dist[order][-1] < 0.01 and dist[order][0] > 10  # RMSE on [0, 255]


@pytest.mark.ray
def test_bpd_over_ray_independent_of_worker_count(
    setup: tuple[torch.Tensor, DiffusionConfig], local_ray: object
) -> None:
    images, cfg = setup
    model_fn = functools.partial(EmpiricalBayesEps, images, cfg)
    run = functools.partial(
        nll.evaluate_bpd, images, model_fn, cfg, seed=3, chunk_size=2, cpus_per_worker=0.5
    )
    one, two = run(num_workers=1), run(num_workers=2)
    for key in nll.KEYS:
        np.testing.assert_array_equal(getattr(one, key), getattr(two, key))
    local = _local(images, cfg, 2, EmpiricalBayesEps(images, cfg))  # same chunks, in-process
    np.testing.assert_allclose(one.total_bpd, local.total_bpd, rtol=1e-6)
    assert one.total_bpd.shape == (6,)


def _first_x_t(images: torch.Tensor, cfg: DiffusionConfig, seed: int, size: int) -> torch.Tensor:
    """x_{T-1} of every chunk as `bpd_chunk` draws it (the loop's first x_t): (K, size, C, H, W).

    Computed here from NLL's counter-based noise (draw 0 of image i's stream), so a model that
    sees an x_t at t = T-1 can tell which chunk it is working on."""
    diffusion = GaussianDiffusion.from_config(cfg)
    t = torch.full((size,), cfg.T - 1, dtype=torch.long)
    return torch.stack([
        diffusion.q_sample(from_uint8(c), t, CounterNoise(mix_seed(seed, SeedPurpose.NLL),
                                                          range(k * size, k * size + size),
                                                          torch.device("cpu"))(tuple(c.shape)))
        for k, c in enumerate(torch.split(images, size))
    ])  # fmt: skip


class _SlowEps(EmpiricalBayesEps):
    """The oracle, slowed down, marking its process busy and logging each chunk it starts
    (`<pid>.chunks`, one chunk number a line): a target for a real kill mid-chunk."""

    def __init__(
        self, images: torch.Tensor, cfg: DiffusionConfig, folder: str, starts: torch.Tensor
    ) -> None:
        super().__init__(images, cfg)
        self.busy = Path(folder) / f"{os.getpid()}.busy"
        self.log = Path(folder) / f"{os.getpid()}.chunks"
        self.starts, self.last_t = starts, len(self.abar) - 1

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if int(t[0]) == self.last_t:  # a chunk's first forward: which chunk is it?
            dist = (x_t[None] - self.starts).flatten(1).norm(dim=1)  # (K,)
            with self.log.open("a") as f:
                f.write(f"{int(dist.argmin())}\n")
        self.busy.touch()
        time.sleep(0.05)
        return super().forward(x_t, t)


def _chunks_started(folder: Path, pid: int | None = None) -> list[int]:
    logs = [folder / f"{pid}.chunks"] if pid is not None else sorted(folder.glob("*.chunks"))
    return [int(line) for log in logs for line in log.read_text().split()]


@pytest.mark.ray
def test_bpd_actor_killed_mid_chunk_restarts_and_gives_the_same_result(
    setup: tuple[torch.Tensor, DiffusionConfig], local_ray: object, tmp_path: Path
) -> None:
    """3 chunks on 2 actors; the first actor process seen working is SIGKILLed: its chunk in
    flight runs a second time (on the restarted actor), every other chunk exactly once."""
    images, cfg = setup
    clean = nll.evaluate_bpd(
        images,
        functools.partial(EmpiricalBayesEps, images, cfg),
        cfg,
        seed=3,
        chunk_size=2,
        num_workers=2,
        cpus_per_worker=0.5,
    )
    killed: list[int] = []

    def kill_first_busy_actor() -> None:
        deadline = time.monotonic() + 120  # bounds the wait only
        while not killed and time.monotonic() < deadline:
            for busy in tmp_path.glob("*.busy"):
                pid = int(busy.name.split(".")[0])
                os.kill(pid, signal.SIGKILL)  # the actor's process, mid-chunk
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_busy_actor, daemon=True)
    killer.start()
    starts = _first_x_t(images, cfg, seed=3, size=2)
    slow = functools.partial(_SlowEps, images, cfg, str(tmp_path), starts)
    result = nll.evaluate_bpd(
        images, slow, cfg, seed=3, chunk_size=2, num_workers=2, cpus_per_worker=0.5
    )
    killer.join(timeout=5)
    assert killed, "no actor was killed"
    in_flight = _chunks_started(tmp_path, killed[0])[-1]  # the killed process's last chunk
    ran = _chunks_started(tmp_path)
    assert sorted(ran) == sorted([0, 1, 2, in_flight]), ran  # only that chunk ran twice
    for key in nll.KEYS:
        np.testing.assert_array_equal(getattr(result, key), getattr(clean, key))
