"""The one reverse loop: any registered sampler from x_t down to x_{t_end}, with the x̂0 trace
(paper Fig. 6) and a per-step hook, whatever the sampler does inside a step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model, NoiseFn
from ddpm_core.samplers.base import ReverseSampler, Step

StepHook = Callable[[int], None]  # on_step(k): k reverse steps of the loop are done


@dataclass(frozen=True)
class Trajectory:
    """The end of a reverse pass and its x̂0 trace."""

    sample: Tensor  # x_0 (B, C, H, W)
    pred_x0: tuple[Tensor, ...]  # x̂0 at each traced t, in generation order (t descending)


def traced_steps(diffusion: GaussianDiffusion, x0_every: int) -> list[int]:
    """The t (this diffusion's indices) whose x̂0 `reverse_loop` traces, in generation order."""
    return [i for i in reversed(range(diffusion.num_timesteps)) if i % x0_every == 0]


def _check_range(T: int, t_start: int | None, t_end: int, x0_every: int | None) -> int:
    start = T - 1 if t_start is None else t_start
    if not isinstance(start, int) or not 0 <= start < T:
        raise ValueError(f"t_start: got {t_start!r}, expected 0..{T - 1}")
    if not isinstance(t_end, int) or not 0 <= t_end <= start:
        raise ValueError(f"t_end: got {t_end!r}, expected 0..t_start={start}")
    if x0_every is not None and (not isinstance(x0_every, int) or x0_every < 1):
        raise ValueError(f"x0_every: got {x0_every!r}, expected None or an int >= 1")
    return start


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
    """x_t (B, C, H, W) at t_start (default T-1) -> x_{t_end} by `sampler`.

    The steps are t_start, t_start - 1, ..., t_end (0-indexed); the step at index i maps the
    paper's x_{i+1} to x_i, so `sample` is x_{t_end} (x_0 by default; an intermediate t_end stops
    the reverse process there, e.g. to freeze a shared x_t, paper Fig. 7). Each step gets the
    network, `noise_fn` (the sampler draws what it needs, in step order) and the state the
    sampler returned at the previous step (None at the first).
    With x0_every = k also traces x̂0 at every t with t % k == 0 (paper Fig. 6; official
    p_sample_loop_progressive); x0_every=None traces nothing. `on_step(k)` is called after the
    k-th reverse step (k = 1 .. t_start + 1 - t_end), e.g. to report progress; it reads nothing
    from the device, so the loop never waits for it.
    """
    start = _check_range(diffusion.num_timesteps, t_start, t_end, x0_every)
    diffusion.check_x("x_t", x_t)
    x, state, trace, shape = x_t, None, [], tuple(x_t.shape)
    for i in _progress(reversed(range(t_end, start + 1)), start + 1 - t_end, progress):
        out = sampler.step(Step(diffusion, model, i, noise_fn, shape, x.device), x, state)
        x, state = out.prev, out.state
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
