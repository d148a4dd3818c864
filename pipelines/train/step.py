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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.ema import EMA
from ddpm_core.rng import SeedPurpose, seeded_generator
from ddpm_core.unet import UNet
from pipelines.artifacts.model_dir import build_unet
from pipelines.config import CompileMode, Params, TrainConfig
from pipelines.infra.accel import compile_fn, mark_step
from pipelines.train.checkpoint import STATE_FILE, TrainingCheckpoint
from pipelines.train.selection import FidCurve

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


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
        torch.manual_seed(SeedPurpose.model_init(params.seed))  # the seed table's MODEL_INIT
        return build_unet(params)


@dataclass
class StepStats:
    """Step statistics of one rank, kept on the device so the hot loop never waits for the GPU.

    `train_step` adds to them; the loop reads them (one host sync) every `train.log_every`
    steps and before each checkpoint.
    """

    loss_sum: torch.Tensor  # () float32: sum of this rank's batch-mean losses in the window
    grad_norm: torch.Tensor  # () float32: the latest global gradient norm before clipping
    nonfinite: torch.Tensor  # () bool: a non-finite loss or gradient norm since the window began
    steps: int = 0  # steps in the window
    first_step: int = 1  # the first step of the window (1-based)

    @classmethod
    def zeros(cls, device: torch.device, first_step: int = 1) -> StepStats:
        z = torch.zeros((), dtype=torch.float32, device=device)
        return cls(z, z.clone(), torch.zeros((), dtype=torch.bool, device=device), 0, first_step)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Accumulate one step's () loss and grad norm without a host sync."""
        self.loss_sum += loss.detach().float()
        self.grad_norm = grad_norm.detach().float()
        self.nonfinite |= ~(torch.isfinite(loss) & torch.isfinite(grad_norm)).detach()
        self.steps += 1


@dataclass(frozen=True)
class WindowStats:
    """The steps first_step..last_step as read at a log point, averaged over ranks."""

    first_step: int
    last_step: int
    loss: float  # mean loss over ranks and steps
    grad_norm: float  # global gradient norm of the last step
    nonfinite: bool  # any rank saw a non-finite loss or gradient norm
    steps: int


@dataclass
class TrainState:
    """Everything one rank updates per step; `model` may be the DDP/compiled wrapper of `raw`."""

    raw: nn.Module  # the bare U-Net (state_dict keys without `module.`)
    model: nn.Module  # what the loss calls: raw or DDP(raw)
    loss_fn: LossFn  # (x0, t, noise) -> (B,) losses of `model`, compiled when asked
    ema: EMA
    optimizer: torch.optim.Adam
    diffusion: GaussianDiffusion
    generator: torch.Generator  # this rank's draws of t and eps, on the training device
    stats: StepStats
    step: int = 0  # updates applied so far
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss)
    fid_curve: FidCurve = field(default_factory=FidCurve)  # rank 0's in-training FID points
    best_ema: dict[str, torch.Tensor] | None = None  # CPU copy of the EMA at the min-FID step
    compile_mode: CompileMode = False
    params: list[nn.Parameter] = field(default_factory=list)  # raw's, listed once (clipping)

    def __post_init__(self) -> None:
        self.params = list(self.raw.parameters())

    def any_nonfinite(self, world_size: int) -> bool:
        """Whether any rank saw a non-finite step in the window (a collective; one sync)."""
        flag = self.stats.nonfinite.float().reshape(1)
        if world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def read_stats(self, world_size: int) -> WindowStats:
        """Read and reset the window (one host sync; a collective when world_size > 1)."""
        s = self.stats
        packed = torch.stack([s.loss_sum, s.nonfinite.float()]).double()  # (2,)
        if world_size > 1:
            dist.all_reduce(packed)  # sums over ranks
        loss_sum, bad, grad_norm = *packed.tolist(), float(s.grad_norm)
        self.stats = StepStats.zeros(s.loss_sum.device, self.step + 1)
        mean = loss_sum / max(s.steps * world_size, 1)
        return WindowStats(s.first_step, self.step, mean, grad_norm, bad > 0, s.steps)


def make_state(
    params: Params,
    device: torch.device,
    rank: int,
    world_size: int,
    raw: nn.Module | None = None,
    compile_mode: CompileMode = False,
) -> TrainState:
    """Fresh state on `device`: seeded model, EMA, Adam and this rank's t/eps generator.

    On CUDA Adam is fused (one kernel for all parameters); elsewhere it is the for-each
    implementation (a few multi-tensor calls instead of ~10 ops per parameter; torch's CPU
    default is the per-parameter loop), whose updates are bit-identical to that loop's, so
    CPU runs stay bit-identical to earlier releases. With
    `train.activation_checkpointing` the U-Net's blocks recompute their activations in backward
    (`UNet.set_activation_checkpointing`; the same losses and gradients, less memory).
    """
    raw = (raw or build_model(params)).to(device)
    cfg = params.train
    if isinstance(raw, UNet):
        raw.set_activation_checkpointing(cfg.activation_checkpointing)
    elif cfg.activation_checkpointing:
        raise ValueError(
            f"train.activation_checkpointing: true needs the project's U-Net, got {type(raw)}"
        )
    fused = device.type == "cuda"
    diffusion = GaussianDiffusion.from_config(params.diffusion)
    return TrainState(
        raw=raw,
        model=raw,
        loss_fn=loss_closure(diffusion, raw),
        ema=EMA(raw, cfg.ema_decay),
        optimizer=torch.optim.Adam(
            raw.parameters(),
            lr=cfg.lr,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            fused=fused or None,
            foreach=None if fused else True,
        ),
        diffusion=diffusion,
        generator=seeded_generator(
            params.seed, world_size, rank, SeedPurpose.T_NOISE, device=device
        ),
        stats=StepStats.zeros(device),
        compile_mode=compile_mode,
    )


def loss_closure(diffusion: GaussianDiffusion, model: nn.Module) -> LossFn:
    """(x0, t, noise) -> diffusion.training_losses(model, ...) (B,), unchecked (hot loop)."""

    def losses(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return diffusion.training_losses(model, x0, t, noise)

    return losses


def prepare_model(
    state: TrainState,
    channels_last: bool,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> None:
    """Set `state.model` (channels_last weights, then `wrap`, e.g. DDP) and `state.loss_fn`.

    With `state.compile_mode` the whole loss (q_sample, the network, the MSE) is one compiled
    graph, so in "reduce-overhead" mode forward and backward are each one CUDA-graph replay.
    `state.raw` stays the bare network (checkpoints, EMA, clipping).
    """
    raw = state.raw.to(memory_format=torch.channels_last) if channels_last else state.raw
    state.model = wrap(raw) if wrap else raw
    device = next(raw.parameters()).device
    state.diffusion.prepare(device)  # coefficient tables exist before tracing
    losses = loss_closure(state.diffusion, state.model)
    state.loss_fn = compile_fn(losses, state.compile_mode)


def draw_t_noise(
    generator: torch.Generator, shape: tuple[int, ...], num_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ Uniform{0..T-1} (B,) int64 and eps ~ N(0, I) `shape` (Algorithm 1, lines 3-4).

    Drawn on the generator's device (no host-to-device copy per step); on CPU the numbers are
    those of earlier releases.
    """
    device = generator.device
    t = torch.randint(0, num_timesteps, (shape[0],), generator=generator, device=device)
    noise = torch.randn(shape, generator=generator, device=device)
    return t, noise


def train_step(
    state: TrainState,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cfg: TrainConfig,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> None:
    """One gradient step of Algorithm 1 on x0 (B, C, H, W) with given t (B,) and noise.

    Under DDP the backward pass averages gradients over ranks, so the update equals one
    worker's update on the concatenated global batch. No host sync: loss, gradient norm and a
    non-finite flag go to `state.stats`, which the caller reads at log points (a NaN step is
    found there, and the caller never checkpoints the weights after it). Inputs are validated
    by the caller once, not per step.
    """
    lr = warmup_lr(state.step + 1, cfg.lr, cfg.warmup_steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    mark_step(state.compile_mode)
    with autocast or contextlib.nullcontext():
        losses = state.loss_fn(x0, t, noise)  # (B,)
    loss = losses.float().mean()
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, max_norm, foreach=True)
    state.optimizer.step()
    state.ema.update(state.raw)
    state.stats.add(loss, grad_norm)
    state.step += 1


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


def checkpoint_of(
    state: TrainState, rng_states: list[dict[str, torch.Tensor]]
) -> TrainingCheckpoint:
    """The checkpoint record of `state` with every rank's RNG states (`gather_rng_states`).

    The min-FID selection survives a resume: the record holds the curve and the best EMA
    weights so far.
    """
    return TrainingCheckpoint(
        model=state.raw.state_dict(),
        ema=state.ema.state_dict(),
        optimizer=state.optimizer.state_dict(),
        step=state.step,
        rng=rng_states,
        history=tuple(state.history),
        fid_points=tuple(state.fid_curve.points),
        best_ema=state.best_ema,
    )


def restore(
    state: TrainState, ckpt: TrainingCheckpoint, rank: int, source: str = "checkpoint"
) -> None:
    """Apply `ckpt` to `state`: weights, EMA, optimizer, step, this rank's RNG streams, the
    loss history and the FID selection; the next statistics window starts after the step.

    ValueError naming `source` when `ckpt` holds the RNG states of fewer ranks.
    """
    if rank >= len(ckpt.rng):
        raise ValueError(
            f"{source}: holds RNG states of {len(ckpt.rng)} ranks, this is rank {rank}; "
            "resume with the same train.num_workers"
        )
    state.raw.load_state_dict(ckpt.model)
    state.ema.load_state_dict(ckpt.ema)
    state.optimizer.load_state_dict(ckpt.optimizer)
    state.step = ckpt.step
    state.stats = StepStats.zeros(state.stats.loss_sum.device, state.step + 1)
    set_rng_state(state.generator, ckpt.rng[rank])
    state.history = list(ckpt.history)
    state.fid_curve = ckpt.fid_curve
    state.best_ema = ckpt.best_ema


def save_checkpoint(
    folder: str | Path, state: TrainState, rng_states: list[dict[str, torch.Tensor]]
) -> Path:
    """Write the checkpoint record of `state` into `folder`; returns the file's path."""
    return checkpoint_of(state, rng_states).write(folder)


def load_checkpoint(folder: str | Path, state: TrainState, rank: int) -> None:
    """Restore `state` (and this rank's RNG streams) from a `save_checkpoint` folder.

    FileNotFoundError / UnloadableStateError when its file is missing or cannot be read back
    (`TrainingCheckpoint.read`); ValueError naming it when it holds fewer ranks' streams.
    """
    restore(state, TrainingCheckpoint.read(folder), rank, str(Path(folder) / STATE_FILE))
