"""How evaluate reports: comparability labels, sample counts, Table 4 rows, rate-distortion."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipelines.artifacts.samples import MANIFEST
from pipelines.config import Params
from pipelines.evaluate import report
from pipelines.evaluate.nll import BpdResult
from pipelines.evaluate.stage import check_counts
from pipelines.fid.inception import LABEL_CONVERTED, LABEL_FULL, InceptionWeights

MakeParams = Callable[..., Params]
FULL = InceptionWeights(Path("w.pth"), LABEL_FULL, has_logits=True)
POOL3 = InceptionWeights(Path("w.pth"), LABEL_CONVERTED, has_logits=False)


def test_only_the_paper_protocol_is_called_comparable(make_params: MakeParams) -> None:
    cifar = make_params(
        {
            "data.source": "cifar10",
            "data.root": "/data",
            "data.raw": "/data",
            "data.channels": 3,
            "data.resolution": 8,
        }
    )
    assert report.comparability(cifar, FULL, 50_000, 50_000) == (
        "comparable with published figures"
    )
    label = report.comparability(make_params({"sample.stride": 4}), POOL3, 256, 1000)
    assert label.startswith("NOT comparable with published figures: ")
    for reason in (
        "data.source=digits",
        LABEL_CONVERTED,
        "256 samples, not 50000",
        "1000 reference images",
        "sample.stride=4",
    ):
        assert reason in label
    ddim = make_params({"sample.sampler": "ddim", "sample.sampler_options": {"ddim": {"eta": 0}}})
    assert "DDIM eta=0 sampler (Song et al. 2021, not the paper)" in report.comparability(
        ddim, FULL, 50_000, 50_000
    )
    jpeg = make_params(
        {"data.source": "image_folder", "data.root": "d/cifar10-test-jpeg.zip", "data.raw": "d"}
    )
    assert "image_folder (cifar10-test-jpeg.zip)" in report.comparability(jpeg, FULL, 5, 5)


def test_too_few_samples_is_an_error_naming_both_keys(
    make_params: MakeParams, tmp_path: Path
) -> None:
    params = make_params({"evaluate.fid.images": 8})
    samples = tmp_path / "samples"
    with pytest.raises(FileNotFoundError, match="run the sample stage first"):
        check_counts(params, samples)
    samples.mkdir()
    (samples / MANIFEST).write_text('{"num_images": 5}')
    with pytest.raises(ValueError, match=r"evaluate.fid.images: 8 requested .* holds 5 samples"):
        check_counts(params, samples)
    (samples / MANIFEST).write_text('{"num_images": 9}')
    assert check_counts(params, samples) == 8


def _bpd(n: int = 3, T: int = 20, seed: int = 0) -> BpdResult:
    g = np.random.default_rng(seed)
    return BpdResult(
        total_bpd=g.uniform(3, 4, n),
        prior_bpd=g.uniform(0, 1e-5, n),
        terms_bpd=g.uniform(0, 0.2, (n, T)),
        mse=np.sort(g.uniform(0, 0.5, (n, T)), axis=1),  # noisier x_t: worse x0_pred
    )


def test_table4_rows_are_every_tenth_of_the_reverse_process() -> None:
    result = _bpd(T=20)
    rows = report.table4_metrics(report.table4(result))
    rd = result.rate_distortion()
    assert sorted(rows) == sorted(
        [f"rd_rate_bpd_step{s}" for s in range(2, 21, 2)]
        + [f"rd_rmse_step{s}" for s in range(2, 21, 2)]
    )
    # Reverse step T (all steps done) is index 0: the full rate without L_0, the best RMSE.
    assert rows["rd_rate_bpd_step20"] == rd["rate_bpd"][0]
    assert rows["rd_rate_bpd_step20"] == pytest.approx(
        result.prior_bpd.mean() + result.terms_bpd[:, 1:].mean(0).sum()
    )
    assert rows["rd_rmse_step2"] == rd["distortion_rmse"][18]
    short = report.table4(_bpd(T=4))  # fewer steps than rows: repeated rows, no step 0
    assert [r.step for r in short] == [4, 3, 3, 2, 2, 2, 1, 1, 1, 1]


def test_rate_distortion_csv_is_a_monotone_curve(tmp_path: Path) -> None:
    paths = report.write_rate_distortion(_bpd(), tmp_path / "plots", "digits")
    assert [p.name for p in paths] == [report.RD_CSV, report.RD_PNG, report.NLL_TERMS_PNG]
    assert all(p.is_file() for p in paths)
    with paths[0].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and rows[0]["reverse_step"] == "20" and rows[-1]["reverse_step"] == "1"
    rate = np.array([float(r["rate_bpd"]) for r in rows])
    rmse = np.array([float(r["distortion_rmse"]) for r in rows])
    # Rows run from reverse step T (every KL sent) back to step 1: fewer bits, a larger error.
    assert np.all(np.diff(rate) <= 0) and np.all(np.diff(rmse) >= 0)
