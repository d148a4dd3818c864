"""Tests for the DDPM U-Net: parameter counts, contracts, init, embedding and padding details."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_core.config import UNetConfig
from ddpm_core.layers import Downsample, ResBlock, timestep_embedding, variance_scaling_
from ddpm_core.unet import UNet

TINY = dict(
    ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, resolution=8
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(**kw: object) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**TINY, **kw}).eval()  # type: ignore[arg-type]


def test_param_count_cifar10() -> None:
    assert n_params(UNet()) == 35_746_307


def test_param_count_with_the_learned_variance_head() -> None:
    """Table 2's learned diagonal Sigma: out_ch = 2C = 6 (paper's official code: 35,749,766)."""
    assert n_params(UNet(out_channels=6)) == 35_749_766


def test_param_count_256() -> None:
    model = UNet(ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), resolution=256)
    assert n_params(model) == 113_673_219


def test_param_count_256_large() -> None:
    """The large LSUN Bedroom model (ch 192): 255,677,955 (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = UNet(ch=192, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), resolution=256)
    assert n_params(model) == 255_677_955


def test_shapes_and_dtype() -> None:
    model = tiny(in_channels=1, out_channels=2)
    x = torch.randn(3, 1, 8, 8)
    y = model(x, torch.tensor([0, 5, 999]))
    assert y.shape == (3, 2, 8, 8)
    assert y.dtype == torch.float32
    assert model(x.double().float(), torch.tensor([1, 2, 3], dtype=torch.int32)).shape == y.shape


def test_from_config_uses_config_values() -> None:
    cfg = UNetConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.2)
    model = UNet.from_config(cfg, channels=1, resolution=16)
    assert (model.ch, model.ch_mult, model.num_res_blocks) == (8, (1, 2, 2), 1)
    assert model.in_channels == model.out_channels == 1
    assert model(torch.randn(2, 1, 16, 16), torch.tensor([0, 1])).shape == (2, 1, 16, 16)
    attn_levels = [i for i, level in enumerate(model.down) if len(level.attn)]
    assert attn_levels == [2]  # 16 -> 8 -> 4: attention only at 4x4


def test_output_near_zero_at_init() -> None:
    """conv_out has scale-1e-10 init (official), so eps_theta starts at ~0 for any input."""
    model = tiny()
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 10, 100, 999])
    assert model(x, t).abs().max() < 1e-3
    variance_scaling_(model.conv_out.weight, 1.0)  # an ordinary init gives O(1) outputs
    assert model(x, t).abs().max() > 1e-2


def test_resblock_is_identity_at_init_for_equal_widths() -> None:
    torch.manual_seed(0)
    block = ResBlock(16, 16, temb_ch=32, dropout=0.0, num_groups=8)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 32)), x, atol=1e-3, rtol=0)


def test_timestep_embedding_matches_formula() -> None:
    t = torch.tensor([0, 1, 17, 999])
    dim = 16
    half = dim // 2
    f = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1))
    args = t.numpy()[:, None].astype(np.float64) * f[None]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    got = timestep_embedding(t, dim).double().numpy()
    np.testing.assert_allclose(got, expected, atol=2e-4)  # float32 args at t=999
    assert timestep_embedding(t, 7).shape == (4, 7)


def test_downsample_is_tf_same_padding() -> None:
    """TF 'SAME', stride 2, k 3 on even H pads 0 before and 1 after (rows and columns)."""
    torch.manual_seed(0)
    down = Downsample(2)
    x = torch.randn(1, 2, 6, 6)
    y = down(x).detach().numpy()
    assert y.shape == (1, 2, 3, 3)
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 1), (0, 1)))  # (1, 2, 7, 7)
    w, b = down.conv.weight.detach().numpy(), down.conv.bias.detach().numpy()
    for i in range(3):
        for j in range(3):
            patch = xp[0, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]  # (2, 3, 3)
            expected = (w * patch[None]).sum(axis=(1, 2, 3)) + b
            np.testing.assert_allclose(y[0, :, i, j], expected, rtol=1e-5, atol=1e-6)


def test_variance_scaling_bound() -> None:
    w = torch.empty(64, 32, 3, 3)
    variance_scaling_(w, 1.0)
    bound = math.sqrt(3.0 / ((32 * 9 + 64 * 9) / 2))
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound


def test_channels_last_matches_contiguous() -> None:
    model = tiny()
    variance_scaling_(model.conv_out.weight, 1.0)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 7])
    ref = model(x, t)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_backward_reaches_every_parameter() -> None:
    model = tiny()
    model.train()
    model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_group_count_fallback_for_tiny_widths() -> None:
    model = tiny()
    assert model.norm_out.num_groups == 8
    assert model.mid.block_1.norm1.num_groups == 16


@pytest.mark.parametrize(
    ("x", "t", "match"),
    [
        (torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), "x: got shape"),
        (torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), "x: got shape"),
        (torch.randn(3, 8, 8), torch.tensor([0]), "x: got shape"),
        (torch.ones(2, 3, 8, 8, dtype=torch.long), torch.tensor([0, 1]), "x: got dtype"),
        (torch.randn(2, 3, 8, 8), torch.tensor([0.0, 1.0]), "t: got dtype"),
        (torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 2]), "t: got shape"),
        (torch.randn(2, 3, 8, 8), torch.tensor([[0], [1]]), "t: got shape"),
        (torch.full((2, 3, 8, 8), float("nan")), torch.tensor([0, 1]), "NaN"),
    ],
)
def test_bad_inputs(x: torch.Tensor, t: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny()(x, t)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(ch=7), "ch:"),
        (dict(ch_mult=()), "ch_mult:"),
        (dict(num_res_blocks=0), "num_res_blocks:"),
        (dict(resolution=6, ch_mult=(1, 2, 2)), "resolution:"),
        (dict(attn_resolutions=(5,)), "attn_resolutions:"),
        (dict(ch=48), "GroupNorm"),
    ],
)
def test_bad_architecture(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY, **kw})  # type: ignore[arg-type]


def _trained_like(dropout: float = 0.1) -> UNet:
    """The tiny U-Net in train mode with dropout and every weight moved off its (partly zero)
    init, so every block gets a gradient."""
    model = tiny(dropout=dropout).train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _loss_and_grads(model: UNet, bf16: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 3, 7, 9])
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(x, t).float().square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


@pytest.mark.parametrize("bf16", [False, True])
def test_activation_checkpointing_keeps_loss_and_gradients(bf16: bool) -> None:
    """Checkpointed blocks recompute the same activations (same dropout masks, same autocast)."""
    plain = _trained_like()
    ckpt = _trained_like().set_activation_checkpointing(True)
    assert not plain.activation_checkpointing and ckpt.activation_checkpointing
    loss_a, grads_a = _loss_and_grads(plain, bf16)
    loss_b, grads_b = _loss_and_grads(ckpt, bf16)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert sum(float(g.abs().sum()) for g in grads_a) > 0


def _saved_bytes(model: UNet) -> int:
    """Bytes autograd keeps for backward after one forward (saved_tensors_hooks see them)."""
    total = 0

    def pack(x: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    x, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 3, 7, 9])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model(x, t).sum()
    return total


def test_activation_checkpointing_keeps_less_for_backward() -> None:
    """The flag takes effect: with it, autograd saves well under half the bytes (the blocks keep
    only their inputs); it is off in inference (no gradients: nothing to save either way)."""
    model = _trained_like()
    plain = _saved_bytes(model)
    ckpt = _saved_bytes(model.set_activation_checkpointing(True))
    assert ckpt < 0.5 * plain, (ckpt, plain)
    with torch.no_grad():
        x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 5])
        on = model.eval()(x, t)
        assert torch.equal(on, model.set_activation_checkpointing(False)(x, t))
    with pytest.raises(ValueError, match="activation_checkpointing"):
        model.set_activation_checkpointing(1)  # type: ignore[arg-type]
    assert UNet(**TINY, activation_checkpointing=True).activation_checkpointing  # type: ignore[arg-type]
