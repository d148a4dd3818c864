"""Tests for the EMA of the weights: the update rule by hand, state round-trip, DDP unwrapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_core.ema import EMA, unwrap
from ddpm_core.unet import UNet


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel / DataParallel: the network is `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def small() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return net


def test_one_update_by_hand() -> None:
    net = small()
    ema = EMA(net, decay=0.9)
    theta0 = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(2.0)
        net[1].num_batches_tracked.fill_(7)
    ema.update(net)
    for e, p0 in zip(ema.model.parameters(), theta0, strict=True):
        torch.testing.assert_close(e, 0.9 * p0 + 0.1 * (p0 + 1.0))
    bn = ema.model[1]
    torch.testing.assert_close(bn.running_mean, torch.full((4,), 0.1 * 2.0))
    assert int(bn.num_batches_tracked) == 7  # integer buffers are copied
    assert ema.num_updates == 1


def test_two_updates_and_decay_override() -> None:
    net = small()
    ema = EMA(net, decay=0.5)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.copy_(w0 + 4.0)
    ema.update(net)
    ema.update(net)
    torch.testing.assert_close(ema.model[0].weight, w0 + 4.0 * (1 - 0.25))
    with torch.no_grad():
        net[0].weight.copy_(w0 - 1.0)
    ema.update(net, decay=0.0)  # official step 0: decay 1e-10, i.e. a copy
    torch.testing.assert_close(ema.model[0].weight, w0 - 1.0)


def test_shadow_is_independent_and_frozen() -> None:
    net = small()
    ema = EMA(net)
    assert all(not p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not torch.equal(ema.model[0].weight, net[0].weight)


def test_wrapped_model_is_unwrapped() -> None:
    net = small()
    ema = EMA(Wrapper(net), decay=0.0)
    assert not hasattr(ema.model, "module")
    with torch.no_grad():
        net[0].bias.fill_(3.0)
    ema.update(Wrapper(net))
    torch.testing.assert_close(ema.model[0].bias, torch.full((4,), 3.0))
    assert unwrap(Wrapper(Wrapper(net))) is net


def test_state_dict_round_trip_and_copy_to() -> None:
    torch.manual_seed(0)
    net = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8)
    ema = EMA(net, decay=0.99)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    ema.update(net)
    restored = EMA(net, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.99 and restored.num_updates == 1
    for a, b in zip(restored.model.parameters(), ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    ema.copy_to(net)
    for a, b in zip(net.parameters(), ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="decay"):
        EMA(small(), decay=1.5)
    ema = EMA(small())
    with pytest.raises(ValueError, match="model"):
        ema.update(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="shadow"):
        ema.load_state_dict({"decay": 0.9, "num_updates": 0})
