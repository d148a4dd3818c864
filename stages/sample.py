"""DVC stage `sample`: EMA model -> N images (Algorithm 2 on a Ray actor pool), figures, metrics.

Rerunning after a crash resumes: shards already complete and verified are kept. `dvc repro`
deletes the stage's outputs first, so there a rerun starts over (see README, Sampling).
"""

from __future__ import annotations

from pipelines.sample.pool import run_sample_stage
from stages.common import parser, start
from stages.tracked import run_child_stage


def main(argv: list[str] | None = None) -> int:
    started = start(parser(__doc__ or ""), argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, _ = started
    metrics, run_id = run_child_stage(params, "sample", "sample.json", run_sample_stage)
    print(
        f"{params.paths.samples}: {metrics['num_images']} images ({metrics['sampler']}), "
        f"{metrics['new_images']} new at {metrics['images_per_s']:.2f} images/s, "
        f"ordered_hash {metrics['ordered_hash'][:16]} (MLflow run {run_id})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
