"""Which Ray cluster a stage connects to, and the early 'does not fit' check."""

from __future__ import annotations

import pytest

from pipelines.config import RayConfig
from pipelines.infra.ray import WORKER_NICENESS, check_fits, init_ray, ray_address


def test_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(RayConfig(address=None, num_cpus=None)) is None  # a local cluster
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert ray_address(RayConfig(address=None, num_cpus=None)) == "ray://head:10001"
    assert ray_address(RayConfig(address="auto", num_cpus=None)) == "auto"


@pytest.mark.ray
def test_requests_beyond_the_cluster_are_named(local_ray: object) -> None:
    check_fits(2, 1.0, 0.0, "sample")  # the session cluster has 2 CPUs, no GPU
    with pytest.raises(ValueError, match=r"sample: 3 workers x 1.0 CPU = 3.0 CPUs requested"):
        check_fits(3, 1.0, 0.0, "sample")
    with pytest.raises(ValueError, match=r"train: 1 workers x 1.0 GPU = 1.0 GPUs requested"):
        check_fits(1, 1.0, 1.0, "train")


@pytest.mark.ray
def test_a_local_cluster_runs_its_workers_at_nice_0(
    no_ray: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's default is nice 15: every other process would preempt the training worker."""
    import os

    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(RayConfig(address=None, num_cpus=1))
    try:
        assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == WORKER_NICENESS == 0
    finally:
        ray.shutdown()
