"""DVC stage `evaluate`: FID / IS of the samples, NLL bits/dim and the rate-distortion curve."""

from __future__ import annotations

from pipelines.evaluate.stage import run_evaluate_stage
from stages.common import parser, start
from stages.tracked import run_child_stage


def main(argv: list[str] | None = None) -> int:
    started = start(parser(__doc__ or ""), argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, _ = started
    metrics, run_id = run_child_stage(params, "evaluate", "eval.json", run_evaluate_stage)
    isc = (
        f"IS {metrics['isc_mean']:.2f} +- {metrics['isc_std']:.2f}"
        if "isc_mean" in metrics
        else f"IS {metrics['isc_status']}"
    )
    print(
        f"FID {metrics['fid']:.3f} vs {metrics['fid_reference']} ({metrics['fid_images']} samples,"
        f" {metrics['inception_weights']}); {isc}; NLL {metrics['nll_bpd']:.4f} "
        f"+- {metrics['nll_bpd_sem']:.4f} bits/dim on {metrics['nll_images']:.0f} "
        f"{metrics['nll_split']} images\n{metrics['comparability']} (MLflow run {run_id})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
