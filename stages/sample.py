"""DVC stage `sample`: EMA model -> N images (Algorithm 2 on a Ray actor pool), figures, metrics.

Rerunning after a crash resumes: shards already complete and verified are kept. `dvc repro`
deletes the stage's outputs first, so there a rerun starts over (see README, Sampling).
"""

from __future__ import annotations

from pipelines.sample_ray import run_sample_stage
from pipelines.tracking import repo_root, stage_run
from stages.common import parser, start, write_json


def main(argv: list[str] | None = None) -> int:
    started = start(parser(__doc__ or ""), argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, _ = started
    root = repo_root()
    with stage_run(params, "sample", root=root) as tracker:  # child of the train run
        metrics = run_sample_stage(params, root=root, tracker=tracker)
        metrics_path = root / params.paths.metrics / "sample.json"
        write_json(metrics_path, metrics)
        tracker.log_artifact(metrics_path, "sample")
    print(
        f"{params.paths.samples}: {metrics['num_images']} images ({metrics['sampler']}), "
        f"{metrics['new_images']} new at {metrics['images_per_s']:.2f} images/s, "
        f"ordered_hash {metrics['ordered_hash'][:16]} (MLflow run {tracker.run_id})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
