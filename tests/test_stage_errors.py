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


@pytest.mark.parametrize("stage", ["sample", "train", "all"])
def test_an_unreachable_tracking_server_is_one_line_before_any_work(
    stage: str, tmp_path: Path, capsys, monkeypatch, shards_dir: Path, no_ray: object
) -> None:
    """At once (no HTTP retries for minutes, no Ray started): one line naming the URI, exit 2."""
    from stages import all as all_
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
    only_train = ["--stages", "train"] if stage == "all" else []  # never the session's shards
    monkeypatch.setattr("sys.argv", [f"stages.{stage}", "--params", str(p), *only_train])
    assert {"sample": sample, "train": train, "all": all_}[stage].main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"http://***@127.0.0.1:{port}" in err[0] and "unreachable" in err[0], err
    assert "secret" not in err[0]
    import ray

    assert not ray.is_initialized()  # refused before the stage connected to Ray


# ----------------------------------------------------------------------------------------------
# Every entry point, `stages.all` and `stages.retrain` included, as a user runs it (argv from the
# command line): a bad param, a missing or damaged input is one line naming it, exit 2, before
# Ray starts; the traceback only with --verbose (issue 30).

ENTRY_POINTS = (
    "shard",
    "fid_stats",
    "train",
    "sample",
    "evaluate",
    "quality",
    "import_diffusers",
    "all",
    "retrain",
)


def _cli(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """`python -m stages.<name> <args>` in this process (sys.argv, `main()` without argv)."""
    import importlib

    module = importlib.import_module(f"stages.{name}")
    monkeypatch.setattr("sys.argv", [f"stages.{name}", *args])
    code: int = module.main()
    return code


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line (INFO log lines of the work done before it aside), no traceback."""
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _tiny_file(tmp_path: Path, **changes: object) -> Path:
    """The tiny params (every path under `tmp_path`) with `changes` ("section.key": value)."""
    from pipelines.config import to_dict
    from tests.helpers import build_params, set_dotted

    tree = to_dict(build_params(tmp_path))
    for key, value in changes.items():
        set_dotted(tree, key, value)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _checkpoint_arg(name: str, tmp_path: Path) -> list[str]:
    return ["--checkpoint", str(tmp_path / "released")] if name == "import_diffusers" else []


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_cli_answers_a_bad_param_in_one_line_with_exit_2(
    name: str, tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    monkeypatch.chdir(tmp_path)
    p = _tiny_file(tmp_path, **{"train.batch_size": -3})
    assert _cli(name, ["--params", str(p), *_checkpoint_arg(name, tmp_path)], monkeypatch) == 2
    line = _one_line(capsys)
    assert "p.yaml" in line and "train.batch_size" in line and "-3" in line, line
    import ray

    assert not ray.is_initialized()


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_cli_accepts_verbose_and_then_shows_the_exception(
    name: str, tmp_path: Path, monkeypatch, no_ray: object
) -> None:
    monkeypatch.chdir(tmp_path)
    p = _tiny_file(tmp_path, **{"train.batch_size": -3})
    args = ["--params", str(p), "--verbose", *_checkpoint_arg(name, tmp_path)]
    with pytest.raises(ConfigError, match="train.batch_size"):
        _cli(name, args, monkeypatch)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("shard", []), ("all", []), ("shard", ["--dry-run"]), ("all", ["--dry-run"])],
)
def test_a_missing_data_root_is_one_line_naming_the_key_and_starts_nothing(
    name: str, extra: list[str], tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    monkeypatch.chdir(tmp_path)
    nowhere = str(tmp_path / "raw" / "nowhere")
    changes = {"data.source": "image_folder", "data.root": nowhere, "data.raw": nowhere}
    p = _tiny_file(tmp_path, **changes, **{"data.channels": 3})
    assert _cli(name, ["--params", str(p), *extra], monkeypatch) == 2
    line = _one_line(capsys)
    assert "data.root" in line and nowhere in line, line
    import ray

    assert not ray.is_initialized()
    assert not (tmp_path / "data").exists()  # no output folder was made


@pytest.mark.parametrize(
    ("name", "args", "key"),
    [
        ("sample", [], "paths.model"),
        ("evaluate", [], "paths.shards"),
        ("train", [], "paths.shards"),
        ("all", ["--stages", "sample", "evaluate"], "paths.model"),
    ],
)
def test_dry_run_refuses_inputs_that_do_not_exist(
    name: str, args: list[str], key: str, tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    """--dry-run checks what the stage would read (the outputs of the stages before it that this
    run does not make itself): a missing one is one line naming the key, exit 2."""
    monkeypatch.chdir(tmp_path)
    p = _tiny_file(tmp_path)
    assert _cli(name, ["--params", str(p), "--dry-run", *args], monkeypatch) == 2
    line = _one_line(capsys)
    assert key in line and "does not exist" in line, line


def test_dry_run_of_all_does_not_ask_for_what_an_earlier_stage_makes(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The default (digits: bundled, data.root null): nothing to read beforehand, exit 0."""
    monkeypatch.chdir(tmp_path)
    p = _tiny_file(tmp_path)
    assert _cli("all", ["--params", str(p), "--dry-run"], monkeypatch) == 0
    assert '"batch_size": 8' in capsys.readouterr().out


def test_inputs_checked_by_dry_run_are_the_dvc_yaml_deps() -> None:
    """The table --dry-run checks holds every `${paths.*}` / `${data.raw}` dep of dvc.yaml."""
    import re

    from stages.common import INPUTS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = {m for d in stage["deps"] for m in re.findall(r"\$\{([\w.]+)\}", str(d))}
        deps = {"data.root" if d == "data.raw" else d for d in deps}
        assert set(INPUTS[name]) == deps, name


def test_a_damaged_model_config_is_one_line_naming_the_file(
    tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    from tests.helpers import build_params, make_model_dir

    monkeypatch.chdir(tmp_path)
    model = make_model_dir(build_params(tmp_path))
    (model / "config.json").write_text('{"data": {"source": ')  # cut short
    p = _tiny_file(tmp_path)
    assert _cli("sample", ["--params", str(p)], monkeypatch) == 2
    line = _one_line(capsys)
    assert str(model / "config.json") in line and "JSON" in line, line
    import ray

    assert not ray.is_initialized()


def test_a_damaged_released_config_is_one_line_naming_the_file(
    tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    monkeypatch.chdir(tmp_path)
    released = tmp_path / "released"
    released.mkdir()
    (released / "config.json").write_text("not json")
    p = _tiny_file(tmp_path)
    args = ["--params", str(p), "--checkpoint", str(released)]
    assert _cli("import_diffusers", args, monkeypatch) == 2
    line = _one_line(capsys)
    assert str(released / "config.json") in line and "JSON" in line, line


@pytest.mark.parametrize(
    ("gpu", "gpus", "words"),
    [(True, 0.0, "> 0 with train.use_gpu: true"), (False, 1.0, "0 with train.use_gpu: false")],
)
def test_gpu_keys_that_disagree_are_refused_when_params_load(
    gpu: bool, gpus: float, words: str, tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    """`train.use_gpu: true` without `train.gpus_per_worker` (or the reverse) is refused by the
    loader, so `stages.all` stops before shard and fid_stats run, not at the train stage."""
    monkeypatch.chdir(tmp_path)
    p = _tiny_file(tmp_path, **{"train.use_gpu": gpu, "train.gpus_per_worker": gpus})
    assert _cli("all", ["--params", str(p)], monkeypatch) == 2
    line = _one_line(capsys)
    assert "train.gpus_per_worker" in line and words in line, line
    assert not (tmp_path / "data").exists()  # shard did not run


@pytest.mark.parametrize(
    ("key", "value", "bad"),
    [
        ("sample.sampler", "euler", "euler"),
        ("evaluate.metrics", ["fid", "fld"], "fld"),
        ("mlflow.promote_on", "isc", "isc"),  # registered, but not lower-is-better
        ("data.source", "coco", "coco"),
    ],
)
def test_all_refuses_an_unregistered_extension_before_any_stage_runs(
    key: str, value: object, bad: str, tmp_path: Path, capsys, monkeypatch, no_ray: object
) -> None:
    """A sampler, metric or source name the registries do not hold is a string when params load
    (config.py imports no registry: each stage's dvc.yaml deps stay its own); `stages.all`, the
    cluster job, checks every registry first, so a typo fails before shard, not after training."""
    monkeypatch.chdir(tmp_path)
    p = _tiny_file(tmp_path, **{key: value})
    assert _cli("all", ["--params", str(p)], monkeypatch) == 2
    line = _one_line(capsys)
    assert key in line and bad in line, line
    assert not (tmp_path / "data").exists()  # shard did not run
