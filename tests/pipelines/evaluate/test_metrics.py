"""The evaluate stage's metric registry: KID against torch-fidelity's own, the names and the
champion gate's metric checked against what the metrics declare."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from torch_fidelity import calculate_metrics

from ddpm_core.config import ConfigError
from pipelines.artifacts.shards import load_split
from pipelines.config import Params
from pipelines.data.stage import build_shards
from pipelines.evaluate.metrics.base import Inputs
from pipelines.evaluate.metrics.kid import KID, kid_seed
from pipelines.evaluate.metrics.registry import METRICS, listed
from pipelines.fid.features import extract_features
from pipelines.fid.inception import LABEL_CONVERTED, POOL3, InceptionWeights
from pipelines.fid.reference import write_reference_stats

MakeParams = Callable[..., Params]


class Images(Dataset[torch.Tensor]):
    """uint8 (3, H, W) images, as torch-fidelity reads a Dataset input."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.expand(-1, 3, -1, -1).contiguous()  # grayscale -> RGB, as ours

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def test_kid_matches_torch_fidelity(
    make_params: MakeParams, tmp_path: Path, converted_path: Path
) -> None:
    """Our KID of 8 digits vs 8 reference digits (features through the fid_stats stage's
    file) is torch-fidelity's `calculate_metrics(kid=True)` of the same images and weights."""
    params = make_params({"evaluate.kid.subsets": 5, "evaluate.kid.subset_size": 5})
    shards = tmp_path / "shards"
    build_shards(params.data, params.seed, shards)
    weights = InceptionWeights(converted_path, LABEL_CONVERTED, has_logits=False)
    ref = write_reference_stats(shards, tmp_path / "stats", "train", 8, weights, extract_features)
    samples = load_split(shards, "test", max_images=8)[0]  # (8, 1, 8, 8) uint8: "generated"
    real = load_split(shards, "train", max_images=8)[0]
    features = extract_features(samples, weights, (POOL3,))
    measured = KID.measure(Inputs(params, tmp_path, weights, features, (ref,), 1.0))

    theirs = calculate_metrics(
        input1=Images(samples), input2=Images(real), kid=True, cuda=False, verbose=False,
        cache=False, save_cpu_ram=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(converted_path), kid_subsets=5, kid_subset_size=5,
        rng_seed=kid_seed(params.seed),
    )  # fmt: skip
    mean, std = theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"]
    assert abs(mean) > 1e-4  # real, distinct sets: not a vacuous zero
    assert measured.metrics["kid"] == pytest.approx(mean, rel=1e-4, abs=1e-7)
    assert measured.metrics["kid_std"] == pytest.approx(std, rel=1e-3, abs=1e-7)
    assert measured.metrics["kid_reference_images"] == 8
    assert measured.comparable[0] == "train"


def test_kid_refuses_subsets_larger_than_a_side(make_params: MakeParams) -> None:
    from pipelines.evaluate.metrics.kid import kid

    with pytest.raises(ValueError, match=r"evaluate.kid.subset_size: 5 is more than the 4 samples"):
        kid(np.zeros((4, 3)), np.zeros((9, 3)), 2, 5, 0)
    with pytest.raises(ConfigError, match=r"evaluate.kid.subset_size: got 9, expected <= "):
        make_params({"evaluate.kid.subset_size": 9})  # more than evaluate.fid.images = 8


def _with(params: Params, metrics: tuple[str, ...], promote_on: str) -> Params:
    evaluate = dataclasses.replace(params.evaluate, metrics=metrics)
    mlflow = dataclasses.replace(params.mlflow, promote_on=promote_on)
    return dataclasses.replace(params, evaluate=evaluate, mlflow=mlflow)


def test_names_and_the_gates_metric_are_checked_against_the_registry(
    make_params: MakeParams,
) -> None:
    params = make_params()
    assert [m.name for m in listed(params)] == list(params.evaluate.metrics)
    assert [m.name for m in listed(_with(params, ("nll", "kid"), "kid"))] == ["nll", "kid"]
    assert listed(_with(params, ("fid", "nll"), "nll_bpd"))
    with pytest.raises(ConfigError, match=r"evaluate.metrics: got unknown \['fld'\]"):
        listed(_with(params, ("fld",), "fid"))
    with pytest.raises(ConfigError, match=r"mlflow.promote_on: got 'isc_mean'.*lower-is-better"):
        listed(_with(params, ("fid", "isc"), "isc_mean"))  # higher is better
    with pytest.raises(ConfigError, match=r"mlflow.promote_on: got 'kid'.*\['fid', 'nll_bpd'\]"):
        listed(_with(params, ("fid", "nll"), "kid"))  # not listed
    # Every metric declares what it needs, reads and logs.
    for name, metric in METRICS.items():
        assert metric.name == name and metric.params and metric.logs
        assert all(any(fnmatch(k, pat) for pat in metric.logs) for k in metric.lower_is_better)
