"""normal_kl, the approximate normal CDF and the discretized Gaussian decoder (paper eq. 13)."""

from __future__ import annotations

import math

import torch

from ddpm_core.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)


def test_normal_kl_identical_is_zero_and_matches_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 3, generator=g, dtype=torch.float64)
    lv = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.all(normal_kl(m, lv, m, lv).abs() < 1e-12)
    m2 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    lv2 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    kl = normal_kl(m, lv, m2, lv2)
    s1, s2 = lv.exp().sqrt(), lv2.exp().sqrt()
    want = torch.log(s2 / s1) + (s1**2 + (m - m2) ** 2) / (2 * s2**2) - 0.5
    assert torch.allclose(kl, want, atol=1e-12)
    assert torch.all(kl > 0)


def test_approx_cdf_close_to_erf() -> None:
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 1e-3


def _all_bins(mean: float, log_scale: float) -> torch.Tensor:
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1.0).reshape(1, 1, 16, 16)
    means = torch.full_like(x, mean)
    return discretized_gaussian_log_likelihood(x, means, torch.full_like(x, log_scale))


def test_decoder_probabilities_over_256_bins_sum_to_one() -> None:
    for mean, log_scale in [(0.0, math.log(0.1)), (0.93, math.log(0.007)), (-1.0, 0.0)]:
        p = _all_bins(mean, log_scale).exp()
        assert abs(float(p.sum()) - 1.0) < 1e-6, (mean, log_scale)


def test_decoder_edges_integrate_to_infinity() -> None:
    lp = _all_bins(0.0, math.log(0.5)).flatten()
    inv = 1 / 0.5
    want_0 = approx_standard_normal_cdf(torch.tensor(inv * (-1.0 + 1 / 255), dtype=torch.float64))
    want_255 = 1 - approx_standard_normal_cdf(torch.tensor(inv * (1.0 - 1 / 255)))
    assert torch.allclose(lp[0].exp(), want_0)
    assert torch.allclose(lp[255].exp(), want_255.double(), atol=1e-7)
    interior = approx_standard_normal_cdf(torch.tensor(inv * (1 / 127.5 - 1 + 1 / 255))) - (
        approx_standard_normal_cdf(torch.tensor(inv * (1 / 127.5 - 1 - 1 / 255)))
    )
    assert torch.allclose(lp[1].exp(), interior.double(), atol=1e-7)
