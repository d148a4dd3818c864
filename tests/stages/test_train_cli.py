"""`python -m stages.train`: dry run, bad params, a real run on local Ray and its rerun."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from ddpm_core.config import ConfigError
from pipelines.config import to_dict
from stages import shard, train
from tests.helpers import build_params


def _write_params(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(to_dict(build_params(root, overrides))))
    return path


def test_dry_run_prints_the_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: object
) -> None:
    path = _write_params(tmp_path)
    assert train.main(["--params", str(path), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["steps"] == 4 and printed["unet"]["ch"] == 8
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("batch_size", 7, ["train.batch_size", "divisible by train.num_workers=2"]),
        ("attn_resolutions", [2], ["unet.attn_resolutions", "[8, 4]"]),
        ("precision", "fp16", ["train.precision", "bf16"]),
    ],
)
def test_bad_params_fail_naming_the_key(
    tmp_path: Path, key: str, value: Any, words: list[str], no_ray: object
) -> None:
    path = _write_params(tmp_path, {"train.num_workers": 2})
    raw = yaml.safe_load(path.read_text())
    section = "unet" if key == "attn_resolutions" else "train"
    raw[section][key] = value
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        train.main(["--params", str(path)])
    assert str(path) in str(info.value)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert not ray.is_initialized()


def test_missing_shards_say_run_the_shard_stage(tmp_path: Path, no_ray: object) -> None:
    path = _write_params(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"manifest.json.*dvc repro shard"):
        train.main(["--params", str(path)])
    assert not ray.is_initialized()  # failed before Ray started


@pytest.mark.ray
def test_stage_trains_then_rerun_resumes_the_same_run(
    tmp_path: Path, local_ray: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    overrides = {"train.steps": 3, "mlflow.system_metrics": True}
    path = _write_params(tmp_path, overrides)
    params = build_params(tmp_path, overrides)
    assert shard.main(["--params", str(path)]) == 0
    assert train.main(["--params", str(path)]) == 0
    model = Path(params.paths.model)
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "ema.safetensors"]
    metrics = json.loads((Path(params.paths.metrics) / "train.json").read_text())
    assert metrics["steps"] == 3 and metrics["resumed_from"] == 0
    csv_rows = (Path(params.paths.plots) / "train_loss.csv").read_text().splitlines()
    assert csv_rows[0] == "step,loss" and len(csv_rows) == 4
    first = json.loads((Path(params.paths.runs) / "train.json").read_text())
    # Rerun: the same run key resumes at the final checkpoint and reattaches the MLflow run.
    assert train.main(["--params", str(path)]) == 0
    again = json.loads((Path(params.paths.runs) / "train.json").read_text())
    assert again["run_id"] == first["run_id"]
    metrics = json.loads((Path(params.paths.metrics) / "train.json").read_text())
    assert metrics["steps"] == 3 and metrics["resumed_from"] == 3
    client = MlflowClient(first["uri"])
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "3"
    assert "system/cpu_utilization_percentage" in run.data.metrics  # mlflow.system_metrics
    # One MLflow Model and one registered version for the run, however often it is rerun.
    assert len(run.outputs.model_outputs) == 1
    versions = client.search_model_versions(f"name = '{params.mlflow.model_name}'")
    assert [v.run_id for v in versions] == [first["run_id"]]
