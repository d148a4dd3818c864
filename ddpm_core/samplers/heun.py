"""Heun's second-order sampler: Karras et al. 2022 (EDM), Algorithm 1 (not the paper's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ddpm_core.samplers.base import ReverseSampler, Step, StepOutput


@dataclass(frozen=True)
class Heun(ReverseSampler):
    """The deterministic sampler of Karras et al. 2022, Algorithm 1 (sigma(t) = t, s(t) = 1; no
    churn), on the diffusion's own discrete noise levels sigma_i = sqrt((1 - a_bar) / a_bar):

    in the variable x = x_t / sqrt(a_bar) (so D(x; sigma) = x̂0),
        d_i = (x_i - D(x_i; sigma_i)) / sigma_i                       (line 4)
        x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i                   (line 5, Euler)
        d'_i = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}      (line 7, if sigma_{i+1} > 0)
        x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2       (line 8)
    Two network calls a step (one at the last, to sigma = 0); no state.
    """

    title = "Heun"
    reference = "Karras et al. 2022, Algorithm 1"
    calls_per_step = 2

    clip_denoised: bool = False  # D = x̂0 clipped to [-1, 1] (diffusers: clip_sample)

    def step(self, s: Step, x_t: Tensor, state: Any) -> StepOutput:
        ab, ab_next = s.alpha_bar()
        sigma, sigma_next = math.sqrt((1.0 - ab) / ab), math.sqrt((1.0 - ab_next) / ab_next)
        x = x_t / math.sqrt(ab)
        x0 = s.pred_x0(x_t, self.clip_denoised)  # D(x_i; sigma_i)
        d = (x - x0) / sigma
        if sigma_next == 0.0:  # the last step: Euler to sigma = 0 lands on D
            return StepOutput(x + (sigma_next - sigma) * d, x0)
        x_next = x + (sigma_next - sigma) * d
        x0_next = s.pred_x0(x_next * math.sqrt(ab_next), self.clip_denoised, s.i - 1)
        d_next = (x_next - x0_next) / sigma_next
        x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        return StepOutput(x_next * math.sqrt(ab_next), x0)
