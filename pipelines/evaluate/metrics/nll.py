"""NLL: the variational bound in bits/dim (Ho et al. 2020, Eq. 5 and Table 2) on real images,
and the rate-distortion of progressive coding its terms give (Table 4, Fig. 5)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts import shards
from pipelines.config import Params
from pipelines.evaluate.metrics.base import Inputs, Measured, Metric, Need
from pipelines.evaluate.nll import BpdResult, EmaModelLoader, NllSummary, evaluate_bpd
from pipelines.evaluate.report import data_label, table4, table4_metrics, write_rate_distortion
from pipelines.infra.accel import InferenceOptions


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


def measure(inputs: Inputs) -> Measured:
    """The bound, Table 4's rows and the rate-distortion files (paper Fig. 5)."""
    params, root = inputs.params, inputs.root
    result, bpd = nll_result(params, root, nll_splits(params, root))
    label = data_label(params) + ("" if result.split == "test" else f", {result.split} split")
    figures = write_rate_distortion(bpd, root / params.paths.plots, label)
    return Measured(
        result.metrics() | table4_metrics(table4(bpd)),
        result.summary(),
        figures=tuple(figures),
        comparable=(result.split, f"{result.bound.images} {label} images"),
    )


def check(params: Params, root: Path) -> None:
    nll_splits(params, root)


NLL = Metric(
    name="nll",
    params=("evaluate.nll_*", "evaluate.num_workers", "evaluate.cpus_per_worker", "seed"),
    needs=frozenset({Need.MODEL}),
    layers=(),
    logs=("nll_*", "prior_bpd", "decoder_bpd", "rd_rate_bpd_step*", "rd_rmse_step*"),
    lower_is_better=("nll_bpd",),
    measure=measure,
    check=check,
)
