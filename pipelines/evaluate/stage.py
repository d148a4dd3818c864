"""The evaluate stage: FID / IS of the samples, NLL (bits/dim) and rate-distortion on test images.

Inputs are checked before Ray starts (the samples exist and are enough, the Inception weights
resolve); then FID against the cached reference statistics (`pipelines.fid.reference`), IS when the
weights have logits, the bound on the first `evaluate.nll_images` test images over Ray actors,
and the paper's Table 4 rows and Figs. 5, 7 (`shared_latent`) and 8 (`interpolation`).
`EvaluateResult` is the typed record of all of it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipelines.artifacts import model_dir, samples, shards
from pipelines.artifacts.fid_stats import InceptionWeights, load_inception
from pipelines.config import Params
from pipelines.evaluate.interpolation import (
    interpolation_label,
    source_pairs,
    write_interpolation,
)
from pipelines.evaluate.nll import BpdResult, EmaModelLoader, NllSummary, evaluate_bpd
from pipelines.evaluate.report import (
    Table4Row,
    comparability,
    data_label,
    table4,
    table4_metrics,
    write_rate_distortion,
)
from pipelines.evaluate.shared_latent import shared_latent_label, write_shared_latent
from pipelines.fid.features import check_compatible, ray_extractor
from pipelines.fid.inception import hub_weights_path
from pipelines.fid.reference import read_references
from pipelines.fid.score import score
from pipelines.infra import registry
from pipelines.infra.accel import InferenceOptions
from pipelines.infra.ray import init_ray
from pipelines.infra.tracking import HEADLINE_METRICS, Tracker, best_effort, numeric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitFid:
    """FID of the samples against one real split."""

    split: str
    fid: float
    reference_images: int


@dataclass(frozen=True)
class FidResult:
    """FID against every reference split; `reference` is the headline one."""

    images: int  # generated images behind the figures
    images_per_s: float  # Inception throughput on them
    reference: str
    splits: tuple[SplitFid, ...]
    inception_weights: str
    comparability: str

    @property
    def headline(self) -> SplitFid:
        return next(s for s in self.splits if s.split == self.reference)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fid_images": self.images,
            "inception_images_per_s": self.images_per_s,
        }
        for s in self.splits:
            out[f"fid_{s.split}"] = s.fid
            out[f"fid_{s.split}_reference_images"] = s.reference_images
        out |= {
            "fid": self.headline.fid,
            "fid_reference": self.reference,
            "inception_weights": self.inception_weights,
            "comparability": self.comparability,
        }
        return out


@dataclass(frozen=True)
class IscResult:
    """Inception Score mean and std over `evaluate.isc_splits`, or why there is none."""

    status: str  # "ok", "off (...)" or "unavailable: <why>"
    mean: float | None = None
    std: float | None = None

    def metrics(self) -> dict[str, Any]:
        if self.mean is None:
            return {"isc_status": self.status}
        return {"isc_status": self.status, "isc_mean": self.mean, "isc_std": self.std}

    def summary(self) -> str:
        return f"{self.mean:.2f} +- {self.std:.2f}" if self.mean is not None else self.status


@dataclass(frozen=True)
class NllResult:
    """The bound on real images: the headline split, and with `evaluate.nll_split: both` the
    training split beside the test split and the gap (train - test)."""

    bound: NllSummary  # the headline: test, or train with nll_split train (or no test split)
    split: str  # the headline's split
    images_per_s: float
    train: NllSummary | None = None  # with nll_split both

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.bound.metrics(),
            "nll_split": self.split if self.train is None else "both",
            "nll_images_per_s": self.images_per_s,
        }
        if self.train is not None:
            gap = self.train.bpd - self.bound.bpd
            out |= {
                "nll_test_bpd": self.bound.bpd,
                "nll_test_bpd_sem": self.bound.sem,
                "nll_train_bpd": self.train.bpd,
                "nll_train_bpd_sem": self.train.sem,
                "nll_train_images": self.train.images,
                "nll_gap_bpd": gap,  # train - test: < 0 when the model fits train better
                "nll_gap_bpd_sem": math.hypot(self.train.sem, self.bound.sem),
            }
        return out

    def summary(self) -> str:
        n = self.bound
        text = f"NLL {n.bpd:.4f} +- {n.sem:.4f} bits/dim on {n.images} {self.split} images"
        if self.train is not None:
            t = self.train
            text += (
                f" (train {t.bpd:.4f} +- {t.sem:.4f} on {t.images}; "
                f"gap train - test {t.bpd - n.bpd:+.4f})"
            )
        return text


@dataclass(frozen=True)
class EvaluateResult:
    """Everything the evaluate stage measured; `metrics()` is `metrics/eval.json`."""

    metrics_file: ClassVar[str] = "eval.json"

    fid: FidResult
    isc: IscResult
    nll: NllResult
    rate_distortion: tuple[Table4Row, ...]
    figures: tuple[Path, ...]
    wall_time_s: float
    run_id: str  # the MLflow run
    promotion: str = "not gated"  # the registry's decision on the model (`registry.promote`)

    def metrics(self) -> dict[str, Any]:
        return {
            **self.fid.metrics(),
            **self.isc.metrics(),
            **self.nll.metrics(),
            **table4_metrics(self.rate_distortion),
            "wall_time_s": self.wall_time_s,
            "promotion": self.promotion,
        }

    def summary(self) -> str:
        f = self.fid
        return (
            f"FID {f.headline.fid:.3f} vs {f.reference} ({f.images} samples, "
            f"{f.inception_weights}); IS {self.isc.summary()}; {self.nll.summary()}\n"
            f"{f.comparability} (MLflow run {self.run_id})\nregistry: {self.promotion}"
        )


def check_counts(params: Params, samples_dir: Path) -> int:
    """The number of samples FID/IS use; a clear error when the sample stage made too few."""
    have = int(samples.read_manifest(samples_dir)["num_images"])
    want = params.evaluate.fid_images
    if have < want:
        raise ValueError(
            f"evaluate.fid_images: {want} requested but {samples_dir} holds {have} samples "
            f"(raise sample.num_images to >= {want} and rerun the sample stage, or lower it)"
        )
    return want


def isc_result(
    params: Params, weights: InceptionWeights, isc: tuple[float, float] | None
) -> IscResult:
    """IS mean/std over `isc_splits`, or the reason it is unavailable."""
    if not params.evaluate.isc:
        return IscResult("off (evaluate.isc: false)")
    if isc is None:
        return IscResult(
            f"unavailable: {weights.label} has no logits layer; put torch-fidelity's full "
            f"weights at {hub_weights_path()} or name them in evaluate.inception_weights"
        )
    return IscResult("ok", *isc)


def fid_and_isc(
    params: Params, root: Path, weights: InceptionWeights, n: int
) -> tuple[FidResult, IscResult]:
    """FID against the reference split (and the other split), IS when the weights allow it."""
    cfg = params.evaluate
    samples_dir = root / params.paths.samples
    images = samples.load_samples(samples_dir, n)  # (n, C, H, W) uint8
    refs = read_references(params, root, weights)  # the fid_stats stage's, verified
    for ref in refs:
        check_compatible(images, ref.image_shape, f"FID vs the {ref.split} split")
    t0 = time.perf_counter()
    s = score(
        images,
        weights,
        [ref.stats for ref in refs],
        cfg.isc_splits if cfg.isc else None,
        ray_extractor(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu),
        f"samples in {samples_dir}",
    )
    rate = n / (time.perf_counter() - t0)
    splits = [SplitFid(r.split, f, r.count) for r, f in zip(refs, s.fid, strict=True)]
    headline = next(s for s in splits if s.split == cfg.fid_reference)
    label = comparability(params, weights, n, headline.reference_images)
    result = FidResult(n, rate, cfg.fid_reference, tuple(splits), weights.label, label)
    return result, isc_result(params, weights, s.isc)


def nll_splits(params: Params, root: Path) -> tuple[str, ...]:
    """The splits `evaluate.nll_split` asks for, headline first; checked before Ray starts.

    Without test images (no or an empty test split), `test` falls back to train (as before);
    `both` is an error.
    """
    shards_dir = root / params.paths.shards
    splits = shards.read_manifest(shards_dir)["splits"]
    have = {name for name, split in splits.items() if split["num_images"] > 0}
    want = params.evaluate.nll_split
    if want == "both":
        if "test" not in have or "train" not in have:
            raise ValueError(
                f"evaluate.nll_split: 'both' needs a train and a test split but "
                f"{shards_dir}/manifest.json has {sorted(have)}; use 'test' or 'train'"
            )
        return ("test", "train")
    if want == "test" and "test" not in have:
        return ("train",)
    return (want,)


def split_bpd(params: Params, root: Path, split: str) -> tuple[BpdResult, float]:
    """The bound (L_T + sum L_{t-1} + L_0, eq. 5) on the first `nll_images` of `split`, and
    images/s."""
    cfg = params.evaluate
    images, _ = shards.load_split(root / params.paths.shards, split, max_images=cfg.nll_images)
    t0 = time.perf_counter()
    bpd = evaluate_bpd(
        images,  # (N, C, H, W) uint8
        EmaModelLoader(params, str(root / params.paths.model)),
        params.diffusion,
        seed=params.seed,
        chunk_size=cfg.nll_batch_size,
        num_workers=cfg.num_workers,
        cpus_per_worker=cfg.cpus_per_worker,
        use_gpu=cfg.use_gpu,
        options=InferenceOptions(cfg.nll_precision, cfg.nll_channels_last, cfg.nll_compile),
    )
    return bpd, len(images) / (time.perf_counter() - t0)


def nll_result(params: Params, root: Path, splits: tuple[str, ...]) -> tuple[NllResult, BpdResult]:
    """The bound on each of `splits` (headline first); the headline's per-image terms feed the
    rate-distortion figure, so it stays on the test split whenever that is evaluated."""
    headline, rate = split_bpd(params, root, splits[0])
    train = split_bpd(params, root, "train")[0].summary() if len(splits) > 1 else None
    result = NllResult(headline.summary(), splits[0], rate, train)
    return result, headline


def run_evaluate(params: Params, root: Path, tracker: Tracker) -> EvaluateResult:
    """FID/IS + NLL + rate-distortion, logged to `tracker`; the samples are checked first."""
    n = check_counts(params, root / params.paths.samples)  # before Ray starts
    weights_file = root / params.paths.model / model_dir.WEIGHTS_FILE
    samples.check_current(root / params.paths.samples, params, weights_file)
    splits = nll_splits(params, root)
    pairs = source_pairs(params, root / params.paths.shards)  # Fig. 8's test images
    weights = load_inception(root / params.paths.fid_stats)  # what the reference stats used
    init_ray(params.ray)
    t0 = time.perf_counter()
    fid_res, isc_res = fid_and_isc(params, root, weights, n)
    nll_res, bpd = nll_result(params, root, splits)
    label = data_label(params) + ("" if nll_res.split == "test" else f", {nll_res.split} split")
    figures = write_rate_distortion(bpd, root / params.paths.plots, label)
    figures.append(write_interpolation(params, root, pairs))
    figures.append(write_shared_latent(params, root))  # Fig. 7
    result = EvaluateResult(
        fid_res,
        isc_res,
        nll_res,
        table4(bpd),
        tuple(figures),
        time.perf_counter() - t0,
        tracker.run_id,
    )
    log.info(
        "FID %.3f (%s); NLL %.4f bits/dim",
        fid_res.headline.fid,
        fid_res.comparability,
        nll_res.bound.bpd,
    )
    step = model_dir.exported_step(root / params.paths.model)  # of the weights evaluated
    tracker.log_metrics(numeric(result.metrics()), step=step)
    tracker.set_tags(
        {
            "fid.comparability": fid_res.comparability,
            "fid.inception_weights": fid_res.inception_weights,
            "isc.status": isc_res.status,
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
    (`infra.registry.promote`); None without a parent."""
    parent = tracker.parent()
    if parent is None:
        return None
    model_id = log_headline(result, parent, step)
    fid = result.fid
    return registry.promote(
        parent.client, params.mlflow.model_name, parent.run_id, model_id, fid.headline.fid,
        fid.reference, fid.comparability,
    )  # fmt: skip


def log_headline(result: EvaluateResult, parent: Tracker, step: int) -> str | None:
    """FID and NLL (and FID's comparability label) also on the parent train run: the runs table
    of train runs then sorts by FID. They are linked to the model the train run logged (MLflow
    3's LoggedModel), whose id is returned (None when it logged none)."""
    metrics = numeric(result.metrics())
    headline = {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}
    model_id = registry.logged_model_id(parent.client, parent.run_id)
    if model_id is None:
        parent.log_metrics(headline, step)
    else:
        registry.log_model_metrics(parent.client, parent.run_id, model_id, headline, step)
    parent.set_tags({"fid.comparability": result.fid.comparability})
    return model_id
