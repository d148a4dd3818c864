"""How the evaluate stage reports: comparability labels, Table 4 rows, rate-distortion files.

Paper protocol (Ho et al. 2020, App. B): FID of 50,000 samples against the training set (the test
set as a second figure), IS over 10 splits, the variational bound on the test set with the EMA
weights. Any departure (other data, other Inception weights, fewer images, a strided sampler) is
written next to the numbers as `comparability`, so a figure is never shown without its caveats.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ddpm_core.samplers.registry import is_paper
from pipelines.config import Params
from pipelines.evaluate.nll import BpdResult
from pipelines.fid.inception import LABEL_FULL, InceptionWeights
from pipelines.infra.figures import save_line_plot
from pipelines.infra.files import atomic_path
from pipelines.infra.sampler_params import sampler_of

PAPER_IMAGES = 50_000  # samples and reference images behind the published FID / IS
RD_CSV = "rate_distortion.csv"
RD_PNG = "rate_distortion.png"
NLL_TERMS_PNG = "nll_terms.png"


def data_label(params: Params) -> str:
    """Which images a figure is about, e.g. 'digits' or 'image_folder (cifar10-test-jpeg.zip)'."""
    root = f" ({Path(params.data.root).name})" if params.data.root else ""
    return f"{params.data.source}{root}"


def comparability(params: Params, weights: InceptionWeights, samples: int, ref: int) -> str:
    """'comparable with published figures' or 'NOT comparable with published figures: <why>'."""
    why = []
    if params.data.source != "cifar10":
        why.append(f"data.source={data_label(params)}, not lossless CIFAR-10")
    if weights.label != LABEL_FULL:
        why.append(f"Inception weights: {weights.label}")
    if samples < PAPER_IMAGES:
        why.append(f"{samples} samples, not {PAPER_IMAGES}")
    if ref < PAPER_IMAGES and params.evaluate.fid.reference == "train":
        why.append(f"{ref} reference images, not the {PAPER_IMAGES} of the training set")
    sampler = sampler_of(params)
    if not is_paper(sampler):
        why.append(f"{sampler.describe()} sampler ({sampler.reference}, not the paper)")
    if params.sample.stride != 1:
        why.append(f"strided sampler (sample.stride={params.sample.stride})")
    if not why:
        return "comparable with published figures"
    return "NOT comparable with published figures: " + "; ".join(why)


@dataclass(frozen=True)
class Table4Row:
    """Rate (bits/dim) and distortion (RMSE on [0, 255]) after `step` reverse steps."""

    step: int
    rate_bpd: float
    rmse: float


def table4(result: BpdResult) -> tuple[Table4Row, ...]:
    """Rate and distortion at every 10th of the reverse process (the rows of paper Table 4)."""
    rd = result.rate_distortion()
    T = len(rd["reverse_step"])
    rows = []
    for k in range(10, 0, -1):
        step = max(1, T * k // 10)  # T < 10: the rows repeat, never step 0
        i = T - step  # rd arrays run from reverse step T down to 1
        rows.append(Table4Row(step, float(rd["rate_bpd"][i]), float(rd["distortion_rmse"][i])))
    return tuple(rows)


def table4_metrics(rows: tuple[Table4Row, ...]) -> dict[str, float]:
    """The rows as metrics: `rd_rate_bpd_step<k>` and `rd_rmse_step<k>`."""
    out: dict[str, float] = {}
    for row in rows:
        out[f"rd_rate_bpd_step{row.step}"] = row.rate_bpd
        out[f"rd_rmse_step{row.step}"] = row.rmse
    return out


def write_rate_distortion(result: BpdResult, plots: Path, data: str) -> list[Path]:
    """`rate_distortion.csv` (a DVC plot) and the paper's Fig. 5 panels as a PNG."""
    rd = result.rate_distortion()
    csv_path = plots / RD_CSV
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reverse_step", "rate_bpd", "distortion_rmse"])
        for step, rate, dist in zip(
            rd["reverse_step"], rd["rate_bpd"], rd["distortion_rmse"], strict=True
        ):
            w.writerow([int(step), f"{rate:.6g}", f"{dist:.6g}"])
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
