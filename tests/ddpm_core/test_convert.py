"""Tests for the diffusers -> UNet weight converter against real diffusers models."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch

from ddpm_core.convert import (
    diffusers_config_from_unet,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)
from ddpm_core.unet import UNet
from tests.helpers import CIFAR10_CONFIG, random_diffusers


def tiny_config(levels: int) -> dict[str, Any]:
    """Same structure as CIFAR10_CONFIG, scaled down; attention at the second level."""
    down = ["AttnDownBlock2D" if i == 1 else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if i == 1 else "UpBlock2D" for i in range(levels)][::-1]
    return {
        **CIFAR10_CONFIG,
        "block_out_channels": [16, 32, 32][:levels],
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 16,
        "in_channels": 2,
        "out_channels": 2,
    }


@pytest.mark.parametrize("levels", [2, 3])
def test_outputs_match_diffusers(levels: int) -> None:
    config = tiny_config(levels)
    ref = random_diffusers(config)
    model = UNet(**unet_config_from_diffusers(config)).eval()
    model.load_state_dict(state_dict_from_diffusers(ref.state_dict()), strict=True)
    x = torch.randn(3, 2, 16, 16)
    t = torch.tensor([0, 37, 999])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = model(x, t)
    assert expected.abs().mean() > 1e-2  # random weights: a non-trivial output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_deprecated_attention_key_names() -> None:
    """Old checkpoint files store query/key/value/proj_attn instead of to_q/to_k/to_v/to_out.0."""
    config = tiny_config(2)
    sd = random_diffusers(config).state_dict()
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    old = {}
    for key, value in sd.items():
        for new_name, old_name in renames.items():
            key = key.replace(new_name, old_name)
        old[key] = value
    converted_old, converted_new = state_dict_from_diffusers(old), state_dict_from_diffusers(sd)
    assert converted_old.keys() == converted_new.keys()
    for key, value in converted_new.items():
        torch.testing.assert_close(converted_old[key], value, atol=0, rtol=0)


def test_cifar10_config_keys_and_shapes_map() -> None:
    """The published CIFAR-10 layout loads strictly into the 35,746,307-parameter UNet."""
    kwargs = unet_config_from_diffusers(CIFAR10_CONFIG)
    assert kwargs["ch"] == 128 and kwargs["ch_mult"] == (1, 2, 2, 2)
    assert kwargs["attn_resolutions"] == (16,) and kwargs["num_res_blocks"] == 2
    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(**CIFAR10_CONFIG)
    model = UNet(**kwargs)
    converted = state_dict_from_diffusers(ref.state_dict())
    model.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    torch.testing.assert_close(model.conv_out.weight, ref.conv_out.weight, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos"),
        ({"downsample_padding": 1}, "downsample_padding"),
        ({"attention_head_dim": 8}, "attention_head_dim"),
        ({"up_block_types": ["UpBlock2D"] * 4}, "up_block_types"),
        ({"block_out_channels": [128, 192, 256, 256]}, "block_out_channels"),
    ],
)
def test_bad_config(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unet_config_from_diffusers({**CIFAR10_CONFIG, **change})


def test_missing_key_defaults_follow_diffusers() -> None:
    config = {k: v for k, v in CIFAR10_CONFIG.items() if k != "freq_shift"}  # diffusers default 0
    with pytest.raises(ValueError, match="freq_shift"):
        unet_config_from_diffusers(config)


def test_unknown_key_is_named() -> None:
    sd = random_diffusers(tiny_config(2)).state_dict()
    sd["class_embedding.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="class_embedding.weight"):
        state_dict_from_diffusers(sd)


# ----------------------------------------------------------------------------------------------
# Export: UNet -> diffusers


@pytest.mark.parametrize("out_channels", [2, 4])  # 4 = 2C: the learned-variance head
def test_export_to_diffusers_gives_the_same_eps(out_channels: int) -> None:
    kwargs = {"in_channels": 2, "out_channels": out_channels, "ch": 16, "ch_mult": (1, 2, 2),
              "num_res_blocks": 1, "attn_resolutions": (8,), "dropout": 0.0, "resolution": 16,
              "num_groups": 8}  # fmt: skip
    torch.manual_seed(0)
    ours = UNet(**kwargs).eval()
    with torch.no_grad():
        for p in ours.parameters():  # every weight random, the 1e-10-scaled layers too
            p.normal_(0.0, 0.1)
    config = diffusers_config_from_unet(kwargs)
    theirs = diffusers.UNet2DModel(**config).eval()
    theirs.load_state_dict(state_dict_to_diffusers(ours.state_dict(), n_levels=3), strict=True)
    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 17, 999])
    with torch.no_grad():
        want, got = ours(x, t), theirs(x, t).sample
    assert float((got - want).norm() / want.norm()) <= 1e-5
    # and back: the round trip is exact, the config too
    back = state_dict_from_diffusers(theirs.state_dict())
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    assert unet_config_from_diffusers(config) == {**kwargs, "ch_mult": (1, 2, 2)}


def test_export_names_a_key_it_cannot_place() -> None:
    with pytest.raises(ValueError, match="'extra.weight'"):
        state_dict_to_diffusers({"extra.weight": torch.zeros(1)}, n_levels=2)
