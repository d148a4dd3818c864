"""Reverse-process samplers: one step interface, two implementations, one loop.

In the spirit of a diffusers scheduler's `step()`: the network call and the loop stay outside
the sampler, and every sampler maps (model output, t, x_t, that step's noise z) to
(x_{t-1}, x̂0). `t` indexes the given `GaussianDiffusion`'s own tables; a strided schedule is
`diffusion.respaced(k)`, whose `alphas_cumprod_prev[t]` is ᾱ at the previous strided timestep,
so the previous t is carried by the diffusion and a step needs nothing else.

- `Ancestral`: Algorithm 2 of Ho et al. 2020, x_{t-1} = mu_theta(x_t, t) + 1[t > 0] sigma_t z.
- `DDIM`: Song et al. 2021, eq. 12, with `eta` (0 deterministic, 1 = ancestral with
  sigma_t^2 = beta_tilde_t). NOT the paper's sampler.

`reverse_loop` runs any of them from x_t at `t_start` down to `t_end` (0: to x_0), with the same
options for all (the x̂0 trace every k steps, a progress bar); `noise_fn` gives one z per step,
in step order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model, NoiseFn, extract

SamplerName = Literal["ancestral", "ddim"]


@dataclass(frozen=True)
class StepOutput:
    """One reverse step: x_{t-1} and the model's x̂0 at t, both (B, C, H, W)."""

    prev: Tensor
    pred_x0: Tensor


class ReverseSampler(Protocol):
    """(model output at (x_t, t), t (B,) long, x_t, z) -> x_{t-1}, x̂0."""

    def step(
        self, diffusion: GaussianDiffusion, model_output: Tensor, t: Tensor, x_t: Tensor, z: Tensor
    ) -> StepOutput: ...


def _nonzero(t: Tensor, x: Tensor) -> Tensor:
    """1[t > 0] as (B, 1, 1, 1) in x's dtype: no noise is added at the last step."""
    return (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class Ancestral:
    """Algorithm 2, line 4: x_{t-1} = mu_theta(x_t, t) + 1[t > 0] sigma_t z (the paper)."""

    clip_denoised: bool = True  # x̂0 clipped to [-1, 1] before eq. 7 (official sampler)

    def step(
        self, diffusion: GaussianDiffusion, model_output: Tensor, t: Tensor, x_t: Tensor, z: Tensor
    ) -> StepOutput:
        p = diffusion.p_from_output(model_output, x_t, t, self.clip_denoised)
        prev = p["mean"] + _nonzero(t, x_t) * torch.exp(0.5 * p["log_variance"]) * z
        return StepOutput(prev, p["pred_x0"])


@dataclass(frozen=True)
class DDIM:
    """Song et al. 2021, eq. 12 (NOT the paper's sampler):

    x_{t-1} = sqrt(a_bar_{t-1}) x̂0 + sqrt(1 - a_bar_{t-1} - s_t^2) eps + s_t z with
    s_t = eta sqrt((1 - a_bar_{t-1}) / (1 - a_bar_t)) sqrt(1 - a_bar_t / a_bar_{t-1});
    eta = 1 is ancestral sampling with sigma_t^2 = beta_tilde_t, eta = 0 is deterministic.
    """

    eta: float = 0.0
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        ok = isinstance(self.eta, int | float) and not isinstance(self.eta, bool)
        if not (ok and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta: got {self.eta!r}, expected a number in [0, 1]")

    def step(
        self, diffusion: GaussianDiffusion, model_output: Tensor, t: Tensor, x_t: Tensor, z: Tensor
    ) -> StepOutput:
        pred_x0 = diffusion.p_from_output(model_output, x_t, t, self.clip_denoised)["pred_x0"]
        eps = diffusion.predict_eps_from_x0(x_t, t, pred_x0)  # consistent with the clipped x̂0
        c = diffusion.coefs(x_t)
        ab = extract(c.alphas_cumprod, t, x_t.shape)
        ab_prev = extract(c.alphas_cumprod_prev, t, x_t.shape)
        sigma = self.eta * torch.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        mean = torch.sqrt(ab_prev) * pred_x0 + torch.sqrt(1 - ab_prev - sigma**2) * eps
        return StepOutput(mean + _nonzero(t, x_t) * sigma * z, pred_x0)


StepHook = Callable[[int], None]  # on_step(k): k reverse steps of the loop are done

SAMPLERS: dict[str, Callable[[float], ReverseSampler]] = {
    "ancestral": lambda eta: Ancestral(),
    "ddim": lambda eta: DDIM(eta),
}


def make_sampler(name: str, eta: float = 0.0) -> ReverseSampler:
    """The sampler called `name` in params (`sample.sampler`); `eta` is DDIM's only."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: got {name!r}, expected one of {list(SAMPLERS)}")
    return SAMPLERS[name](eta)


@dataclass(frozen=True)
class Trajectory:
    """The end of a reverse pass and its x̂0 trace."""

    sample: Tensor  # x_0 (B, C, H, W)
    pred_x0: tuple[Tensor, ...]  # x̂0 at each traced t, in generation order (t descending)


def traced_steps(diffusion: GaussianDiffusion, x0_every: int) -> list[int]:
    """The t (this diffusion's indices) whose x̂0 `reverse_loop` traces, in generation order."""
    return [i for i in reversed(range(diffusion.num_timesteps)) if i % x0_every == 0]


@torch.no_grad()
def reverse_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    sampler: ReverseSampler,
    x_t: Tensor,
    noise_fn: NoiseFn,
    t_start: int | None = None,
    x0_every: int | None = None,
    progress: bool = False,
    t_end: int = 0,
    on_step: StepHook | None = None,
) -> Trajectory:
    """x_t (B, C, H, W) at t_start (default T-1) -> x_0 by `sampler`, one z from noise_fn per step.

    The steps are t_start, t_start - 1, ..., t_end (0-indexed); the step at index i maps the
    paper's x_{i+1} to x_i, so `sample` is x_{t_end} (x_0 by default; an intermediate t_end stops
    the reverse process there, e.g. to freeze a shared x_t, paper Fig. 7).
    With x0_every = k also traces x̂0 at every t with t % k == 0 (paper Fig. 6; official
    p_sample_loop_progressive); x0_every=None traces nothing. `on_step(k)` is called after the
    k-th reverse step (k = 1 .. t_start + 1 - t_end), e.g. to report progress; it reads nothing
    from the device, so the loop never waits for it.
    """
    T = diffusion.num_timesteps
    start = T - 1 if t_start is None else t_start
    if not isinstance(start, int) or not 0 <= start < T:
        raise ValueError(f"t_start: got {t_start!r}, expected 0..{T - 1}")
    if not isinstance(t_end, int) or not 0 <= t_end <= start:
        raise ValueError(f"t_end: got {t_end!r}, expected 0..t_start={start}")
    if x0_every is not None and (not isinstance(x0_every, int) or x0_every < 1):
        raise ValueError(f"x0_every: got {x0_every!r}, expected None or an int >= 1")
    diffusion.check_x("x_t", x_t)
    x, trace, shape = x_t, [], tuple(x_t.shape)
    for i in _progress(reversed(range(t_end, start + 1)), start + 1 - t_end, progress):
        t = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
        out = sampler.step(diffusion, diffusion.model_output(model, x, t), t, x, noise_fn(shape))
        x = out.prev
        if x0_every is not None and i % x0_every == 0:
            trace.append(out.pred_x0)
        if on_step is not None:
            on_step(start + 1 - i)
    return Trajectory(x, tuple(trace))


def _progress(it: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc="sampling")
