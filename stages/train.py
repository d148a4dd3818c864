"""DVC stage `train`: Algorithm 1 on Ray Train -> EMA weights, resolved config, metrics."""

from __future__ import annotations

from pipelines.infra.tracking import repo_root
from pipelines.train.export import export_outputs
from pipelines.train.worker import run_training
from stages.common import parser, start


def main(argv: list[str] | None = None) -> int:
    started = start(parser(__doc__ or ""), argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, _ = started
    root = repo_root()
    result = run_training(params, root=root)
    metrics = export_outputs(params, result, root)
    print(
        f"{params.paths.model}: EMA weights at step {metrics['steps']}, final loss "
        f"{metrics['final_loss']:.4f}, {metrics['images_per_s']:.0f} img/s "
        f"(Ray run {result.run_name}, MLflow run {result.tracker.run_id}, "
        f"resumed from step {metrics['resumed_from']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
