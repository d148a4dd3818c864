"""The sampler interface: what the loop hands a sampler at each step (`Step`) and what it returns.

A sampler is a frozen dataclass deriving from `ReverseSampler`; its fields are its options (the
params `sample.sampler_options.<name>`, validated from the field types by `registry`). At step i
it maps x_t to x_{t-1} and may call the network any number of times (`Step.output`, at this
step's t or another index of the same diffusion), draw noise from each image's own stream
(`Step.noise`), and carry a state of its own to the next step (multistep solvers keep earlier
x̂0). `t` indexes the given `GaussianDiffusion`'s tables: a strided schedule is
`diffusion.respaced(k)`, whose `alphas_cumprod_prev[i]` is ᾱ at the next (smaller) timestep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model, NoiseFn


@dataclass(frozen=True)
class Step:
    """Reverse step i of one pass (x_{t_i} -> x_{t_{i-1}}), as the loop hands it to a sampler."""

    diffusion: GaussianDiffusion
    model: Model
    i: int  # this diffusion's index of t; the pass goes on to i - 1 (i = 0: to x_0)
    noise_fn: NoiseFn
    shape: tuple[int, ...]  # (B, C, H, W) of x
    device: torch.device

    def t(self, i: int | None = None) -> Tensor:
        """(B,) int64: index i (default this step's) for every image."""
        return torch.full((self.shape[0],), self.i if i is None else i, device=self.device,
                          dtype=torch.long)  # fmt: skip

    def output(self, x: Tensor, i: int | None = None) -> Tensor:
        """The network at (x, t_i) (default this step's i): (B, C, H, W), 2C with `learned`."""
        return self.diffusion.model_output(self.model, x, self.t(i))

    def pred_x0(self, x: Tensor, clip: bool, i: int | None = None) -> Tensor:
        """x̂0 = D(x; t_i) from one network call (eq. 15 for eps), clipped to [-1, 1] if `clip`."""
        t = self.t(i)
        return self.diffusion.p_from_output(self.output(x, i), x, t, clip)["pred_x0"]

    def noise(self) -> Tensor:
        """z ~ N(0, I) of x's shape: the next draw of each image's own stream."""
        return self.noise_fn(self.shape)

    def alpha_bar(self) -> tuple[float, float]:
        """(ᾱ at t_i, ᾱ at t_{i-1}) as float64 host numbers (ᾱ = 1 past the last step)."""
        d = self.diffusion
        return float(d.alphas_cumprod[self.i]), float(d.alphas_cumprod_prev[self.i])


@dataclass(frozen=True)
class StepOutput:
    """One reverse step: x_{t-1} and the model's x̂0 at t, both (B, C, H, W), and the state the
    sampler wants back at the next step (None for a memoryless one)."""

    prev: Tensor
    pred_x0: Tensor
    state: Any = None


class ReverseSampler:
    """Base of every sampler (a frozen dataclass whose fields are its options, all defaulted).

    `title` and `reference` name it in labels and docs, `paper` marks Ho et al.'s own sampler
    (Algorithm 2), `calls_per_step` is how many network calls a step makes (the last may make
    fewer).
    """

    title: ClassVar[str]
    reference: ClassVar[str]
    paper: ClassVar[bool] = False
    calls_per_step: ClassVar[int] = 1

    def step(self, s: Step, x_t: Tensor, state: Any) -> StepOutput:
        """x_{t_i} (B, C, H, W) and the previous step's state (None first) -> `StepOutput`."""
        raise NotImplementedError

    def describe(self) -> str:
        """`title` with its numeric options, and flags that differ from the default."""
        assert dataclasses.is_dataclass(self)
        parts = [self.title]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                parts += [f"{f.name}={value}"] if value != f.default else []
            elif isinstance(value, int | float):
                parts.append(f"{f.name}={value:g}")
            else:
                parts.append(f"{f.name}={value}")
        return " ".join(parts)


def nonzero(t: Tensor, x: Tensor) -> Tensor:
    """1[t > 0] as (B, 1, 1, 1) in x's dtype: no noise is added at the last step."""
    return (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
