"""One optimisation step of Algorithm 1 (Ho et al. 2020) and the per-rank state it updates.

Nothing here imports Ray: the Ray Train loop (`pipelines.train.worker`), the no-Ray benchmark and
the tests drive the same `TrainState` / `train_step`. The official recipe (Appendix B,
`run_cifar.py`): Adam(lr, betas (0.9, 0.999), eps 1e-8), linear lr warm-up, global-norm
gradient clipping, an EMA of the weights updated after every step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.ema import EMA
from ddpm_core.rng import mix_seed
from ddpm_core.unet import UNet
from pipelines.config import Params, TrainConfig
from pipelines.train.checkpoint import load_training_state, save_training_state

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Purposes mixed into per-rank seeds, so two streams never share a seed.
SEED_T_NOISE, SEED_DROPOUT = 1, 2


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the message names the step."""


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """lr * min(step / warmup, 1) for the `step`-th update (1-based), as in run_cifar.py."""
    if warmup_steps <= 0:
        return lr
    return lr * min(step / warmup_steps, 1.0)


def build_model(params: Params) -> UNet:
    """The U-Net with a seeded init: identical on every rank and every resume.

    `nn.Module` init draws from torch's global generator; `fork_rng` scopes the seed so the
    caller's global state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        return UNet.from_config(params.unet, params.data.channels, params.data.resolution)


@dataclass
class TrainState:
    """Everything one rank updates per step; `model` may be the DDP/compiled wrapper of `raw`."""

    raw: nn.Module  # the bare U-Net (state_dict keys without `module.`)
    model: nn.Module  # what the loss calls: raw, DDP(raw) or torch.compile(DDP(raw))
    ema: EMA
    optimizer: torch.optim.Adam
    diffusion: GaussianDiffusion
    generator: torch.Generator  # this rank's draws of t and eps (CPU)
    step: int = 0  # updates applied so far
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss)


def make_state(
    params: Params, device: torch.device, rank: int, world_size: int, raw: nn.Module | None = None
) -> TrainState:
    """Fresh state on `device`: seeded model, EMA, Adam and this rank's t/eps generator."""
    raw = (raw or build_model(params)).to(device)
    cfg = params.train
    return TrainState(
        raw=raw,
        model=raw,
        ema=EMA(raw, cfg.ema_decay),
        optimizer=torch.optim.Adam(raw.parameters(), lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS),
        diffusion=GaussianDiffusion.from_config(params.diffusion),
        generator=torch.Generator().manual_seed(
            mix_seed(params.seed, world_size, rank, SEED_T_NOISE)
        ),
    )


def draw_t_noise(
    generator: torch.Generator, shape: tuple[int, ...], num_timesteps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ Uniform{0..T-1} (B,) int64 and eps ~ N(0, I) `shape` (Algorithm 1, lines 3-4).

    Drawn on the CPU generator, then moved, so CPU and GPU runs see the same numbers.
    """
    t = torch.randint(0, num_timesteps, (shape[0],), generator=generator)
    noise = torch.randn(shape, generator=generator)
    return t.to(device), noise.to(device)


@dataclass(frozen=True)
class StepOutput:
    loss: float  # this rank's mean loss over its batch
    grad_norm: float  # global (all-reduced) gradient norm before clipping
    lr: float


def train_step(
    state: TrainState,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cfg: TrainConfig,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> StepOutput:
    """One gradient step of Algorithm 1 on x0 (B, C, H, W) with given t (B,) and noise.

    Under DDP the backward pass averages gradients over ranks, so the update equals one
    worker's update on the concatenated global batch. Raises `NonFiniteLossError` (before the
    optimizer step, identically on all ranks since the norm is global) on NaN/inf.
    """
    lr = warmup_lr(state.step + 1, cfg.lr, cfg.warmup_steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    with autocast or contextlib.nullcontext():
        losses = state.diffusion.training_losses(state.model, x0, t, noise)  # (B,)
    loss = losses.float().mean()
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.raw.parameters(), max_norm))
    if not _all_finite(loss.item(), grad_norm, x0.device):
        raise NonFiniteLossError(
            f"non-finite loss {loss.item()} / grad norm {grad_norm} at step {state.step + 1}"
        )
    state.optimizer.step()
    state.ema.update(state.raw)
    state.step += 1
    return StepOutput(loss=loss.item(), grad_norm=grad_norm, lr=lr)


def _all_finite(loss: float, grad_norm: float, device: torch.device) -> bool:
    """True when loss and grad norm are finite on every rank (so all ranks stop together)."""
    ok = math.isfinite(loss) and math.isfinite(grad_norm)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([float(ok)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item() > 0)
    return ok


# ----------------------------------------------------------------------------------------------
# RNG states and checkpoints


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """This rank's random streams: t/eps generator, torch global (dropout), CUDA if used."""
    out = {"t_noise": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(generator: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    generator.set_state(state["t_noise"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order (a collective: all ranks must call it)."""
    mine = rng_state(generator)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def save_checkpoint(
    folder: str | Path, state: TrainState, rng_states: list[dict[str, torch.Tensor]]
) -> Path:
    """Write model, EMA, optimizer, step, per-rank RNG states and data position into `folder`.

    The data position equals the step: `pipelines.data.stream.train_batches(start_step=step)`
    continues the exact batch sequence.
    """
    path = Path(folder) / STATE_FILE
    save_training_state(
        path,
        {
            "model": state.raw.state_dict(),
            "ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "step": state.step,
            "data_position": state.step,
            "rng": rng_states,
            "history": torch.tensor(state.history, dtype=torch.float64).reshape(-1, 2),
        },
    )
    return path


def load_checkpoint(folder: str | Path, state: TrainState, rank: int) -> None:
    """Restore `state` (and this rank's RNG streams) from a `save_checkpoint` folder."""
    path = Path(folder) / STATE_FILE
    ckpt = load_training_state(path)
    rngs = ckpt["rng"]
    if rank >= len(rngs):
        raise ValueError(
            f"{path}: holds RNG states of {len(rngs)} ranks, this is rank {rank}; "
            "resume with the same train.num_workers"
        )
    state.raw.load_state_dict(ckpt["model"])
    state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step = int(ckpt["step"])
    set_rng_state(state.generator, rngs[rank])
    state.history = [(int(s), float(v)) for s, v in ckpt["history"].tolist()]
