"""Ancestral sampling: Algorithm 2 of Ho et al. 2020 (the paper's sampler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddpm_core.samplers.base import ReverseSampler, Step, StepOutput, nonzero


@dataclass(frozen=True)
class Ancestral(ReverseSampler):
    """Algorithm 2, line 4: x_{t-1} = mu_theta(x_t, t) + 1[t > 0] sigma_t z (the paper)."""

    title = "ancestral"
    reference = "paper Algorithm 2"
    paper = True

    clip_denoised: bool = True  # x̂0 clipped to [-1, 1] before eq. 7 (official sampler)

    def step(self, s: Step, x_t: Tensor, state: Any) -> StepOutput:
        t = s.t()
        p = s.diffusion.p_from_output(s.output(x_t), x_t, t, self.clip_denoised)
        prev = p["mean"] + nonzero(t, x_t) * torch.exp(0.5 * p["log_variance"]) * s.noise()
        return StepOutput(prev, p["pred_x0"])
