"""DPM-Solver++(2M): Lu et al. 2022, Algorithm 2, multistep, data prediction (not the paper's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ddpm_core.samplers.base import ReverseSampler, Step, StepOutput


def log_snr(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(a_bar / (1 - a_bar)) (half the log-SNR)."""
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


@dataclass(frozen=True)
class DpmSolverPP2M(ReverseSampler):
    """The second-order multistep solver of the diffusion ODE in data prediction (x̂0):

    with lambda = log(alpha / sigma), alpha = sqrt(a_bar), sigma = sqrt(1 - a_bar), h_i the
    lambda step and r_i = h_{i-1} / h_i (Lu et al. 2022, Algorithm 2),
        D_i = (1 + 1 / (2 r_i)) x̂0_i - 1 / (2 r_i) x̂0_{i-1}     (x̂0_i alone at the first step)
        x_{i} = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i.
    One network call a step; the state is the last x̂0 and its lambda. The last step goes to
    a_bar = 1 (sigma = 0), where the first-order update is x̂0 itself.
    """

    title = "DPM-Solver++(2M)"
    reference = "Lu et al. 2022, Algorithm 2"

    clip_denoised: bool = False  # x̂0 clipped to [-1, 1] (diffusers: thresholding at max 1)

    def step(self, s: Step, x_t: Tensor, state: Any) -> StepOutput:
        x0 = s.pred_x0(x_t, self.clip_denoised)  # x̂0_i, data prediction
        ab, ab_next = s.alpha_bar()
        if ab_next >= 1.0:  # to sigma = 0: the first-order step lands on x̂0
            return StepOutput(x0, x0)
        lam, lam_next = log_snr(ab), log_snr(ab_next)
        h = lam_next - lam
        d = x0
        if state is not None:  # second order from the previous x̂0 (multistep)
            x0_last, lam_last = state
            half_inv_r = 0.5 * h / (lam - lam_last)  # 1 / (2 r)
            d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_last
        ratio = math.sqrt((1.0 - ab_next) / (1.0 - ab))  # sigma_i / sigma_{i-1}
        prev = ratio * x_t - math.sqrt(ab_next) * math.expm1(-h) * d
        return StepOutput(prev, x0, (x0, lam))
