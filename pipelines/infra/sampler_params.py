"""The sampler params read through the registry (`ddpm_core.samplers.registry`).

`sample.sampler` names a registered sampler, `sample.sampler_options.<name>` sets options that
sampler declares, `quality.samplers` lists the curves of the quality stage. `pipelines.config`
types these keys only: importing the samplers there would make every stage (the data stages
too) depend on their code in dvc.yaml. The stages that sample check them here first
(`check_samplers`), so a bad name or option fails before any work with the dotted key.
"""

from __future__ import annotations

from typing import Any

from ddpm_core.config import ConfigError
from ddpm_core.samplers.base import ReverseSampler
from ddpm_core.samplers.registry import SAMPLERS, make_sampler, options
from pipelines.config import Params


def sampler_of(params: Params, name: str | None = None) -> ReverseSampler:
    """Sampler `name` (default `sample.sampler`) with its `sample.sampler_options`, validated.

    ConfigError names the key: `sample.sampler: got 'x', expected one of [...]` or
    `sample.sampler_options.ddim.eta: got 1.5, expected a number in [0, 1]`.
    """
    cfg = params.sample
    chosen, key = (cfg.sampler, "sample.sampler") if name is None else (name, "quality.samplers")
    if chosen not in SAMPLERS:
        raise ConfigError(f"{key}: got {chosen!r}, expected one of {list(SAMPLERS)}")
    try:
        return make_sampler(chosen, cfg.sampler_options.get(chosen))
    except ValueError as e:
        raise ConfigError(f"sample.sampler_options.{e}") from None


def check_samplers(params: Params) -> None:
    """Every sampler param against the registry: `sample.sampler`, each `quality.samplers` and
    each `sample.sampler_options` entry (a sampler name, options it declares)."""
    sampler_of(params)
    for name in params.quality.samplers:
        sampler_of(params, name)
    unknown = sorted(set(params.sample.sampler_options) - set(SAMPLERS))
    if unknown:
        raise ConfigError(
            f"sample.sampler_options: unknown sampler(s) {unknown}; registered: {list(SAMPLERS)}"
        )
    for name in params.sample.sampler_options:
        sampler_of(params, name)


def sampler_record(params: Params) -> dict[str, Any]:
    """`sample.sampler` and every option of it as run (defaults filled): MLflow tags, records."""
    return {"sampler": params.sample.sampler, "sampler_options": options(sampler_of(params))}
