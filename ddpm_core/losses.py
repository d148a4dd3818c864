"""Gaussian KL and the discretized Gaussian decoder likelihood (paper eq. 13; official utils.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

BIN_HALF_WIDTH = 1.0 / 255.0  # data in [-1, 1] with 256 levels: bins of width 2/255
EDGE = 0.999  # x < -EDGE is pixel 0 (integrate from -inf), x > EDGE is pixel 255 (to +inf)
LOG_FLOOR = 1e-12


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasts)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Phi(x) ~= 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as in the official code."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) elementwise for x in [-1, 1] on the 256-level grid, decoder of eq. 13 (nats).

    x, means, log_scales: (B, C, H, W) (log_scales may broadcast). Edge bins integrate to +-inf.
    """
    if x.shape != means.shape:
        raise ValueError(f"means: shape {tuple(means.shape)} != x shape {tuple(x.shape)}")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + BIN_HALF_WIDTH))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - BIN_HALF_WIDTH))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=LOG_FLOOR))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=LOG_FLOOR))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=LOG_FLOOR))
    log_probs = torch.where(
        x < -EDGE,
        log_cdf_plus,
        torch.where(x > EDGE, log_one_minus_cdf_min, log_cdf_delta),
    )
    assert log_probs.shape == x.shape
    return log_probs
