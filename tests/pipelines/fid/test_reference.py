"""Reference statistics of the real splits: computed once, cached, keyed; the fid_stats stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipelines.artifacts.fid_stats import load_stats
from pipelines.config import Params
from pipelines.data.stage import build_shards
from pipelines.fid.features import extract_features
from pipelines.fid.inception import LABEL_CONVERTED, InceptionWeights
from pipelines.fid.reference import reference_splits, reference_stats, write_reference_stats


@pytest.fixture
def weights(converted_path: Path) -> InceptionWeights:
    return InceptionWeights(converted_path, LABEL_CONVERTED, has_logits=False)


@pytest.fixture
def shards(make_params: Callable[..., Params], tmp_path: Path) -> Path:
    """Real shards of the tiny default params: digits at 8x8, 1 channel."""
    params = make_params()
    build_shards(params.data, params.seed, tmp_path / "shards")
    return tmp_path / "shards"


def test_reference_stats_are_cached_and_keyed(shards: Path, weights: InceptionWeights) -> None:
    stats_dir = shards.parent / "fid_stats"
    r1 = write_reference_stats(shards, stats_dir, "train", 6, weights, extract_features)
    assert not r1.cached and r1.count == 6 and r1.image_shape == (1, 8, 8)
    r2 = write_reference_stats(shards, stats_dir, "train", 6, weights, extract_features)
    assert r2.cached and r2.path == r1.path
    np.testing.assert_array_equal(r1.stats.sigma, r2.stats.sigma)
    read = reference_stats(shards, stats_dir, "train", 6, weights)  # what the readers get
    assert read.path == r1.path
    np.testing.assert_array_equal(read.stats.mu, r1.stats.mu)
    r3 = write_reference_stats(shards, stats_dir, "train", 5, weights, extract_features)
    assert not r3.cached and r3.path != r1.path  # another count: another file
    assert len(list(stats_dir.glob("*.npz"))) == 2
    key = r1.path.stem.rsplit("-", 1)[1]
    with pytest.raises(ValueError, match="cache key"):
        load_stats(r1.path, key="0" * 16)  # the file does not hold the key asked for
    assert load_stats(r1.path, key).count == 6


def test_reference_splits_headline_first(
    make_params: Callable[..., Params], tmp_path: Path
) -> None:
    params = make_params({"evaluate.fid.reference": "test"})
    with pytest.raises(FileNotFoundError, match="run the shard stage"):
        reference_splits(params, tmp_path)
    build_shards(params.data, params.seed, Path(params.paths.shards))
    assert reference_splits(params, tmp_path) == ["test", "train"]
    assert reference_splits(make_params(), tmp_path) == ["train", "test"]


def test_readers_fail_clearly_on_missing_or_stale_stats_and_write_nothing(
    shards: Path, weights: InceptionWeights
) -> None:
    """Only the fid_stats stage writes its output: a reader on a cache miss raises, naming the
    file and the stage to run, and leaves the folder as it was."""
    stats_dir = shards.parent / "fid_stats"
    stats_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"train split \(6 images.*dvc repro fid_stats"):
        reference_stats(shards, stats_dir, "train", 6, weights)
    assert list(stats_dir.iterdir()) == []
    write_reference_stats(shards, stats_dir, "train", 6, weights, extract_features)
    with pytest.raises(FileNotFoundError, match="missing or stale"):  # made for another count
        reference_stats(shards, stats_dir, "train", 5, weights)
    assert len(list(stats_dir.glob("*.npz"))) == 1
