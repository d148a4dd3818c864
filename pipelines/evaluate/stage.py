"""The evaluate stage: FID / IS of the samples, NLL (bits/dim) and rate-distortion on test images.

Paper protocol (Ho et al. 2020, App. B): FID of 50,000 samples against the training set (the test
set as a second figure), IS over 10 splits, the variational bound on the test set with the EMA
weights. Any departure (other data, other Inception weights, fewer images, a strided sampler) is
written next to the numbers as `comparability`, so a figure is never shown without its caveats.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.artifacts.samples import load_samples
from pipelines.artifacts.samples import read_manifest as read_samples_manifest
from pipelines.config import Params
from pipelines.data.stream import load_split, read_manifest
from pipelines.evaluate.fid import (
    check_compatible,
    compute_reference_stats,
    feature_stats,
    fid,
    inception_score,
    ray_extractor,
)
from pipelines.evaluate.inception import (
    LABEL_FULL,
    InceptionWeights,
    default_cache_dir,
    hub_weights_path,
    resolve_weights,
)
from pipelines.evaluate.nll import BpdResult, EmaModelLoader, evaluate_bpd
from pipelines.infra.figures import save_line_plot
from pipelines.infra.ray import init_ray
from pipelines.infra.tracking import Tracker, repo_root

log = logging.getLogger(__name__)

PAPER_IMAGES = 50_000  # samples and reference images behind the published FID / IS
RD_CSV = "rate_distortion.csv"
RD_PNG = "rate_distortion.png"
NLL_TERMS_PNG = "nll_terms.png"


def comparability(params: Params, weights: InceptionWeights, samples: int, ref: int) -> str:
    """'comparable with published figures' or 'NOT comparable with published figures: <why>'."""
    why = []
    if params.data.source != "cifar10":
        why.append(f"data.source={data_label(params)}, not lossless CIFAR-10")
    if weights.label != LABEL_FULL:
        why.append(f"Inception weights: {weights.label}")
    if samples < PAPER_IMAGES:
        why.append(f"{samples} samples, not {PAPER_IMAGES}")
    if ref < PAPER_IMAGES and params.evaluate.fid_reference == "train":
        why.append(f"{ref} reference images, not the {PAPER_IMAGES} of the training set")
    if params.sample.stride != 1:
        why.append(f"strided sampler (sample.stride={params.sample.stride})")
    if not why:
        return "comparable with published figures"
    return "NOT comparable with published figures: " + "; ".join(why)


def check_counts(params: Params, samples_dir: Path) -> int:
    """The number of samples FID/IS use; a clear error when the sample stage made too few."""
    have = int(read_samples_manifest(samples_dir)["num_images"])
    want = params.evaluate.fid_images
    if have < want:
        raise ValueError(
            f"evaluate.fid_images: {want} requested but {samples_dir} holds {have} samples "
            f"(raise sample.num_images to >= {want} and rerun the sample stage, or lower it)"
        )
    return want


def fid_metrics(params: Params, root: Path) -> dict[str, Any]:
    """FID against the reference split (and the other split), IS when the weights allow it."""
    cfg = params.evaluate
    samples_dir = root / params.paths.samples
    n = check_counts(params, samples_dir)
    weights = resolve_weights(cfg, default_cache_dir())
    images = load_samples(samples_dir, n)  # (n, C, H, W) uint8
    want = ("2048", "logits_unbiased") if cfg.isc and weights.has_logits else ("2048",)
    t0 = time.perf_counter()
    feats = ray_extractor(cfg.num_workers, cfg.cpus_per_worker)(images, weights, want)
    out: dict[str, Any] = {
        "fid_images": n,
        "inception_images_per_s": n / (time.perf_counter() - t0),
    }
    ours = feature_stats(feats["2048"], f"{n} samples in {samples_dir}")
    for split, (stats, meta) in compute_reference_stats(params, root, weights).items():
        check_compatible(images, meta["image_shape"], f"FID vs the {split} split")
        out[f"fid_{split}"] = fid(ours, stats)
        out[f"fid_{split}_reference_images"] = meta["count"]
    out["fid"] = out[f"fid_{cfg.fid_reference}"]
    out["fid_reference"] = cfg.fid_reference
    out["inception_weights"] = weights.label
    ref_count = int(out[f"fid_{cfg.fid_reference}_reference_images"])
    out["comparability"] = comparability(params, weights, n, ref_count)
    out.update(isc_metrics(params, weights, feats.get("logits_unbiased")))
    return out


def isc_metrics(
    params: Params, weights: InceptionWeights, logits: np.ndarray | None
) -> dict[str, Any]:
    """IS mean/std over `isc_splits`, or the reason it is unavailable."""
    if not params.evaluate.isc:
        return {"isc_status": "off (evaluate.isc: false)"}
    if logits is None:
        return {
            "isc_status": f"unavailable: {weights.label} has no logits layer; put "
            f"torch-fidelity's full weights at {hub_weights_path()} or name them in "
            "evaluate.inception_weights"
        }
    mean, std = inception_score(logits, params.evaluate.isc_splits)
    return {"isc_status": "ok", "isc_mean": mean, "isc_std": std}


def nll_metrics(params: Params, root: Path) -> tuple[dict[str, Any], BpdResult]:
    """The bound (L_T + sum L_{t-1} + L_0, eq. 5) on the first `nll_images` test images."""
    cfg = params.evaluate
    shards = root / params.paths.shards
    split = "test" if "test" in read_manifest(shards)["splits"] else "train"
    images, _ = load_split(shards, split, max_images=cfg.nll_images)  # (N, C, H, W) uint8
    t0 = time.perf_counter()
    result = evaluate_bpd(
        images,
        EmaModelLoader(params, str(root / params.paths.model)),
        params.diffusion,
        seed=params.seed,
        chunk_size=cfg.nll_batch_size,
        num_workers=cfg.num_workers,
        cpus_per_worker=cfg.cpus_per_worker,
        use_gpu=cfg.use_gpu,
    )
    elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {**result.summary(), "nll_split": split}
    out["nll_images_per_s"] = len(images) / elapsed
    return out, result


def data_label(params: Params) -> str:
    """Which images a figure is about, e.g. 'digits' or 'image_folder (cifar10-test-jpeg.zip)'."""
    root = f" ({Path(params.data.root).name})" if params.data.root else ""
    return f"{params.data.source}{root}"


def write_rate_distortion(result: BpdResult, plots: Path, data: str) -> list[Path]:
    """`rate_distortion.csv` (a DVC plot) and the paper's Fig. 5 panels as a PNG."""
    rd = result.rate_distortion()
    csv_path = plots / RD_CSV
    plots.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".{RD_CSV}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reverse_step", "rate_bpd", "distortion_rmse"])
        for step, rate, dist in zip(
            rd["reverse_step"], rd["rate_bpd"], rd["distortion_rmse"], strict=True
        ):
            w.writerow([int(step), f"{rate:.6g}", f"{dist:.6g}"])
    os.replace(tmp, csv_path)
    png = save_line_plot(
        rd["rate_bpd"].tolist(),
        {"distortion": rd["distortion_rmse"].tolist()},
        plots / RD_PNG,
        xlabel="rate (bits/dim)",
        ylabel="distortion (RMSE on [0, 255])",
        title=f"progressive coding (Fig. 5): {len(result.total_bpd)} {data} images",
    )
    terms = save_line_plot(
        list(range(len(rd["reverse_step"]))),
        {"L_t (bits/dim)": result.terms_bpd.mean(axis=0).tolist()},
        plots / NLL_TERMS_PNG,
        xlabel="t (0-based; t=0 is the decoder term L_0)",
        ylabel="bits/dim",
        title=f"variational bound terms: {data}",
        logy=True,
    )
    return [csv_path, png, terms]


def table4(result: BpdResult) -> dict[str, float]:
    """Rate and distortion at every 10th of the reverse process (the rows of paper Table 4)."""
    rd = result.rate_distortion()
    T = len(rd["reverse_step"])
    out: dict[str, float] = {}
    for k in range(10, 0, -1):
        step = max(1, T * k // 10)  # T < 10: the rows repeat, never step 0
        i = T - step  # rd arrays run from reverse step T down to 1
        out[f"rd_rate_bpd_step{step}"] = float(rd["rate_bpd"][i])
        out[f"rd_rmse_step{step}"] = float(rd["distortion_rmse"][i])
    return out


def run_evaluate_stage(
    params: Params, root: Path | None = None, tracker: Tracker | None = None
) -> dict[str, Any]:
    """FID/IS + NLL + rate-distortion; returns the metrics written to `metrics/eval.json`."""
    root = root or repo_root()
    init_ray(params.ray)
    t0 = time.perf_counter()
    metrics = fid_metrics(params, root)
    nll, bpd = nll_metrics(params, root)
    metrics.update(nll)
    metrics.update(table4(bpd))
    figures = write_rate_distortion(bpd, root / params.paths.plots, data_label(params))
    metrics["wall_time_s"] = time.perf_counter() - t0
    log.info(
        "FID %.3f (%s); NLL %.4f bits/dim",
        metrics["fid"],
        metrics["comparability"],
        metrics["nll_bpd"],
    )
    if tracker is not None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        tracker.log_metrics(numeric, step=params.train.steps)
        tracker.set_tags(
            {
                "fid.comparability": metrics["comparability"],
                "fid.inception_weights": metrics["inception_weights"],
                "isc.status": metrics["isc_status"],
            }
        )
        for path in figures:
            tracker.log_artifact(path, "evaluate")
    return metrics
