"""`python -m stages.sample`: dry run, bad input, a full run logged to a child MLflow run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from pipelines.artifacts.samples import load_samples
from pipelines.config import Params, to_dict
from pipelines.infra.run_files import write_run_file
from pipelines.infra.tracking import open_run, tracking_uri
from stages import sample
from tests.helpers import REPO, make_model_dir, params_file

MakeParams = Callable[..., Params]


def test_dry_run_prints_config_and_writes_nothing(
    tmp_path: Path, make_params: MakeParams, capsys: pytest.CaptureFixture[str]
) -> None:
    params = make_params()
    make_model_dir(params)  # the input --dry-run checks exists
    assert (
        sample.main(["--params", str(params_file(params, tmp_path / "p.yaml")), "--dry-run"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["sample"]["num_images"] == 8
    assert not Path(params.paths.samples).exists()


def test_num_images_zero_is_rejected_naming_the_key(
    tmp_path: Path, make_params: MakeParams
) -> None:
    raw = to_dict(make_params())
    raw["sample"]["num_images"] = 0
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"p.yaml: sample.num_images: got 0"):
        sample.main(["--params", str(path)])


def test_missing_model_fails_before_ray_and_names_the_file(
    tmp_path: Path, make_params: MakeParams, no_ray: object
) -> None:
    params = make_params()
    with pytest.raises(FileNotFoundError, match="models/config.json"):
        sample.main(["--params", str(params_file(params, tmp_path / "p.yaml"))])
    assert not ray.is_initialized()


@pytest.mark.ray
def test_run_logs_to_a_child_of_the_train_run(
    tmp_path: Path, make_params: MakeParams, local_ray: object, capsys: pytest.CaptureFixture[str]
) -> None:
    params = make_params()
    make_model_dir(params)
    train = open_run(params, "train", tmp_path)  # what the train stage leaves: a run + its file
    write_run_file(params, "train", train, REPO)  # as the train CLI writes it (root: the repo)
    assert sample.main(["--params", str(params_file(params, tmp_path / "p.yaml"))]) == 0
    assert "8 images (ancestral, all 20 steps" in capsys.readouterr().out

    metrics = json.loads((Path(params.paths.metrics) / "sample.json").read_text())
    details = json.loads((Path(params.paths.runs) / "sample.json").read_text())["details"]
    assert details["paper_sampler"] is True and metrics["num_images"] == 8
    assert load_samples(params.paths.samples).shape == (8, 1, 8, 8)
    run_info = json.loads((Path(params.paths.runs) / "sample.json").read_text())
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path))
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == train.run_id
    assert run.data.metrics["images_per_s"] > 0 and run.data.metrics["num_images"] == 8
    assert run.data.tags["samples.ordered_hash"] == details["ordered_hash"]
    assert (run.data.tags["sampler.name"], details["sampler_name"]) == ("ancestral", "ancestral")
    assert run.data.tags["sampler.options"] == '{"clip_denoised": true}'
    assert details["sampler_options"] == {"clip_denoised": True}
    names = {a.path for a in client.list_artifacts(run.info.run_id, "sample")}
    assert names == {
        "sample/sample_grid.png",
        "sample/progressive_generation.png",
        "sample/manifest.json",
        "sample/sample.json",
    }
