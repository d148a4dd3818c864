"""Per-image deterministic sampling (Algorithm 2): image i depends only on (seed, i)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import torch
from torch import Tensor

from ddpm_core.diffusion import GaussianDiffusion, Model
from ddpm_core.rng import CounterNoise
from ddpm_core.samplers import Ancestral, ReverseSampler, StepHook, reverse_loop, traced_steps

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
    `sampler` is any `ddpm_core.samplers` step (Algorithm 2 by default) over `diffusion`'s
    timesteps. With x0_every = k also returns the predicted x0 frames (K, N, C, H, W) uint8 at
    `snapshot_timesteps(diffusion, k)`. `on_step(k)` after each reverse step (`reverse_loop`).
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
