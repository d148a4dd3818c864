"""Reference statistics files: float64 round trip, the cache key, the file name; the Inception
weights stored beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.artifacts.fid_stats import (
    WEIGHTS_FILE,
    FidStats,
    InceptionWeights,
    load_features,
    load_inception,
    load_stats,
    reference_key,
    save_inception,
    save_stats,
    stats_path,
)

MANIFEST = {"splits": {"train": {"shards": [{"sha256": "a" * 64}, {"sha256": "b" * 64}]}}}


def test_key_follows_shards_count_and_weights() -> None:
    key = reference_key(MANIFEST, "train", 10, "w1")
    assert len(key) == 16 and key == reference_key(MANIFEST, "train", 10, "w1")
    assert key != reference_key(MANIFEST, "train", 11, "w1")
    assert key != reference_key(MANIFEST, "train", 10, "w2")
    assert stats_path(Path("s"), "train", 10, key) == Path(f"s/train-10-{key}.npz")


def test_round_trip_is_exact_and_the_key_is_checked(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    stats = FidStats(g.normal(size=4), g.normal(size=(4, 4)), 7)
    features = g.normal(size=(7, 4)).astype(np.float32)
    path = tmp_path / "stats" / "train-7-k.npz"
    save_stats(path, stats, {"key": "k", "split": "train"}, features)
    back = load_stats(path, "k")
    assert back.count == 7 and back.mu.dtype == np.float64
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(load_features(path), features)  # KID's reference side
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically
    with pytest.raises(ValueError, match="cache key k, expected other"):
        load_stats(path, "other")


def test_features_must_match_the_count_and_an_old_file_says_to_rerun(tmp_path: Path) -> None:
    stats = FidStats(np.zeros(4), np.eye(4), 3)
    with pytest.raises(ValueError, match=r"features \(2, 4\), expected \(3, D\)"):
        save_stats(tmp_path / "a.npz", stats, {}, np.zeros((2, 4)))
    old = tmp_path / "old.npz"  # as the stage wrote it before features were kept
    np.savez(old, mu=stats.mu, sigma=stats.sigma, count=3, meta="{}")
    with pytest.raises(ValueError, match=r"no reference features .*dvc repro fid_stats"):
        load_features(old)


def test_weights_are_stored_with_their_label_and_checked_on_load(tmp_path: Path) -> None:
    src = tmp_path / "w.pth"
    src.write_bytes(b"weights-v1")
    stored = save_inception(tmp_path / "stats", InceptionWeights(src, "converted", False))
    assert stored.path == tmp_path / "stats" / WEIGHTS_FILE
    assert load_inception(tmp_path / "stats") == stored
    # the stored copy has no machine-specific path in it: identical bytes on every machine
    assert str(tmp_path) not in (tmp_path / "stats" / "inception.json").read_text()
    stored.path.write_bytes(b"weights-v2")  # replaced behind DVC's back
    with pytest.raises(ValueError, match=r"inception\.pth: sha256 .* rerun the fid_stats stage"):
        load_inception(tmp_path / "stats")
    with pytest.raises(FileNotFoundError, match=r"run the fid_stats stage first"):
        load_inception(tmp_path / "elsewhere")
