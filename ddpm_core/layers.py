"""Building blocks of the DDPM U-Net (official `diffusion_tf/models/unet.py` and `nn.py`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Official `nn.py` L10-11: the output convolutions of every residual branch are initialised with
# variance scaling of scale 1e-10 ("zero init" up to float noise), so each block starts as identity.
ZERO_INIT_SCALE = 1e-10


def variance_scaling_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """In-place TF `variance_scaling(scale, mode='fan_avg', distribution='uniform')` init.

    `weight` is (out, in) for a dense layer or (out, in, kh, kw) for a convolution; the bound is
    sqrt(3 * scale / ((fan_in + fan_out) / 2)) with fan_* = channels * receptive field.
    """
    receptive = math.prod(weight.shape[2:]) if weight.ndim > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(
    c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0, scale: float = 1.0
) -> nn.Conv2d:
    """A conv layer with the official init (variance scaling, zero bias)."""
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)
    variance_scaling_(conv.weight, scale)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


def linear(c_in: int, c_out: int, scale: float = 1.0) -> nn.Linear:
    """A dense layer with the official init (variance scaling, zero bias)."""
    dense = nn.Linear(c_in, c_out)
    variance_scaling_(dense.weight, scale)
    nn.init.zeros_(dense.bias)
    return dense


def group_norm(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(min(num_groups, channels), eps=1e-6) as in the PyTorch ports of the official model.

    The paper's model uses 32 groups; tiny test configs (e.g. ch=8) fall back to one group per
    channel. The group count must divide `channels`.
    """
    groups = min(num_groups, channels)
    if channels % groups != 0:
        raise ValueError(
            f"GroupNorm: channels={channels} is not divisible by groups={groups}; "
            f"choose ch and ch_mult so every level's width is a multiple of {groups}"
        )
    return nn.GroupNorm(groups, channels, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """TF sinusoidal embedding (official `nn.get_timestep_embedding`), t: (B,) -> (B, dim) float32.

    half = dim/2, f_i = exp(-ln(10000) * i / (half - 1)), embedding = [sin(t f), cos(t f)]
    (concatenated, not interleaved); zero-padded when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2*half)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x); in place when no gradient is recorded (sampling), where it is safe."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """Official `resnet_block`: GN-swish-conv (+dense(swish(temb))) -> GN-swish-dropout-conv."""

    def __init__(
        self, c_in: int, c_out: int, temb_ch: int, dropout: float, num_groups: int = 32
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, num_groups)
        self.conv1 = conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = linear(temb_ch, c_out)
        self.norm2 = group_norm(c_out, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv2d(c_out, c_out, 3, padding=1, scale=ZERO_INIT_SCALE)
        # 1x1 "nin" shortcut when the width changes (official `nn.nin`).
        self.nin_shortcut = conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W), temb_act = swish(temb): (B, temb_ch) -> (B, c_out, H, W)."""
        h: torch.Tensor = self.conv1(swish(self.norm1(x)))
        h += self.temb_proj(temb_act)[:, :, None, None]  # in place: conv backward keeps no output
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip: torch.Tensor = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(skip)


class AttnBlock(nn.Module):
    """Official `attn_block`: single-head self-attention over H*W positions, zero-init output.

    q, k, v are one fused dense layer on the (B, H*W, C) tokens (equivalent to the official three
    1x1 convolutions); softmax(q k^T / sqrt(C)) v is `F.scaled_dot_product_attention`.
    """

    def __init__(self, channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        for i in range(3):  # q, k, v are initialised as three separate (C, C) kernels
            variance_scaling_(self.qkv.weight[i * channels : (i + 1) * channels])
        nn.init.zeros_(self.qkv.bias)
        self.proj_out = linear(channels, channels, scale=ZERO_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, 1, h * w, c)  # (B, 1, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # 3 x (B, 1, HW, C)
        out: torch.Tensor = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), 1/sqrt(C)
        out = self.proj_out(out).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        return x + out


class Downsample(nn.Module):
    """Stride-2 3x3 conv with TF 'SAME' padding: pad right/bottom by one, then no padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # type: ignore[no-any-return]


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # type: ignore[no-any-return]
