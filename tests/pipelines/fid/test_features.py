"""FID/IS feature extraction, statistics and the Frechet distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_statistics_to_metric

from ddpm_core.metrics import frechet_distance
from pipelines.fid import features as fid
from pipelines.fid.inception import LABEL_CONVERTED, InceptionWeights


@pytest.fixture
def weights(converted_path: Path) -> InceptionWeights:
    return InceptionWeights(converted_path, LABEL_CONVERTED, has_logits=False)


def _digits(n: int, offset: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = load_digits().images[offset : offset + n]  # (n, 8, 8) in 0..16
    return torch.from_numpy((x * 255 / 16).round().astype(np.uint8))[:, None]  # (n, 1, 8, 8)


def test_fid_of_a_set_with_itself_is_zero_and_of_another_set_positive(
    weights: InceptionWeights,
) -> None:
    a, b = _digits(8, 0), _digits(8, 100)
    fa = fid.extract_features(torch.cat([a, b]), weights)["2048"]  # (16, 2048) float64
    assert fa.shape == (16, 2048) and fa.dtype == np.float64
    sa, sb = fid.feature_stats(fa[:8]), fid.feature_stats(fa[8:])
    same, different = fid.fid(sa, sa), fid.fid(sa, sb)
    assert abs(same) < 1e-6 * different
    assert different > 1.0


def test_grayscale_is_replicated_to_rgb(weights: InceptionWeights) -> None:
    gray = _digits(2, 0)
    ours = fid.extract_features(gray, weights)["2048"]
    rgb = fid.extract_features(gray.repeat(1, 3, 1, 1), weights)["2048"]
    np.testing.assert_array_equal(ours, rgb)


def test_frechet_distance_equals_torch_fidelity_float64() -> None:
    g = np.random.default_rng(0)
    x, y = g.normal(size=(300, 64)), g.normal(0.3, 1.5, size=(200, 64)) @ g.normal(size=(64, 64))
    sx, sy = fid.feature_stats(x), fid.feature_stats(y)
    theirs = fid_statistics_to_metric(
        {"mu": sx.mu, "sigma": sx.sigma}, {"mu": sy.mu, "sigma": sy.sigma}, verbose=False
    )["frechet_inception_distance"]
    assert fid.fid(sx, sy) == pytest.approx(theirs, rel=1e-9)
    assert sx.mu.dtype == sx.sigma.dtype == np.float64


def test_low_rank_reduction_is_exact() -> None:
    """Fewer images than dims: the projected computation equals the full-dimension ones."""
    g = np.random.default_rng(1)
    x, y = g.normal(size=(40, 256)), g.normal(0.2, 1.3, size=(30, 256))
    sx, sy = fid.feature_stats(x), fid.feature_stats(y)
    full = frechet_distance(sx.mu, sx.sigma, sy.mu, sy.sigma)
    theirs = fid_statistics_to_metric(
        {"mu": sx.mu, "sigma": sx.sigma}, {"mu": sy.mu, "sigma": sy.sigma}, verbose=False
    )["frechet_inception_distance"]
    assert fid.fid(sx, sy) == pytest.approx(full, rel=1e-6)
    assert fid.fid(sx, sy) == pytest.approx(theirs, rel=1e-6)
    assert abs(fid.fid(sx, sx)) < 1e-9 * float(np.trace(sx.sigma)) * 100


def test_inception_score_bounds() -> None:
    uniform = np.zeros((20, 10))
    assert fid.inception_score(uniform, splits=2) == pytest.approx((1.0, 0.0))
    confident = np.eye(10)[np.arange(20) % 10] * 50.0  # each class equally often, certain
    mean, std = fid.inception_score(confident, splits=2)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="evaluate.isc_splits"):
        fid.inception_score(np.zeros((3, 10)), splits=10)
    with pytest.raises(ValueError, match=">= 2 images"):
        fid.feature_stats(np.zeros((1, 2048)))
    with pytest.raises(ValueError, match="uint8"):
        fid.as_rgb_uint8(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(3, 32, 32\)"):
        fid.check_compatible(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), (3, 32, 32), "FID")


@pytest.mark.ray
def test_features_over_ray_tasks_equal_the_in_process_ones(
    weights: InceptionWeights, local_ray: object
) -> None:
    """Two Ray tasks set up by the model runner (threads, device, backends) give the features
    of one process at the same thread count (one: 0.5 CPU each) bit for bit, in input order.
    (oneDNN may sum in another order at another thread count: the suite's process has two.)"""
    images = _digits(4, 0)
    over_ray = fid.ray_extractor(num_workers=2, cpus_per_worker=0.5)(images, weights, ["2048"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = fid.extract_features(images, weights)["2048"]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(over_ray["2048"], here)
