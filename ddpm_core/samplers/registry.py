"""The samplers by name (`sample.sampler`, `quality.samplers`): one line per sampler.

A sampler's options are its dataclass fields (bool, int, float or str, each with a default);
`make_sampler` validates a params mapping against them, and everything that lists or records
samplers (config checks, labels, MLflow, the pyfunc model, docs) reads `SAMPLERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, get_type_hints

from ddpm_core.samplers.ancestral import Ancestral
from ddpm_core.samplers.base import ReverseSampler
from ddpm_core.samplers.ddim import DDIM
from ddpm_core.samplers.dpmpp_2m import DpmSolverPP2M
from ddpm_core.samplers.heun import Heun

SAMPLERS: dict[str, type[ReverseSampler]] = {
    "ancestral": Ancestral,
    "ddim": DDIM,
    "dpmpp_2m": DpmSolverPP2M,
    "heun": Heun,
}
OPTION_TYPES = (bool, int, float, str)


def options_of(name: str) -> dict[str, tuple[type, Any]]:
    """{option: (type, default)} that sampler `name` declares (its dataclass fields)."""
    cls = _sampler_class(name)
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _sampler_class(name: str) -> type[ReverseSampler]:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"sampler: got {name!r}, expected one of {list(SAMPLERS)}")
    return SAMPLERS[name]


def _check_option(name: str, key: str, value: object, tp: type) -> Any:
    ok = type(value) is tp or (tp is float and type(value) is int)
    if not ok:
        raise ValueError(f"{name}.{key}: got {value!r}, expected {tp.__name__}")
    return float(value) if tp is float else value  # type: ignore[arg-type]


def make_sampler(name: str, options: Mapping[str, Any] | None = None) -> ReverseSampler:
    """Sampler `name` with `options` (unset ones take the declared defaults), validated.

    ValueError names the sampler and option: `sampler: got 'x', expected one of [...]`,
    `ddim.eta: got 1.5, expected a number in [0, 1]`, `ddim: unknown option(s) [...]`.
    """
    cls, declared = _sampler_class(name), options_of(name)
    given = dict(options or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; declared: {sorted(declared)}")
    kwargs = {k: _check_option(name, k, v, declared[k][0]) for k, v in given.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # the sampler's own range checks (__post_init__)
        raise ValueError(f"{name}.{e}") from None


def name_of(sampler: ReverseSampler) -> str:
    """The registered name of `sampler`'s class."""
    return next(n for n, cls in SAMPLERS.items() if type(sampler) is cls)


def options(sampler: ReverseSampler) -> dict[str, Any]:
    """Every option of `sampler` with its value (defaults filled in)."""
    assert dataclasses.is_dataclass(sampler)
    return {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)}


def is_paper(sampler: ReverseSampler) -> bool:
    """The paper's own sampler with every option at its default (Algorithm 2 as published)."""
    return sampler.paper and sampler == type(sampler)()
