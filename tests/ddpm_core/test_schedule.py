"""Beta schedules: paper values, monotonicity and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpm_core.schedule import SCHEDULES, make_betas


def test_linear_schedule_matches_paper_values() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    alphas_cumprod = np.cumprod(1.0 - betas)
    assert alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-4)
    # beta_tilde[1] = beta[1] (1 - alpha_bar[0]) / (1 - alpha_bar[1])
    beta_tilde_1 = betas[1] * (1.0 - alphas_cumprod[0]) / (1.0 - alphas_cumprod[1])
    assert beta_tilde_1 == pytest.approx(5.4532e-5, rel=1e-4)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_alphas_cumprod_monotone_in_unit_interval(kind: str) -> None:
    betas = make_betas(kind, 1000)
    assert np.all(betas > 0) and np.all(betas < 1)
    ab = np.cumprod(1.0 - betas)
    assert np.all(ab > 0) and np.all(ab <= 1)
    assert np.all(np.diff(ab) < 0)


def test_quad_const_cosine_formulas() -> None:
    quad = make_betas("quad", 10, 1e-4, 0.02)
    assert quad[0] == pytest.approx(1e-4) and quad[-1] == pytest.approx(0.02)
    assert np.allclose(np.sqrt(quad), np.linspace(0.01, math.sqrt(0.02), 10))
    assert np.all(make_betas("const", 7, 1e-4, 0.03) == 0.03)
    T, s = 50, 0.008
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    want = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    assert np.allclose(make_betas("cosine", T), want, rtol=1e-12)
    assert make_betas("cosine", T)[-1] == 0.999


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("sigmoid", 10), "kind"),
        (("linear", 0), "T"),
        (("linear", 10, 0.1, 0.01), "beta_start"),
        (("linear", 10, 1e-4, 1.0), "beta_end"),
    ],
)
def test_bad_input_names_argument(args: tuple[object, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_betas(*args)  # type: ignore[arg-type]
