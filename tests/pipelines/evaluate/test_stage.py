"""The evaluate stage's NLL splits: which splits `evaluate.nll_split` evaluates, and the labels
of each split and of the gap in the metrics (the full stage runs in tests/stages)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.config import Params
from pipelines.data.stage import build_shards
from pipelines.evaluate.metrics.nll import NllResult, nll_splits
from pipelines.evaluate.nll import NllSummary

MakeParams = Callable[..., Params]


def _shards(params: Params) -> Params:
    build_shards(params.data, params.seed, Path(params.paths.shards))
    return params


@pytest.mark.parametrize(
    ("split", "want"), [("test", ("test",)), ("train", ("train",)), ("both", ("test", "train"))]
)
def test_nll_split_selects_the_splits_headline_first(
    make_params: MakeParams, tmp_path: Path, split: str, want: tuple[str, ...]
) -> None:
    params = _shards(make_params({"evaluate.nll_split": split}))
    assert nll_splits(params, tmp_path) == want


def test_both_splits_are_labelled_with_the_gap_train_minus_test() -> None:
    test, train = NllSummary(3.0, 0.03, 0.01, 0.5, 8), NllSummary(2.8, 0.04, 0.01, 0.5, 8)
    m = NllResult(test, "test", 1.0, train).metrics()
    assert m["nll_split"] == "both" and m["nll_bpd"] == m["nll_test_bpd"] == 3.0
    assert m["nll_train_bpd"] == 2.8 and m["nll_train_images"] == 8
    assert m["nll_gap_bpd"] == pytest.approx(-0.2) and m["nll_gap_bpd_sem"] == pytest.approx(0.05)
    assert "gap train - test -0.2000" in NllResult(test, "test", 1.0, train).summary()
    only = NllResult(test, "test", 1.0).metrics()  # the default: today's keys, nothing more
    assert only["nll_split"] == "test" and not any("train" in k or "gap" in k for k in only)
    assert math.isclose(only["nll_bpd_sem"], 0.03)
