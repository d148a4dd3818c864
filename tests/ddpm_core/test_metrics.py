"""Frechet distance against an independent eigen-based computation; the rate-distortion curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.metrics import frechet_distance, rate_distortion
from ddpm_core.schedule import make_betas


def _random_stats(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _fid_eig(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), symmetric float64 eigensolver."""
    w, v = np.linalg.eigh(s1)
    s1h = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(s1h @ s2 @ s1h), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_frechet_distance_matches_independent_computation() -> None:
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 16, 200)
    mu2, s2 = _random_stats(rng, 16, 300)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_fid_eig(mu1, s1, mu2, s2), rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    assert got == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_frechet_distance_diagonal_closed_form() -> None:
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    want = 5.0 + float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_bad_input() -> None:
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(mu, np.eye(2), mu, s)
    with pytest.raises(ValueError, match="mu1/mu2"):
        frechet_distance(np.zeros(2), np.eye(2), mu, s)
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(mu, s, np.array([0.0, math.nan, 0.0]), s)


def test_rate_distortion_formula() -> None:
    rng = np.random.default_rng(1)
    n, t_steps = 5, 7
    terms, prior, mse = rng.random((n, t_steps)), rng.random(n), rng.random((n, t_steps))
    rd = rate_distortion(terms, prior, mse)
    for t in range(t_steps):
        want = np.mean(
            [prior[i] + sum(terms[i, s] for s in range(t + 1, t_steps)) for i in range(n)]
        )
        assert rd["rate"][t] == pytest.approx(want, rel=1e-12)
        assert rd["distortion_rmse"][t] == pytest.approx(127.5 * math.sqrt(mse[:, t].mean()))
    assert rd["rate"][-1] == pytest.approx(prior.mean())
    with pytest.raises(ValueError, match="prior_bpd/mse"):
        rate_distortion(terms, prior[:2], mse)
    with pytest.raises(ValueError, match="terms_bpd"):
        rate_distortion(terms[0], prior, mse)
    with pytest.raises(ValueError, match="mse"):
        rate_distortion(terms, prior, np.full_like(mse, np.nan))


def test_rate_distortion_monotone_for_gaussian_data_and_mmse_denoiser() -> None:
    """Data x0 ~ N(0, s^2): E[x0 | x_t] = sqrt(ab) s^2 x_t / (ab s^2 + 1 - ab) is exact."""
    betas = make_betas("linear", 6, 1e-3, 0.5)
    d = GaussianDiffusion(betas, mean_type="x0", var_type="fixedsmall")
    ab = torch.tensor(np.cumprod(1 - betas), dtype=torch.float64)
    s2 = 0.09

    def mmse(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].reshape(-1, 1, 1, 1)
        return a.sqrt() * s2 * x_t / (a * s2 + 1 - a)

    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(256, 1, 16, 16, generator=g, dtype=torch.float64) * math.sqrt(s2)).clamp(
        -1, 1
    )
    out = d.calc_bpd_loop(mmse, x0, generator=g)
    rd = rate_distortion(out["terms_bpd"].numpy(), out["prior_bpd"].numpy(), out["mse"].numpy())
    assert np.all(np.diff(rd["rate"]) < 0)  # more reverse steps (smaller t): more bits
    assert np.all(np.diff(rd["distortion_rmse"]) > 0)  # ... and less distortion
    expected = 127.5 * np.sqrt(s2 * (1 - ab.numpy()) / (ab.numpy() * s2 + 1 - ab.numpy()))
    assert np.allclose(rd["distortion_rmse"], expected, rtol=0.02)
