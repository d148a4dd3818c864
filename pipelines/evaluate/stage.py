"""The evaluate stage: the metrics `evaluate.metrics` lists, and the paper's Figs. 7 and 8.

Inputs are checked before Ray starts (the metric names and `mlflow.promote_on`, the samples exist
and are enough, each metric's own checks); then what the listed metrics need is gathered once
(`gather`: the samples' Inception features of every layer in one pass, the reference statistics
of the fid_stats stage) and each metric measures (`pipelines.evaluate.metrics`: FID, IS, KID,
NLL with Table 4 and Fig. 5). `EvaluateResult` holds what they measured, in their order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipelines.artifacts import model_dir, samples
from pipelines.artifacts.fid_stats import InceptionWeights, load_inception
from pipelines.config import Params
from pipelines.evaluate.interpolation import (
    interpolation_label,
    source_pairs,
    write_interpolation,
)
from pipelines.evaluate.metrics.base import Inputs, Measured, Metric, Need
from pipelines.evaluate.metrics.registry import listed, lower_is_better, needs
from pipelines.evaluate.shared_latent import shared_latent_label, write_shared_latent
from pipelines.fid.features import check_compatible, ray_extractor
from pipelines.fid.inception import LOGITS
from pipelines.fid.reference import read_references
from pipelines.infra import registry
from pipelines.infra.ray import init_ray
from pipelines.infra.tracking import HEADLINE_METRICS, Tracker, best_effort, numeric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    """What the listed metrics measured; `metrics()` is `metrics/eval.json`."""

    metrics_file: ClassVar[str] = "eval.json"

    measured: dict[str, Measured]  # by metric name, in the order of evaluate.metrics
    figures: tuple[Path, ...]
    wall_time_s: float
    run_id: str  # the MLflow run
    promotion: str = "not gated"  # the registry's decision on the model (`registry.promote`)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.measured.values():
            out |= m.metrics
        return out | {"wall_time_s": self.wall_time_s, "promotion": self.promotion}

    def summary(self) -> str:
        measured = self.measured.values()
        labels = {v for m in measured for k, v in m.tags.items() if k.endswith(".comparability")}
        return (
            "; ".join(m.summary for m in measured)
            + "\n"
            + "".join(f"{label} " for label in sorted(labels))
            + f"(MLflow run {self.run_id})\nregistry: {self.promotion}"
        )


def check_counts(params: Params, samples_dir: Path) -> int:
    """The number of samples the Inception metrics use; a clear error when the sample stage
    made too few."""
    have = int(samples.read_manifest(samples_dir)["num_images"])
    want = params.evaluate.fid.images
    if have < want:
        raise ValueError(
            f"evaluate.fid.images: {want} requested but {samples_dir} holds {have} samples "
            f"(raise sample.num_images to >= {want} and rerun the sample stage, or lower it)"
        )
    return want


def gather(
    params: Params, root: Path, metrics: tuple[Metric, ...], weights: InceptionWeights
) -> Inputs:
    """What `metrics` need, each need once: every Inception layer any of them reads in one pass
    over the samples (logits only when the weights have them), the reference statistics."""
    want = needs(metrics)
    refs = read_references(params, root, weights) if Need.REFERENCE in want else ()
    if Need.SAMPLES not in want:
        return Inputs(params, root, weights, {}, refs, 0.0)
    layers = [x for m in metrics for x in m.layers if x != LOGITS or weights.has_logits]
    cfg, samples_dir = params.evaluate, root / params.paths.samples
    images = samples.load_samples(samples_dir, cfg.fid.images)  # (n, C, H, W) uint8
    for ref in refs:
        check_compatible(images, ref.image_shape, f"FID vs the {ref.split} split")
    t0 = time.perf_counter()
    extract = ray_extractor(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu)
    features = extract(images, weights, tuple(dict.fromkeys(layers)))
    rate = len(images) / (time.perf_counter() - t0)
    return Inputs(params, root, weights, features, refs, rate)


def check_inputs(params: Params, root: Path, metrics: tuple[Metric, ...]) -> None:
    """The samples (when a metric reads them) and each metric's own checks, before Ray."""
    if Need.SAMPLES in needs(metrics):
        check_counts(params, root / params.paths.samples)
        weights_file = root / params.paths.model / model_dir.WEIGHTS_FILE
        samples.check_current(root / params.paths.samples, params, weights_file)
    for metric in metrics:
        metric.check(params, root)


def run_evaluate(params: Params, root: Path, tracker: Tracker) -> EvaluateResult:
    """The listed metrics and Figs. 7, 8, logged to `tracker`; inputs are checked first."""
    metrics = listed(params)  # names and mlflow.promote_on, before anything runs
    check_inputs(params, root, metrics)
    pairs = source_pairs(params, root / params.paths.shards)  # Fig. 8's test images
    weights = load_inception(root / params.paths.fid_stats)  # what the reference stats used
    init_ray(params.ray)
    t0 = time.perf_counter()
    inputs = gather(params, root, metrics, weights)
    measured = {m.name: m.measure(inputs) for m in metrics}
    figures = [f for m in measured.values() for f in m.figures]
    figures.append(write_interpolation(params, root, pairs))
    figures.append(write_shared_latent(params, root))  # Fig. 7
    result = EvaluateResult(measured, tuple(figures), time.perf_counter() - t0, tracker.run_id)
    log.info("%s", "; ".join(m.summary for m in measured.values()))
    step = model_dir.exported_step(root / params.paths.model)  # of the weights evaluated
    tracker.log_metrics(numeric(result.metrics()), step=step)
    tags = {k: v for m in measured.values() for k, v in m.tags.items()}
    tracker.set_tags(
        tags
        | {
            "interpolation": interpolation_label(params),
            "shared_latent": shared_latent_label(params),
        }
    )
    for path in figures:
        tracker.log_artifact(path, "evaluate")
    promotion = best_effort(
        "headline metrics on the train run and the promotion gate",
        lambda: link_to_train_run(params, tracker, result, step),
        "not gated: MLflow server unreachable (rerun evaluate)",
    )
    if promotion is None:
        return result
    tracker.set_tags({"promotion": promotion})
    return dataclasses.replace(result, promotion=promotion)


def link_to_train_run(
    params: Params, tracker: Tracker, result: EvaluateResult, step: int
) -> str | None:
    """Headline metrics on the train run (at the exported `step`) and its model version gated
    on `mlflow.promote_on` (`infra.registry.promote`); None without a parent."""
    parent = tracker.parent()
    if parent is None:
        return None
    key = params.mlflow.promote_on
    model_id = log_headline(result, parent, step, key)
    owner = lower_is_better(listed(params))[key]
    reference, label = result.measured[owner.name].comparable
    return registry.promote(
        parent.client, params.mlflow.model_name, parent.run_id, model_id,
        float(result.metrics()[key]), reference, label, key,
    )  # fmt: skip


def log_headline(result: EvaluateResult, parent: Tracker, step: int, gate: str) -> str | None:
    """FID and NLL (and the gate's metric `gate`, with the comparability labels) also on the
    parent train run: the runs table of train runs then sorts by them. They are linked to the
    model the train run logged (MLflow 3's LoggedModel), whose id is returned (None when it
    logged none)."""
    metrics = numeric(result.metrics())
    headline = {k: metrics[k] for k in (*HEADLINE_METRICS, gate) if k in metrics}
    model_id = registry.logged_model_id(parent.client, parent.run_id)
    if model_id is None:
        parent.log_metrics(headline, step)
    else:
        registry.log_model_metrics(parent.client, parent.run_id, model_id, headline, step)
    tags = {k: v for m in result.measured.values() for k, v in m.tags.items()}
    parent.set_tags({k: v for k, v in tags.items() if k.endswith(".comparability")})
    return model_id
