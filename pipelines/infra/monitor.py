"""MLflow system metrics (CPU, memory, disk, network, GPU) on a run, while a block runs.

`mlflow.system_metrics: true` samples the machine of the process that calls it (the train
driver: on one machine that is where the Ray workers run too; on a cluster, the head node) every
`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` seconds (MLflow's default 10) into `system/*` metrics
of the run, and once at the end when the block was shorter than one interval (MLflow's monitor
alone logs nothing then). It needs `psutil` (GPU figures also `nvidia-ml-py`; without it only
the GPU part is skipped).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pipelines.infra.tracking import Tracker

log = logging.getLogger(__name__)


@contextlib.contextmanager
def system_metrics(tracker: Tracker, enabled: bool) -> Iterator[None]:
    """Log system metrics to `tracker`'s run while the block runs (a resumed run continues)."""
    if not enabled:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:  # psutil missing
        raise RuntimeError(
            f"mlflow.system_metrics: true needs psutil ({e}); `pip install psutil` or set "
            "mlflow.system_metrics: false"
        ) from e
    monitor = SystemMetricsMonitor(  # type: ignore[no-untyped-call]
        tracker.run_id, resume_logging=True, tracking_uri=tracker.uri
    )
    first_step = monitor._logging_step
    monitor.start()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        monitor.finish()  # type: ignore[no-untyped-call]
        if monitor._logging_step == first_step:  # shorter than one interval: MLflow logs none
            monitor.collect_metrics()  # type: ignore[no-untyped-call]
            monitor.publish_metrics(monitor.aggregate_metrics())  # type: ignore[no-untyped-call]
            monitor.mlflow_logger.flush()
