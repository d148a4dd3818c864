"""The DDPM U-Net (Ho et al. 2020, App. B; official `diffusion_tf/models/unet.py` L87-145)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpm_core.layers import (
    ZERO_INIT_SCALE,
    AttnBlock,
    Downsample,
    ResBlock,
    Upsample,
    conv2d,
    group_norm,
    linear,
    timestep_embedding,
)

if TYPE_CHECKING:
    from ddpm_core.config import UNetConfig


def run_block(
    fn: Callable[..., torch.Tensor], *args: torch.Tensor, checkpointed: bool
) -> torch.Tensor:
    """fn(*args); with `checkpointed` while gradients are recorded, under activation
    checkpointing (torch.utils.checkpoint, non-reentrant): the block keeps only its inputs for
    backward and recomputes its inside then, trading one more forward of the block for the
    memory of its activations. The recomputation sees the same autocast state and the same
    dropout mask (the RNG state is restored), so losses and gradients are those without it."""
    if checkpointed and torch.is_grad_enabled():
        out: torch.Tensor = checkpoint(fn, *args, use_reentrant=False)
        return out
    return fn(*args)


class Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampler.

    `checkpointed`: every ResBlock and AttnBlock runs under activation checkpointing in training
    (`run_block`; set by `UNet.set_activation_checkpointing`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.downsample: Downsample | None = None
        self.upsample: Upsample | None = None
        self.checkpointed = False

    def forward_down(self, hs: list[torch.Tensor], temb_act: torch.Tensor) -> None:
        """Push every block output (after attention) and the downsampled map onto `hs`."""
        on = self.checkpointed
        for j, block in enumerate(self.block):
            h = run_block(block, hs[-1], temb_act, checkpointed=on)
            hs.append(run_block(self.attn[j], h, checkpointed=on) if len(self.attn) else h)
        if self.downsample is not None:
            hs.append(self.downsample(hs[-1]))

    def forward_up(
        self, h: torch.Tensor, hs: list[torch.Tensor], temb_act: torch.Tensor
    ) -> torch.Tensor:
        """Consume one skip per block from the end of `hs`: (B, C, H, W) -> (B, C', 2H, 2W)."""
        on = self.checkpointed
        for j, block in enumerate(self.block):
            h = run_block(block, torch.cat([h, hs.pop()], dim=1), temb_act, checkpointed=on)
            if len(self.attn):
                h = run_block(self.attn[j], h, checkpointed=on)
        return h if self.upsample is None else self.upsample(h)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding -> dense(ch, 4ch) -> swish -> dense(4ch, 4ch)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ch = ch
        self.dense = nn.ModuleList([linear(ch, 4 * ch), linear(4 * ch, 4 * ch)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) int -> temb (B, 4ch) in the dtype of the weights."""
        dense0 = cast(nn.Linear, self.dense[0])
        h = dense0(timestep_embedding(t, self.ch).to(dense0.weight.dtype))
        return self.dense[1](F.silu(h))  # type: ignore[no-any-return]


class Mid(nn.Module):
    """Middle of the U-Net: ResBlock -> attention -> ResBlock at the lowest resolution."""

    def __init__(self, c: int, temb_ch: int, dropout: float, num_groups: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(c, c, temb_ch, dropout, num_groups)
        self.attn_1 = AttnBlock(c, num_groups)
        self.block_2 = ResBlock(c, c, temb_ch, dropout, num_groups)
        self.checkpointed = False  # as `Level.checkpointed`

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        on = self.checkpointed
        h = run_block(self.block_1, h, temb_act, checkpointed=on)
        h = run_block(self.attn_1, h, checkpointed=on)
        return run_block(self.block_2, h, temb_act, checkpointed=on)


class UNet(nn.Module):
    """The paper's noise-prediction network eps_theta(x_t, t).

    Structure (names as in the official code / pesser's port): `temb.dense` (ch -> 4ch -> 4ch),
    `conv_in`; `down[i]` with `num_res_blocks` ResBlocks (+ attention at `attn_resolutions`) and a
    TF-'SAME' stride-2 conv except at the last level; `mid` = Res-Attn-Res; `up[i]` with
    `num_res_blocks + 1` ResBlocks on concat(h, skip) and nearest x2 + conv except at level 0;
    `norm_out` -> swish -> `conv_out` (zero-init). At the CIFAR-10 settings (the defaults) it has
    35,746,307 parameters. GroupNorm uses min(`num_groups`, width) groups, so tiny configs such
    as ch=8 work; every level width must be a multiple of that group count.

    `forward(x, t)`: x (B, in_channels, resolution, resolution) float, t (B,) integer timesteps
    (0-indexed) -> (B, out_channels, resolution, resolution). Works unchanged in `channels_last`.

    `activation_checkpointing` (or `set_activation_checkpointing`): in training (gradients
    recorded) every ResBlock and AttnBlock keeps only its inputs and recomputes its activations
    in backward (`run_block`), e.g. so that a 256x256 batch fits in memory; the outputs and
    gradients are unchanged, inference is unaffected.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resolution: int = 32,
        num_groups: int = 32,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_arch(ch, tuple(ch_mult), num_res_blocks, tuple(attn_resolutions), resolution)
        self.in_channels, self.out_channels, self.ch = in_channels, out_channels, ch
        self.ch_mult, self.num_res_blocks = tuple(ch_mult), num_res_blocks
        self.attn_resolutions, self.resolution = tuple(attn_resolutions), resolution
        self.temb_ch = 4 * ch
        self.temb = TimeEmbedding(ch)
        self.conv_in = conv2d(in_channels, ch, 3, padding=1)
        args = (self.temb_ch, dropout, num_groups)
        self.down, skip_chs = self._build_down(args, num_groups)
        self.mid = Mid(ch * self.ch_mult[-1], *args)
        self.up = self._build_up(args, num_groups, skip_chs)
        self.norm_out = group_norm(ch, num_groups)
        self.conv_out = conv2d(ch, out_channels, 3, padding=1, scale=ZERO_INIT_SCALE)
        self.set_activation_checkpointing(activation_checkpointing)

    def set_activation_checkpointing(self, on: bool) -> UNet:
        """Turn activation checkpointing of every ResBlock / AttnBlock on or off; returns self."""
        if not isinstance(on, bool):
            raise ValueError(f"activation_checkpointing: got {on!r}, expected a bool")
        self.activation_checkpointing = on
        parts: list[Level | Mid] = [*self._levels(self.down), *self._levels(self.up), self.mid]
        for part in parts:
            part.checkpointed = on
        return self

    def _build_down(
        self, args: tuple[int, float, int], num_groups: int
    ) -> tuple[nn.ModuleList, list[int]]:
        """Down path; returns the levels and the width of every skip activation (in push order)."""
        levels, skip_chs = nn.ModuleList(), [self.ch]
        c_in, res = self.ch, self.resolution
        for i, mult in enumerate(self.ch_mult):
            level, c_out = Level(), self.ch * mult
            for _ in range(self.num_res_blocks):
                level.block.append(ResBlock(c_in, c_out, *args))
                c_in = c_out
                if res in self.attn_resolutions:
                    level.attn.append(AttnBlock(c_out, num_groups))
                skip_chs.append(c_out)
            if i != len(self.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                skip_chs.append(c_out)
                res //= 2
            levels.append(level)
        return levels, skip_chs

    def _build_up(
        self, args: tuple[int, float, int], num_groups: int, skip_chs: list[int]
    ) -> nn.ModuleList:
        """Up path; `up[i]` is level i (built deepest first, as the official code does)."""
        levels: list[Level] = []
        c_in = self.ch * self.ch_mult[-1]
        res = self.resolution // 2 ** (len(self.ch_mult) - 1)
        skips = list(skip_chs)
        for i in reversed(range(len(self.ch_mult))):
            level, c_out = Level(), self.ch * self.ch_mult[i]
            for _ in range(self.num_res_blocks + 1):
                level.block.append(ResBlock(c_in + skips.pop(), c_out, *args))
                c_in = c_out
                if res in self.attn_resolutions:
                    level.attn.append(AttnBlock(c_out, num_groups))
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels.insert(0, level)
        return nn.ModuleList(levels)

    @classmethod
    def from_config(
        cls, cfg: UNetConfig, channels: int, resolution: int, out_channels: int | None = None
    ) -> UNet:
        """Build the U-Net from the typed config for `channels`-channel images of `resolution`^2.

        `out_channels` defaults to `channels`; pass `GaussianDiffusion.model_out_channels(channels)`
        (2C with a learned variance).
        """
        return cls(
            in_channels=channels,
            out_channels=channels if out_channels is None else out_channels,
            ch=cfg.ch,
            ch_mult=cfg.ch_mult,
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=cfg.attn_resolutions,
            dropout=cfg.dropout,
            resolution=resolution,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t): x (B, C_in, H, W) float, t (B,) int -> (B, C_out, H, W)."""
        self._check_inputs(x, t)
        temb_act = F.silu(self.temb(t).to(x.dtype))  # (B, 4ch); every ResBlock uses swish(temb)
        hs = [self.conv_in(x)]  # skip activations, (B, C_i, H_i, W_i)
        for level in self._levels(self.down):
            level.forward_down(hs, temb_act)
        h = self.mid(hs[-1], temb_act)
        for level in reversed(self._levels(self.up)):
            h = level.forward_up(h, hs, temb_act)
        return self.conv_out(F.silu(self.norm_out(h)))  # type: ignore[no-any-return]

    @staticmethod
    def _levels(levels: nn.ModuleList) -> list[Level]:
        return [cast(Level, level) for level in levels]

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise ValueError naming the argument when x or t do not fit the model."""
        expected = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x: got shape {tuple(x.shape)}, expected (B, {', '.join(map(str, expected))})"
            )
        if not x.is_floating_point():
            raise ValueError(f"x: got dtype {x.dtype}, expected a floating-point tensor")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t: got shape {tuple(t.shape)}, expected ({x.shape[0]},)")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t: got dtype {t.dtype}, expected an integer tensor (torch.long)")
        # The value check reads x back to the host: free on CPU, a pipeline stall per call on an
        # accelerator, where the callers validate their data once instead.
        on_cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
        if on_cpu and not bool(torch.isfinite(x).all()):
            raise ValueError("x: contains NaN or Inf")


def _check_arch(
    ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, attn: tuple[int, ...], resolution: int
) -> None:
    """Validate the architecture arguments with errors naming the argument."""
    if ch < 4 or ch % 2:
        raise ValueError(f"ch: got {ch}, expected an even int >= 4")
    if not ch_mult or any(m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult: got {ch_mult}, expected a non-empty sequence of ints >= 1")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks: got {num_res_blocks}, expected an int >= 1")
    factor = 2 ** (len(ch_mult) - 1)
    if resolution < factor or resolution % factor:
        raise ValueError(f"resolution: got {resolution}, expected a multiple of {factor}")
    levels = [resolution // 2**i for i in range(len(ch_mult))]
    if any(r not in levels for r in attn):
        raise ValueError(f"attn_resolutions: got {attn}, expected values among {levels}")
