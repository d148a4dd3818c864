"""DDIM: Song et al. 2021, eq. 12 (not the paper's sampler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddpm_core.diffusion import extract
from ddpm_core.samplers.base import ReverseSampler, Step, StepOutput, nonzero


@dataclass(frozen=True)
class DDIM(ReverseSampler):
    """Song et al. 2021, eq. 12 (NOT the paper's sampler):

    x_{t-1} = sqrt(a_bar_{t-1}) x̂0 + sqrt(1 - a_bar_{t-1} - s_t^2) eps + s_t z with
    s_t = eta sqrt((1 - a_bar_{t-1}) / (1 - a_bar_t)) sqrt(1 - a_bar_t / a_bar_{t-1});
    eta = 1 is ancestral sampling with sigma_t^2 = beta_tilde_t, eta = 0 is deterministic (and
    draws no noise).
    """

    title = "DDIM"
    reference = "Song et al. 2021"

    eta: float = 0.0
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        ok = isinstance(self.eta, int | float) and not isinstance(self.eta, bool)
        if not (ok and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta: got {self.eta!r}, expected a number in [0, 1]")

    def step(self, s: Step, x_t: Tensor, state: Any) -> StepOutput:
        t, d = s.t(), s.diffusion
        pred_x0 = d.p_from_output(s.output(x_t), x_t, t, self.clip_denoised)["pred_x0"]
        eps = d.predict_eps_from_x0(x_t, t, pred_x0)  # consistent with the clipped x̂0
        c = d.coefs(x_t)
        ab = extract(c.alphas_cumprod, t, x_t.shape)
        ab_prev = extract(c.alphas_cumprod_prev, t, x_t.shape)
        sigma = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        mean = torch.sqrt(ab_prev) * pred_x0 + torch.sqrt(1 - ab_prev - sigma**2) * eps
        if self.eta == 0:
            return StepOutput(mean, pred_x0)
        return StepOutput(mean + nonzero(t, x_t) * sigma * s.noise(), pred_x0)
