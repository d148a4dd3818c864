"""Min-FID selection without Ray: the curve's argmin, ties, NaN, the export choice, the params."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from ddpm_core.config import ConfigError
from pipelines.config import Params
from pipelines.train.selection import FidCurve, choose_export


def test_record_says_when_a_point_is_the_new_minimum() -> None:
    curve = FidCurve()
    assert curve.record(2, 30.0)
    assert curve.record(4, 20.0)
    assert not curve.record(6, 25.0)
    assert not curve.record(8, 20.0)  # a tie keeps the earlier step
    assert not curve.record(10, math.nan)  # NaN is never the best
    assert curve.best == (4, 20.0)


def test_points_must_come_in_step_order() -> None:
    curve = FidCurve([(4, 1.0)])
    with pytest.raises(ValueError, match="step 4"):
        curve.record(4, 0.5)


def test_choose_export() -> None:
    curve = FidCurve([(2, 9.0), (4, 3.0), (6, 5.0)])
    last = choose_export("last", curve, 6)
    assert (last.step, last.best) == (6, False) and "train.export=last" in last.reason
    best = choose_export("best_fid", curve, 6)
    assert (best.step, best.best) == (4, True)
    assert "lowest in-training FID (3)" in best.reason and "of 3 points" in best.reason
    with pytest.raises(ValueError, match="no finite in-training FID"):
        choose_export("best_fid", FidCurve([(2, math.nan)]), 6)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"train.export": "best_fid"}, ["train.export", "train.fid_every > 0"]),
        ({"train.fid_every": 5}, ["train.fid_every", "train.steps=4"]),
        ({"train.fid_every": -1}, ["train.fid_every"]),
        ({"train.fid_images": 1}, ["train.fid_images", ">= 2"]),
        ({"train.fid_stride": 21}, ["train.fid_stride", "diffusion.T=20"]),
        ({"train.export": "min"}, ["train.export", "best_fid"]),
    ],
)
def test_bad_selection_params_are_refused_at_load(
    make_params: Callable[..., Params], overrides: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_params(overrides)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_best_fid_with_fid_every_loads(make_params: Callable[..., Params]) -> None:
    params = make_params({"train.export": "best_fid", "train.fid_every": 2})
    assert params.train.export == "best_fid" and params.train.fid_every == 2
