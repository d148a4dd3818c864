"""The sampler params through the registry: errors name the dotted key; the MLflow Model's
params and the sample record list what the registry declares."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from ddpm_core.config import ConfigError
from ddpm_core.samplers.dpmpp_2m import DpmSolverPP2M
from ddpm_core.samplers.registry import SAMPLERS, options_of
from pipelines.config import Params
from pipelines.infra.sampler_params import check_samplers, sampler_of, sampler_record
from pipelines.train.mlflow_model import signature

MakeParams = Callable[..., Params]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sample.sampler": "euler"}, "sample.sampler: got 'euler', expected one of ['ancestral'"),
        ({"quality.samplers": ["ddim", "lms"]}, "quality.samplers: got 'lms', expected one of"),
        (
            {"sample.sampler_options": {"ddim": {"eta": 1.5}}},
            "sample.sampler_options.ddim.eta: got 1.5, expected a number in [0, 1]",
        ),
        (
            {"sample.sampler_options": {"heun": {"s_churn": 1.0}}},
            "sample.sampler_options.heun: unknown option(s) ['s_churn']; declared:",
        ),
        (
            {"sample.sampler_options": {"plms": {}}},
            "sample.sampler_options: unknown sampler(s) ['plms']; registered:",
        ),
    ],
)
def test_bad_sampler_params_name_the_key(
    make_params: MakeParams, overrides: dict[str, object], message: str
) -> None:
    params = make_params(overrides)  # loads: config.py types the keys only
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_samplers(params)


def test_options_reach_the_sampler_and_its_record(make_params: MakeParams) -> None:
    opts = {"dpmpp_2m": {"clip_denoised": True}}
    params = make_params({"sample.sampler": "dpmpp_2m", "sample.sampler_options": opts})
    check_samplers(params)
    assert sampler_of(params) == DpmSolverPP2M(clip_denoised=True)
    assert sampler_record(params) == {"sampler": "dpmpp_2m", "sampler_options": opts["dpmpp_2m"]}


def test_mlflow_model_params_are_the_registrys_options(make_params: MakeParams) -> None:
    """The pyfunc's params: `sampler` and `<name>.<option>` of every registered sampler, with
    the run's `sample.*` values as defaults."""
    params = make_params({"sample.sampler": "ddim", "sample.sampler_options": {"ddim": {"eta": 1}}})
    specs = {p.name: p.default for p in signature(params).params.params}
    names = {f"{n}.{k}" for n in SAMPLERS for k in options_of(n)}
    assert set(specs) == {"seed", "stride", "sampler", *names}
    assert specs["sampler"] == "ddim" and specs["ddim.eta"] == 1.0
    assert specs["heun.clip_denoised"] is False


def test_pyfunc_picks_the_sampler_and_options_from_its_params(make_params: MakeParams) -> None:
    """`predict(params=...)`'s sampler: the run's `sample.*` unless `sampler` / `<name>.<opt>`
    say otherwise (numpy scalars as MLflow may hand them); errors name the param."""
    import numpy as np

    from ddpm_core.samplers.ddim import DDIM
    from ddpm_core.samplers.heun import Heun
    from pipelines.config import to_dict
    from pipelines.infra.pyfunc_model import DdpmSampler

    model = DdpmSampler()
    model.config = to_dict(make_params({"sample.sampler_options": {"ddim": {"eta": 0.25}}}))
    assert model.sampler({"sampler": "ddim"}) == DDIM(0.25)
    assert model.sampler({"sampler": "ddim", "ddim.eta": np.float64(1.0)}) == DDIM(1.0)
    assert model.sampler({"sampler": "heun", "heun.clip_denoised": True}) == Heun(True)
    with pytest.raises(ValueError, match=re.escape("params.sampler: got 'lms', expected one of")):
        model.sampler({"sampler": "lms"})
    with pytest.raises(ValueError, match=re.escape("params.ddim.eta: got 2.0, expected a number")):
        model.sampler({"sampler": "ddim", "ddim.eta": 2})
