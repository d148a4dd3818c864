"""`python -m stages.train`: dry run, bad params, a real run on local Ray and its rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from ddpm_core.config import ConfigError
from pipelines.config import to_dict
from pipelines.infra.run_files import read_run_file
from pipelines.train.run import RunFolder, plan_run, run_lock
from stages import shard, train
from tests.helpers import REPO, build_params, params_file, train_params


def _write_params(root: Path, overrides: dict[str, Any] | None = None) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(to_dict(build_params(root, overrides))))
    return path


def test_dry_run_prints_the_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: object
) -> None:
    path = _write_params(tmp_path)
    (tmp_path / "data" / "shards").mkdir(parents=True)  # the input --dry-run checks exists
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
        ("export", "best_fid", ["train.export", "needs train.fid_every > 0"]),
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
    first = read_run_file(params, "train", REPO)
    # Rerun: the same run key, finished, is exported from its final checkpoint without
    # starting workers (no attempt note), and the MLflow run is reattached.
    run_dir = next(Path(params.paths.ray_storage).glob("ddpm-train-*/"))
    assert RunFolder(run_dir).attempt() == {"resumed_from": 0}  # the first run's workers
    assert train.main(["--params", str(path)]) == 0
    assert RunFolder(run_dir).attempt() == {}
    again = read_run_file(params, "train", REPO)
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


def test_fid_curve_is_header_only_when_off(tmp_path: Path, no_ray: object) -> None:
    from pipelines.train.export import FID_CSV, write_fid_csv
    from pipelines.train.selection import FidCurve

    write_fid_csv(tmp_path / FID_CSV, FidCurve())
    assert (tmp_path / FID_CSV).read_text().splitlines() == ["step,fid"]


def test_a_second_cli_on_the_same_run_key_is_refused_until_the_holder_is_killed(
    tmp_path: Path, shards_dir: Path, no_ray: object
) -> None:
    """Two `python -m stages.train` on one run key: the second is refused naming the first's
    pid (the first is frozen by SIGSTOP while it holds the lock, so it cannot finish first);
    once the first is SIGKILLed the lock is free (the kernel drops an flock with its holder)."""
    params = train_params(tmp_path, shards_dir)
    path = params_file(params, tmp_path / "params.yaml")
    cli = [sys.executable, "-m", "stages.train", "--params", str(path)]
    lock: Path | None = None
    first = subprocess.Popen(cli, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        storage = Path(params.paths.ray_storage)
        deadline = time.monotonic() + 300  # bounds the wait only
        while lock is None:
            held = [p for p in storage.glob("ddpm-train-*.lock") if f"pid {first.pid} " in
                    p.read_text()] if storage.is_dir() else []  # fmt: skip
            lock = held[0] if held else None
            assert first.poll() is None and time.monotonic() < deadline, "first CLI never locked"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGSTOP)  # holds the lock, frozen
        second = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        assert "RunLockedError" in second.stderr and f"pid {first.pid} " in second.stderr
        assert str(lock) in second.stderr, second.stderr[-2000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with run_lock(plan_run(params, REPO)) as again:  # no stale lock after the kill
        assert again == lock and f"pid {os.getpid()} " in again.read_text()
