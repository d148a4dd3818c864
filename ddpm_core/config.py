"""Typed, frozen configs of the model: the diffusion process and the U-Net.

The pipeline's own settings (paths, data, training, sampling, evaluation, Ray, MLflow) and the
strict `params.yaml` loader live in `pipelines.config`; this module holds only what the math and
the network need, so editing the pipeline's config never touches `ddpm_core`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BetaSchedule = Literal["linear", "quad", "cosine", "const"]
MeanType = Literal["eps", "x0", "mean"]
VarType = Literal["fixedlarge", "fixedsmall", "learned"]
LossType = Literal["mse", "kl"]


class ConfigError(ValueError):
    """A params value or key that does not fit the schema; the message names the dotted key."""


def check(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise `ConfigError` naming the dotted `key`, the value and what was expected, unless ok."""
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the parameterisation of p_theta (Ho et al. 2020, Sec. 3-4)."""

    T: int
    beta_schedule: BetaSchedule
    beta_start: float
    beta_end: float
    mean_type: MeanType
    var_type: VarType
    loss_type: LossType

    def __post_init__(self) -> None:
        check(self.T >= 1, "diffusion.T", self.T, "an int >= 1")
        check(
            0.0 < self.beta_start <= self.beta_end < 1.0,
            "diffusion.beta_start/beta_end",
            (self.beta_start, self.beta_end),
            "0 < beta_start <= beta_end < 1",
        )
        # Table 2's learned diagonal Sigma is trained on the true bound L (official `learned`).
        check(
            self.var_type != "learned" or self.loss_type == "kl",
            "diffusion.var_type/loss_type",
            (self.var_type, self.loss_type),
            "loss_type 'kl' with var_type 'learned' (the learned Sigma is trained on the bound L)",
        )


@dataclass(frozen=True)
class UNetConfig:
    """The paper's U-Net (official `unet2d16b2` at ch=128, ch_mult=(1,2,2,2))."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float

    def __post_init__(self) -> None:
        check(self.ch >= 1 and self.ch % 2 == 0, "unet.ch", self.ch, "an even int >= 2")
        check(len(self.ch_mult) >= 1, "unet.ch_mult", self.ch_mult, "a non-empty list of ints")
        check(self.num_res_blocks >= 1, "unet.num_res_blocks", self.num_res_blocks, "an int >= 1")
        check(0.0 <= self.dropout < 1.0, "unet.dropout", self.dropout, "0 <= p < 1")

    def level_resolutions(self, resolution: int) -> tuple[int, ...]:
        """Feature-map resolution at each U-Net level, e.g. (32, 16, 8, 4) for CIFAR-10."""
        return tuple(resolution // 2**i for i in range(len(self.ch_mult)))
