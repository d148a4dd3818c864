"""`python -m stages.shard`: dry run, atomic output, identical reruns, failures keep old shards."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.artifacts.shards import load_split
from pipelines.config import Params
from stages import shard
from tests.fixtures import write_png
from tests.helpers import params_file


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_dry_run_prints_config_and_writes_nothing(
    tmp_path: Path, make_params: Callable[..., Params], capsys: pytest.CaptureFixture[str]
) -> None:
    params = make_params()
    assert shard.main(["--params", str(params_file(params, tmp_path / "p.yaml")), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["source"] == "digits"
    assert not Path(params.paths.shards).exists()


def test_run_writes_shards_and_rerun_is_identical(
    tmp_path: Path, make_params: Callable[..., Params], capsys: pytest.CaptureFixture[str]
) -> None:
    params = make_params()  # digits, 8x8, 64 images per split, 16 per shard
    argv = ["--params", str(params_file(params, tmp_path / "p.yaml"))]
    assert shard.main(argv) == 0
    out = Path(params.paths.shards)
    assert "train: 64 images (1x8x8) in 4 shards" in capsys.readouterr().out
    first = snapshot(out)
    assert len(first) == 9  # 4 train + 4 test shards + manifest
    images, labels = load_split(out, "train")
    assert images.shape == (64, 1, 8, 8) and labels.max() <= 9
    assert shard.main(argv) == 0
    assert snapshot(out) == first
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_failure_keeps_previous_shards(tmp_path: Path, make_params: Callable[..., Params]) -> None:
    params = make_params()
    assert shard.main(["--params", str(params_file(params, tmp_path / "p.yaml"))]) == 0
    out = Path(params.paths.shards)
    before = snapshot(out)
    folder = tmp_path / "imgs"
    for i in range(20):  # enough for a test split (test_fraction 0.1)
        write_png(folder / f"{i}.png", np.full((8, 8), i, np.uint8))
    (folder / "1.png").write_bytes(b"corrupt")
    bad: dict[str, Any] = {
        "data.source": "image_folder", "data.root": str(folder), "data.raw": str(folder),
    }  # fmt: skip
    argv = ["--params", str(params_file(make_params(bad), tmp_path / "bad.yaml"))]
    with pytest.raises(ValueError, match=r"imgs/1\.png: cannot read image"):
        shard.main(argv)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
