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


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: a connect is refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stage", ["sample", "train"])
def test_an_unreachable_tracking_server_is_one_line_before_any_work(
    stage: str, tmp_path: Path, capsys, monkeypatch, shards_dir: Path, no_ray: object
) -> None:
    """At once (no HTTP retries for minutes, no Ray started): one line naming the URI, exit 2."""
    from stages import sample

    monkeypatch.chdir(REPO)
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in tree["paths"]:
        tree["paths"][key] = str(tmp_path / key)
    tree["paths"]["shards"] = str(shards_dir)
    tree["data"].update(resolution=8, max_images=64)  # the session's shards
    port = _closed_port()
    tree["mlflow"]["tracking_uri"] = f"http://user:secret@127.0.0.1:{port}"
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(tree))
    monkeypatch.setattr("sys.argv", [f"stages.{stage}", "--params", str(p)])
    assert {"sample": sample, "train": train}[stage].main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"http://***@127.0.0.1:{port}" in err[0] and "unreachable" in err[0], err
    assert "secret" not in err[0]
    import ray

    assert not ray.is_initialized()  # refused before the stage connected to Ray
