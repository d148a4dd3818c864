"""The dataset-source registry (`pipelines/data/sources.py`): one file and one line per source."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_core.config import ConfigError
from pipelines.artifacts.shards import load_split, verify_shards
from pipelines.config import DataConfig, Params, from_dict
from pipelines.data import sources
from pipelines.data.base import ArrayItems, DatasetSource, LazySource, LazySplit, split_indices
from stages import shard
from tests.helpers import REPO, default_params_dict, params_file

# ----------------------------------------------------------------------------------------------
# What a newcomer's file holds (here in the test: `pipelines/data/ramp.py` in the tree)


def open_ramp(cfg: DataConfig, seed: int) -> LazySource:
    """20 horizontal ramps of brightness 10*i, split by data.test_fraction; label i % 2."""
    images = np.stack([np.tile(np.arange(6, dtype=np.uint8) * i, (6, 1)) for i in range(20)])
    train, test = split_indices(len(images), cfg.test_fraction, seed, "ramp")
    labels = np.arange(20) % 2
    splits = {
        "train": LazySplit(ArrayItems.of(images[train], "ramp/train"), labels[train]),
        "test": LazySplit(ArrayItems.of(images[test], "ramp/test"), labels[test]),
    }
    return LazySource(splits, ["even", "odd"], "ramps (test)")


RAMP = DatasetSource(
    open=open_ramp,
    root="none",
    splits="`data.test_fraction`",
    labels="i % 2",
    needs_root=False,
)

# ----------------------------------------------------------------------------------------------


def test_a_source_registered_in_one_line_is_reachable_by_data_source(
    tmp_path: Path, make_params: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One registration line (and the file above): the shard stage CLI writes its shards,
    config validation and the writer take it without any other module changed."""
    monkeypatch.setitem(sources.SOURCES, "ramp", RAMP)  # the one registration line
    over = {"data.source": "ramp", "data.resize": "pad", "data.test_fraction": 0.25}
    params = make_params(over)
    assert shard.main(["--params", str(params_file(params, tmp_path / "p.yaml"))]) == 0
    manifest = verify_shards(params.paths.shards)
    assert (manifest["source"], manifest["classes"]) == ("ramp", ["even", "odd"])
    images, labels = load_split(params.paths.shards, "test")
    want = open_ramp(params.data, params.seed).splits["test"]
    assert torch.equal(labels, torch.from_numpy(want.labels))
    padded = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)  # 6x6 centred on 8x8 (data.resize: pad)
    padded[:, 0, 1:7, 1:7] = torch.from_numpy(want.items.arrays)
    assert torch.equal(images, padded)


def test_unknown_source_lists_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = dataclasses.replace(_digits_cfg(), source="ramp")
    with pytest.raises(ConfigError, match=r"data.source: got 'ramp', expected one of \['digits'"):
        sources.open_source(cfg, 0)
    monkeypatch.setitem(sources.SOURCES, "ramp", RAMP)
    assert len(sources.open_source(cfg, 0).splits["train"]) == 18  # 20, test_fraction 0.1


def test_what_a_source_declares_is_checked() -> None:
    """needs_root: data.root null is refused; downloads: data.download true only where it can."""
    with pytest.raises(ConfigError, match=r"data.root: got None, expected a folder for data"):
        sources.check_source(dataclasses.replace(_digits_cfg(), source="lsun"))
    with pytest.raises(ConfigError, match=r"data.download: got True, but data.source=digits"):
        sources.check_source(dataclasses.replace(_digits_cfg(), download=True))
    mnist = dataclasses.replace(_digits_cfg(), source="mnist", root="x", download=True)
    assert sources.check_source(mnist) is sources.SOURCES["mnist"]


def test_docs_table_lists_every_registered_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/data-sources.md holds the table `docs_table()` renders from the registry."""
    doc = (REPO / "docs" / "data-sources.md").read_text()
    assert sources.docs_table() in doc, "regenerate with pipelines.data.sources.docs_table()"
    monkeypatch.setitem(sources.SOURCES, "ramp", RAMP)  # a source missing from the docs fails
    assert sources.docs_table() not in doc


def _digits_cfg() -> DataConfig:
    """params.yaml's data section (digits), uncapped, test_fraction 0.1."""
    data = from_dict(Params, default_params_dict()).data
    return dataclasses.replace(data, max_images=None, test_fraction=0.1)
