"""Per-image deterministic sampling (Algorithm 2): image i depends only on (seed, i).

Also the paper's Sec. 4.3 constructions on the same loop: latent interpolation (Fig. 8) and
stochastic predictions sharing a frozen x_t (Fig. 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model
from ddpm_core.rng import CounterNoise, mix_seed
from ddpm_core.samplers.ancestral import Ancestral
from ddpm_core.samplers.base import ReverseSampler
from ddpm_core.samplers.loop import StepHook, reverse_loop, traced_steps

CPU = torch.device("cpu")
ANCESTRAL = Ancestral()


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 [0, 255]: round((x + 1) * 127.5), clamped (official mapping)."""
    if not x.is_floating_point():
        raise ValueError(f"x: expected a float tensor in [-1, 1], got {x.dtype}")
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: x / 127.5 - 1 (the paper's data scaling)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"x: expected uint8, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def snapshot_timesteps(diffusion: GaussianDiffusion, x0_every: int) -> list[int]:
    """Original timestep index of each x0_every snapshot, in generation order (decreasing)."""
    return [int(diffusion.timesteps[i]) for i in traced_steps(diffusion, x0_every)]


@overload
def sample_indices(
    model: Model,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    seed: int,
    shape: tuple[int, int, int],
    device: torch.device = ...,
    x0_every: None = ...,
    sampler: ReverseSampler = ...,
    on_step: StepHook | None = ...,
) -> Tensor: ...


@overload
def sample_indices(
    model: Model,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    seed: int,
    shape: tuple[int, int, int],
    device: torch.device = ...,
    *,
    x0_every: int,
    sampler: ReverseSampler = ...,
    on_step: StepHook | None = ...,
) -> tuple[Tensor, Tensor]: ...


@torch.no_grad()
def sample_indices(
    model: Model,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    seed: int,
    shape: tuple[int, int, int],
    device: torch.device = CPU,
    x0_every: int | None = None,
    sampler: ReverseSampler = ANCESTRAL,
    on_step: StepHook | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Samples (N, C, H, W) uint8 for images `indices` of run `seed`, one batch.

    x_T and every step's z of image i are counter-based draws keyed by (seed, i)
    (`ddpm_core.rng.CounterNoise`), made on `device` in one batched computation, so image i
    does not depend on the other indices in the batch, the worker count or the device.
    `sampler` is any registered sampler (`ddpm_core.samplers.registry`; Algorithm 2 by
    default) over `diffusion`'s timesteps. With x0_every = k also returns the predicted x0
    frames (K, N, C, H, W) uint8 at `snapshot_timesteps(diffusion, k)`. `on_step(k)` after each
    reverse step (`reverse_loop`).
    """
    if len(indices) == 0:
        raise ValueError("indices: expected at least one image index")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape: expected (C, H, W) with positive sizes, got {shape}")
    noise = CounterNoise(seed, [int(i) for i in indices], torch.device(device))
    x_T = noise((len(indices), *shape))
    run = reverse_loop(model, diffusion, sampler, x_T, noise, x0_every=x0_every, on_step=on_step)
    if x0_every is None:
        return to_uint8(run.sample)
    return to_uint8(run.sample), to_uint8(torch.stack(run.pred_x0))


def batches(indices: Sequence[int], batch_size: int) -> list[Sequence[int]]:
    """`indices` cut into consecutive runs of at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}, expected an int >= 1")
    return [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]


@overload
def sample_batched(
    model: Model,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    seed: int,
    shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device = ...,
    sampler: ReverseSampler = ...,
    x0_every: None = ...,
    on_step: StepHook | None = ...,
) -> Tensor: ...


@overload
def sample_batched(
    model: Model,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    seed: int,
    shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device = ...,
    sampler: ReverseSampler = ...,
    *,
    x0_every: int,
    on_step: StepHook | None = ...,
) -> tuple[Tensor, Tensor]: ...


def sample_batched(
    model: Model,
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    seed: int,
    shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device = CPU,
    sampler: ReverseSampler = ANCESTRAL,
    x0_every: int | None = None,
    on_step: StepHook | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """`sample_indices` over `indices` in batches of `batch_size`, concatenated on the CPU.

    Returns (N, C, H, W) uint8, and with x0_every the frames (K, N, C, H, W) uint8; image i is
    the same whatever the batch size (it depends only on (seed, i)). `on_step(k)` after the
    k-th reverse step of each batch.
    """
    chunks = batches(indices, batch_size)
    if x0_every is None:
        return torch.cat([
            sample_indices(
                model, diffusion, idx, seed, shape, device, sampler=sampler, on_step=on_step
            ).cpu()
            for idx in chunks
        ])  # fmt: skip
    parts = [
        sample_indices(
            model,
            diffusion,
            idx,
            seed,
            shape,
            device,
            x0_every=x0_every,
            sampler=sampler,
            on_step=on_step,
        )
        for idx in chunks
    ]
    images = torch.cat([p[0].cpu() for p in parts])
    return images, torch.cat([p[1].cpu() for p in parts], dim=1)


@torch.no_grad()
def interpolate(
    model: Model,
    diffusion: GaussianDiffusion,
    x0_pair: Tensor,
    t: int,
    lambdas: Sequence[float],
    seed: int,
    device: torch.device = CPU,
) -> Tensor:
    """Interpolation in the latent x_t (Ho et al. 2020, Sec. 4.3, Fig. 8): (L, C, H, W) uint8.

    Both images of x0_pair (2, C, H, W) in [-1, 1] are encoded by q(x_t | x_0) (eq. 4, each with
    its own noise), mixed as x_bar_t = (1 - lambda) x_t + lambda x'_t for each lambda, and decoded
    by the reverse process from step t (0-indexed; the paper's t = 500 is t = 499). The reverse
    noise is the same for every lambda, so the rows differ only through lambda.
    """
    if x0_pair.ndim != 4 or x0_pair.shape[0] != 2 or not x0_pair.is_floating_point():
        raise ValueError(
            f"x0_pair: expected a float tensor (2, C, H, W), got {tuple(x0_pair.shape)}"
        )
    lam = torch.as_tensor(list(lambdas), dtype=torch.float32, device=device)
    if lam.ndim != 1 or lam.numel() == 0 or bool(((lam < 0) | (lam > 1)).any()):
        raise ValueError(f"lambdas: expected values in [0, 1], got {list(lambdas)}")
    x0 = x0_pair.to(device=device, dtype=torch.float32)
    t_vec = torch.full((2,), t, dtype=torch.long, device=device)
    diffusion.check_x("x0_pair", x0, t_vec)
    x_t = diffusion.q_sample(x0, t_vec, CounterNoise(seed, [0, 1], device)(tuple(x0.shape)))
    lam = lam.reshape(-1, 1, 1, 1)  # (L, 1, 1, 1)
    x_bar = (1.0 - lam) * x_t[0] + lam * x_t[1]  # (L, C, H, W)
    shared = CounterNoise(seed, [2], device)  # one reverse-noise stream, broadcast over lambda

    def noise(shape: tuple[int, ...]) -> Tensor:
        return shared((1, *shape[1:])).expand(shape)

    return to_uint8(reverse_loop(model, diffusion, ANCESTRAL, x_bar, noise, t_start=t).sample)


@dataclass(frozen=True)
class SharedLatent:
    """Paper Fig. 7: frozen latents x_t and the draws x̂0 ~ p_theta(x_0 | x_t) from each.

    x_t: (N, R, C, H, W) float, image n's reverse trajectory frozen at each of the R t values;
    x0: (N, R, K, C, H, W) float, K reverse-process draws from each frozen x_t.
    """

    t: tuple[int, ...]  # the R timesteps, 1..T (the paper's indexing: x_T is t = T)
    x_t: Tensor
    x0: Tensor


def _check_shared_latent_args(ts: Sequence[int], draws: int, images: int, T: int) -> None:
    bad = [t for t in ts if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= T]
    if not ts or bad or len(set(ts)) != len(ts):
        raise ValueError(f"ts: got {list(ts)}, expected distinct ints in 1..T={T}")
    for name, v in (("draws", draws), ("images", images)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}, expected an int >= 1")


@torch.no_grad()
def shared_latent(
    model: Model,
    diffusion: GaussianDiffusion,
    ts: Sequence[int],
    draws: int,
    images: int,
    seed: int,
    shape: tuple[int, int, int],
    device: torch.device = CPU,
) -> SharedLatent:
    """Stochastic predictions sharing one latent (Ho et al. 2020, Sec. 4.3, Fig. 7).

    As the official `p_sample_loop_trajectory` (`repeat_noise_steps` = T - t): each of `images`
    reverse processes (Algorithm 2) starts at its own x_T and runs with its own noise down to
    x_t, which is frozen; from it `draws` reverse processes with DIFFERENT noise run on to x_0.
    Every t of `ts` (1..T, any order; t = T freezes x_T itself) is a point of the SAME
    trajectory, so the rows differ only in how much of it is kept: at a large t the draws share
    only coarse attributes, at a small t all but fine details (at t = 1 the one remaining step
    adds no noise, so the draws are equal).

    Noise: image n's trajectory (x_T and its z) is the counter stream (mix_seed(seed, 0), n), so
    x_t does not depend on the other t values or images; draw j from image n's x_t is the
    stream (mix_seed(seed, t, n), j), independent of `draws`' size and the other rows.
    Returns floats (x_t unclipped, x̂0 as the reverse process ends it).
    """
    T = diffusion.num_timesteps
    _check_shared_latent_args(ts, draws, images, T)
    trajectory = CounterNoise(mix_seed(seed, 0), list(range(images)), device)
    x = trajectory((images, *shape))  # x_T (N, C, H, W)
    now, frozen, preds = T, {}, {}
    for t in sorted(ts, reverse=True):
        if t < now:  # steps now-1 .. t (0-indexed) take x_now to x_t on the shared noise
            x = reverse_loop(model, diffusion, ANCESTRAL, x, trajectory, now - 1, t_end=t).sample
            now = t
        frozen[t] = x
        preds[t] = _draws_from(model, diffusion, x, t, draws, seed)  # (N, K, C, H, W)
    order = tuple(ts)
    x_t = torch.stack([frozen[t] for t in order], dim=1)  # (N, R, C, H, W)
    return SharedLatent(order, x_t, torch.stack([preds[t] for t in order], dim=1))


def _draws_from(
    model: Model, diffusion: GaussianDiffusion, x_t: Tensor, t: int, draws: int, seed: int
) -> Tensor:
    """(N, K, C, H, W): K reverse processes from each frozen x_t (N, C, H, W) at t (1-based)."""
    n = x_t.shape[0]
    streams = [CounterNoise(mix_seed(seed, t, i), list(range(draws)), x_t.device) for i in range(n)]

    def noise(shape: tuple[int, ...]) -> Tensor:  # rows image-major: (n, j) at n * K + j
        return torch.cat([s((draws, *shape[1:])) for s in streams])

    start = x_t.repeat_interleave(draws, dim=0)  # (N K, C, H, W), the same x_t for every draw
    x0 = reverse_loop(model, diffusion, ANCESTRAL, start, noise, t_start=t - 1).sample
    return x0.reshape(n, draws, *x_t.shape[1:])
