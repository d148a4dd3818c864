"""Bad input reads like a tool's error: one line naming file, key, value and what was expected,
a non-zero exit, the traceback only with --verbose (issue 21)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError
from stages import train

REPO = Path(__file__).resolve().parents[1]


def _params_with_bad_batch(tmp_path: Path) -> Path:
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["train"]["batch_size"] = -3
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def test_bad_param_is_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    p = _params_with_bad_batch(tmp_path)
    monkeypatch.setattr("sys.argv", ["stages.train", "--params", str(p)])
    assert train.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "train.batch_size" in err[0] and "-3" in err[0] and "Traceback" not in err[0]


def test_missing_params_file_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["stages.train", "--params", str(tmp_path / "nope.yaml")])
    assert train.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0], err


def test_verbose_raises_with_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    p = _params_with_bad_batch(tmp_path)
    monkeypatch.setattr("sys.argv", ["stages.train", "--params", str(p), "--verbose"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        train.main()
