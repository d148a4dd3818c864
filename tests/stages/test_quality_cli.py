"""`stages.quality`: off by default (header-only plots, no Ray); on, both curves on tiny data."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.sampling import sample_batched
from pipelines.artifacts.fid_stats import load_inception
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.config import Params
from pipelines.data.stage import build_shards
from pipelines.fid.reference import headline_reference
from pipelines.fid.score import score
from pipelines.infra.model_runner import sample_runner
from pipelines.infra.run_files import read_run_file
from pipelines.infra.tracking import tracking_uri
from stages import fid_stats, quality
from tests.helpers import make_model_dir, params_file

MakeParams = Callable[..., Params]


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_off_by_default_writes_header_only_plots_without_ray(
    make_params: MakeParams, tmp_path: Path, no_ray: object
) -> None:
    params = make_params()
    assert params.quality.steps == () and params.quality.reverse_every == 0  # the tiny default
    assert quality.main(["--params", str(params_file(params, tmp_path / "p.yaml"))]) == 0
    plots = Path(params.paths.plots)
    names = ["ancestral", "ddim", "dpmpp_2m", "heun"]  # params.yaml's quality.samplers
    assert _rows(plots / "fid_vs_steps.csv") == (["steps", *(f"fid_{n}" for n in names)], [])
    assert _rows(plots / "fid_over_reverse.csv") == (["reverse_steps", "t", "fid"], [])
    details = read_run_file(params, "quality", tmp_path)["details"]  # type: ignore[index]
    assert details["label"].startswith("off")  # type: ignore[index]
    assert not ray.is_initialized()


@pytest.mark.ray
def test_both_curves_score_against_the_cached_reference(
    make_params: MakeParams, converted_path: Path, tmp_path: Path, local_ray: object
) -> None:
    params = make_params({
        "evaluate.fid.inception_weights": str(converted_path),
        "quality.steps": [20, 5],
        "quality.samplers": ["ancestral", "heun"],
        "quality.images": 4,
        "quality.reverse_every": 10,
        "quality.reverse_images": 4,
        "quality.batch_size": 3,
        "quality.cpus": 0.5,
        "sample.precision": "bf16",  # quality runs the network as the sample stage does
        "sample.channels_last": True,
    })  # fmt: skip
    build_shards(params.data, params.seed, Path(params.paths.shards))
    make_model_dir(params)
    path = str(params_file(params, tmp_path / "p.yaml"))
    assert fid_stats.main(["--params", path]) == 0  # the reference and the weights to use
    assert quality.main(["--params", path]) == 0
    plots = Path(params.paths.plots)
    header, steps = _rows(plots / "fid_vs_steps.csv")
    assert header == ["steps", "fid_ancestral", "fid_heun"]  # pool3 weights: no IS columns
    assert [r["steps"] for r in steps] == ["5", "20"]
    _, reverse = _rows(plots / "fid_over_reverse.csv")
    assert [(r["reverse_steps"], r["t"]) for r in reverse] == [("10", "10"), ("20", "0")]
    m = json.loads((Path(params.paths.metrics) / "quality.json").read_text())
    assert all(m[f"fid_{s}_steps{n}"] > 0 for s in ("ancestral", "heun") for n in (5, 20))
    # x0_pred at t = 0 of the full sampler is its output: the same images (same noise keys) as
    # the 20-step ancestral point, so the same FID
    assert m["x0_fid_t0"] == pytest.approx(m["fid_ancestral_steps20"], rel=1e-9)
    assert m["x0_fid_t10"] != m["x0_fid_t0"]
    # ... and the images the sample stage's actor network makes (bf16, channels_last), not fp32's
    weights = load_inception(Path(params.paths.fid_stats))
    ref = headline_reference(params, tmp_path, weights).stats
    model, device = sample_runner(params).load(load_ema_model, params, Path(params.paths.model))
    d = GaussianDiffusion.from_config(params.diffusion)
    images = sample_batched(model, d, range(4), params.seed, params.data.image_shape, 3, device)
    assert m["fid_ancestral_steps20"] == pytest.approx(score(images, weights, [ref]).fid[0], 1e-12)
    run_info = json.loads((Path(params.paths.runs) / "quality.json").read_text())
    label = run_info["details"]["label"]
    assert "Heun (Karras et al. 2022, Algorithm 1): not the paper" in label and "4 samples" in label
    assert "network calls a step: Heun 2" in label
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path))
    history = client.get_metric_history(run_info["run_id"], "fid_heun")
    assert sorted(h.step for h in history) == [5, 20]
    assert client.get_run(run_info["run_id"]).data.tags["quality.label"] == label
