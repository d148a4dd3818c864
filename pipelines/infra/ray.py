"""Connecting to Ray: an existing cluster when one is named, else a local one on this machine."""

from __future__ import annotations

import logging
import os

import ray

from pipelines.config import RayConfig

log = logging.getLogger(__name__)


# Ray starts worker processes at nice 15, so any other process on the node -- Ray's own GCS,
# raylet, dashboard and Train controller included -- preempts a training worker's intra-op
# threads, and one preempted thread stalls the whole op. The stage's workers are the job.
WORKER_NICENESS = 0


def ray_address(cfg: RayConfig) -> str | None:
    """params `ray.address` > `RAY_ADDRESS` (set by `ray job submit`) > None (start locally)."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig) -> None:
    """Connect once per process; a no-op when Ray is already initialised (tests, jobs).

    Locally we pass `address="local"` explicitly: a stale `ray_current_cluster` file left by any
    `ray start` would otherwise make a bare `ray.init()` attach to a dead cluster. The local
    cluster has the dashboard (on loopback): Ray Train's placement-group cleaner queries the
    state API it serves, and users watch jobs there. Its workers run at nice 0
    (`WORKER_NICENESS`), not Ray's default 15.
    """
    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address is not None:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus or os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        _system_config={"worker_niceness": WORKER_NICENESS},
    )


def cluster_resources() -> dict[str, float]:
    """Total CPUs/GPUs of the connected cluster (for early 'does not fit' errors)."""
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def check_fits(num_workers: int, cpus_per_worker: float, gpus_per_worker: float, what: str) -> None:
    """Raise before any worker starts when the request exceeds the cluster's totals."""
    have = cluster_resources()
    need_cpu, need_gpu = num_workers * cpus_per_worker, num_workers * gpus_per_worker
    if need_gpu > have.get("GPU", 0.0):
        raise ValueError(
            f"{what}: {num_workers} workers x {gpus_per_worker} GPU = {need_gpu} GPUs requested, "
            f"but the Ray cluster has {have.get('GPU', 0.0)} (set use_gpu: false or fewer workers)"
        )
    if need_cpu > have.get("CPU", 0.0):
        raise ValueError(
            f"{what}: {num_workers} workers x {cpus_per_worker} CPU = {need_cpu} CPUs requested, "
            f"but the Ray cluster has {have.get('CPU', 0.0)} (lower num_workers/cpus_per_worker)"
        )
