"""`stages.fid_stats` and `stages.evaluate` on real tiny shards, model and samples."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.artifacts.model_dir import WEIGHTS_FILE
from pipelines.artifacts.samples import (
    plan_shards,
    prepare_dir,
    sampling_plan,
    write_manifest,
    write_shard,
)
from pipelines.config import Params
from pipelines.data.stage import build_shards
from pipelines.evaluate.metrics.registry import METRICS
from pipelines.infra.run_files import write_run_file
from pipelines.infra.tracking import open_run, tracking_uri
from pipelines.sample.stage import sample_to_shards
from pipelines.train.mlflow_model import log_mlflow_model
from stages import evaluate, fid_stats
from tests.helpers import REPO, assert_portable, make_model_dir, params_file

MakeParams = Callable[..., Params]


@pytest.fixture
def params(make_params: MakeParams, converted_path: Path) -> Params:
    # nll_split both: the default (test) runs in the end-to-end test of the micro profile
    return make_params(
        {"evaluate.fid.inception_weights": str(converted_path), "evaluate.nll_split": "both"}
    )


def test_missing_samples_fail_before_ray_naming_the_stage(
    tmp_path: Path, params: Params, no_ray: object
) -> None:
    build_shards(params.data, params.seed, Path(params.paths.shards))
    with pytest.raises(FileNotFoundError, match="samples/manifest.json.*run the sample stage"):
        evaluate.main(["--params", str(params_file(params, tmp_path / "p.yaml"))])
    assert not ray.is_initialized()


def test_stale_samples_are_refused_before_ray(
    tmp_path: Path, params: Params, no_ray: object
) -> None:
    """Samples drawn from other weights or another sampler are not scored as current."""
    build_shards(params.data, params.seed, Path(params.paths.shards))
    weights = make_model_dir(params) / WEIGHTS_FILE
    out, specs = Path(params.paths.samples), plan_shards(params.sample.num_images, 4)
    plan = sampling_plan(params, weights)
    prepare_dir(out, plan, specs)
    images = torch.zeros((params.sample.num_images, 1, 8, 8), dtype=torch.uint8)
    hashes = [write_shard(images[s.start : s.stop], s, out) for s in specs]
    write_manifest(out, plan, specs, hashes)
    strided = dataclasses.replace(params, sample=dataclasses.replace(params.sample, stride=2))
    with pytest.raises(ValueError, match=r"stale samples: drawn with stride=1, .* give 2"):
        evaluate.main(["--params", str(params_file(strided, tmp_path / "p.yaml"))])
    fixed = dataclasses.replace(
        params, diffusion=dataclasses.replace(params.diffusion, var_type="fixedsmall")
    )
    with pytest.raises(ValueError, match="stale samples: drawn with diffusion="):
        evaluate.main(["--params", str(params_file(fixed, tmp_path / "p.yaml"))])
    make_model_dir(params, seed=1)  # retrained weights, samples not redrawn
    with pytest.raises(ValueError, match=r"stale samples: drawn with weights_sha256=.*ema"):
        evaluate.main(["--params", str(params_file(params, tmp_path / "p.yaml"))])
    assert not ray.is_initialized()


@pytest.mark.ray
def test_fid_stats_then_evaluate_logs_labelled_metrics_to_a_child_run(
    tmp_path: Path, params: Params, local_ray: object, capsys: pytest.CaptureFixture[str]
) -> None:
    build_shards(params.data, params.seed, Path(params.paths.shards))
    exported = params.train.steps // 2  # train.export: best_fid picked an earlier step
    assert exported != params.train.steps
    model_dir = make_model_dir(params, step=exported)
    sample_to_shards(params, tmp_path)
    train = open_run(params, "train", tmp_path)
    logged = log_mlflow_model(params, train, model_dir, exported)  # as training does
    write_run_file(params, "train", train, REPO)  # the root the CLIs run in
    path = str(params_file(params, tmp_path / "p.yaml"))

    assert fid_stats.main(["--params", path]) == 0
    out = capsys.readouterr().out
    assert "train split, 16 images" in out and "test split, 16 images" in out
    stats = sorted(Path(params.paths.fid_stats).glob("*.npz"))
    assert len(stats) == 2

    assert evaluate.main(["--params", path]) == 0
    out = capsys.readouterr().out
    assert "NOT comparable with published figures" in out
    assert sorted(Path(params.paths.fid_stats).glob("*.npz")) == stats  # reused, not recomputed

    m = json.loads((Path(params.paths.metrics) / "eval.json").read_text())
    assert all(isinstance(v, int | float) for v in m.values())  # numbers only
    m |= json.loads((Path(params.paths.runs) / "evaluate.json").read_text())["details"]
    assert m["fid"] == m["fid_train"] > 0 and m["fid_test"] > 0
    assert m["fid_images"] == 8 and m["fid_train_reference_images"] == 16
    assert m["isc_status"].startswith("unavailable") and "isc_mean" not in m
    # KID from the same features, against the reference features fid_stats stored (16 images)
    assert m["kid_reference_images"] == 16 and abs(m["kid"]) < 10 and m["kid_std"] >= 0
    # Every key is one its metric declares (or the stage's own).
    declared = [p for name in params.evaluate.metrics for p in METRICS[name].logs]
    own = ("wall_time_s", "promotion")
    assert [k for k in m if k not in own and not any(fnmatch(k, p) for p in declared)] == []
    assert_portable(Path(params.paths.runs) / "evaluate.json")  # no machine path in git
    assert 0 < m["nll_bpd"] < 100 and m["nll_images"] == 4 and m["nll_split"] == "both"
    assert m["nll_bpd_sem"] > 0 and m["nll_test_bpd"] == m["nll_bpd"]  # headline: test split
    assert 0 < m["nll_train_bpd"] < 100 and m["nll_train_images"] == 4
    assert m["nll_gap_bpd"] == pytest.approx(m["nll_train_bpd"] - m["nll_test_bpd"])
    assert "gap train - test" in out
    assert m["rd_rate_bpd_step20"] > m["rd_rate_bpd_step2"] >= 0
    assert "data.source=digits" in m["comparability"]
    with (Path(params.paths.plots) / "rate_distortion.csv").open() as f:
        assert len(list(csv.DictReader(f))) == params.diffusion.T

    run_info = json.loads((Path(params.paths.runs) / "evaluate.json").read_text())
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path))
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == train.run_id
    assert run.data.tags["fid.comparability"] == m["comparability"]
    assert "digits test images: latent mix at t=10" in run.data.tags["interpolation"]
    assert "paper Fig. 7 construction on digits 8x8" in run.data.tags["shared_latent"]
    assert run.data.metrics["fid"] == pytest.approx(m["fid"])
    assert run.data.metrics["nll_bpd"] == pytest.approx(m["nll_bpd"])
    # The headline metrics are on the parent train run too (train runs sort by FID).
    parent = client.get_run(train.run_id).data
    assert parent.metrics["fid"] == pytest.approx(m["fid"])
    assert parent.metrics["nll_bpd"] == pytest.approx(m["nll_bpd"])
    assert parent.tags["fid.comparability"] == m["comparability"]
    assert run.data.metrics["nll_gap_bpd"] == pytest.approx(m["nll_gap_bpd"])
    # ... at the step of the weights evaluated, on both runs.
    for run_id in (run.info.run_id, train.run_id):
        assert [x.step for x in client.get_metric_history(run_id, "fid")] == [exported]
    # FID and NLL are the logged model's metrics; its version, the first, became champion.
    model_metrics = {x.key: x.value for x in client.get_logged_model(logged.model_id).metrics}
    assert model_metrics["fid"] == pytest.approx(m["fid"]) and "nll_bpd" in model_metrics
    name = params.mlflow.model_name
    assert m["promotion"].startswith(f"{name} v1: champion (first version with a FID")
    assert run.data.tags["promotion"] == m["promotion"] and "registry:" in out
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "1" and champion.tags["fid.comparability"] == m["comparability"]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert names == {
        "evaluate/eval.json",
        "evaluate/rate_distortion.csv",
        "evaluate/rate_distortion.png",
        "evaluate/nll_terms.png",
        "evaluate/interpolation.png",
        "evaluate/shared_latent.png",
    }
    # Fig. 8: 1 pair x (row at t, row at T), [x_0, 5 lambdas, x'_0], rows and columns labelled
    with Image.open(Path(params.paths.plots) / "interpolation.png") as figure:
        assert figure.format == "PNG" and figure.width > 2 * figure.height  # 2 rows, 7 columns
    with Image.open(Path(params.paths.plots) / "shared_latent.png") as figure:  # Fig. 7
        assert figure.format == "PNG" and figure.height > figure.width  # 3 rows of t, 1 + 2 columns
