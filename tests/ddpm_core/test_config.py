"""The model configs check their own values and name the dotted key."""

from __future__ import annotations

import dataclasses

import pytest

from ddpm_core.config import ConfigError, DiffusionConfig, UNetConfig
from tests.helpers import PAPER_DIFFUSION, PAPER_UNET

DIFFUSION = dataclasses.asdict(PAPER_DIFFUSION)
UNET = dataclasses.asdict(PAPER_UNET)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("T", 0, "diffusion.T: got 0, expected an int >= 1"),
        ("beta_end", 1.0, "diffusion.beta_start/beta_end: got (0.0001, 1.0)"),
        (
            "var_type",
            "learned",
            "diffusion.var_type/loss_type: got ('learned', 'mse'), expected "
            "loss_type 'kl' with var_type 'learned'",
        ),
    ],
)
def test_diffusion_config_names_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DiffusionConfig(**{**DIFFUSION, key: value})  # type: ignore[arg-type]


def test_learned_variance_is_accepted_with_the_bound() -> None:
    cfg = DiffusionConfig(**{**DIFFUSION, "var_type": "learned", "loss_type": "kl"})
    assert cfg.var_type == "learned"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ch", 7, "unet.ch: got 7, expected an even int >= 2"),
        ("ch_mult", (), "unet.ch_mult: got (), expected a non-empty list"),
        ("dropout", 1.0, "unet.dropout: got 1.0, expected 0 <= p < 1"),
    ],
)
def test_unet_config_names_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        UNetConfig(**{**UNET, key: value})  # type: ignore[arg-type]


def test_level_resolutions() -> None:
    assert UNetConfig(**UNET).level_resolutions(32) == (32, 16, 8, 4)  # type: ignore[arg-type]
