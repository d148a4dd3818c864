"""Ray Train on a simulated multi-node cluster (`ray.cluster_utils.Cluster`): node loss.

This test starts its own Ray cluster (a head plus worker nodes, all on this machine), so the
session's local cluster is stopped first (`no_ray`); the next test that needs it starts it again.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import ray
import ray.train
import torch
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from pipelines.config import Params
from pipelines.infra.tracking import tracking_uri
from pipelines.train.run import RunFolder
from pipelines.train.stage import TrainResult
from pipelines.train.worker import train_loop_per_worker
from tests.helpers import REF_RUN, ema_weights, loss_history, train, train_params

pytestmark = pytest.mark.ray

# The loop wrapper below must reach the workers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# One whole CPU per train worker and one CPU per worker node: the two workers must sit on two
# different nodes. The head has 0 CPUs (Train's controller needs none and is pinned to the
# driver's node, the head), so no worker can land on the head, which cannot be removed.
MULTINODE = {**REF_RUN, "train.cpus_per_worker": 1.0, "train.max_failures": 1}
DEADLINE_S = 60.0


@dataclasses.dataclass(frozen=True)
class HoldForNodeLoss:
    """Test-only loop wrapper. Every worker appends "<rank> <node id>" to `placements` when it
    starts. Once (a `marker` file records it) rank `rank`, after reporting step `step` and
    seeing the controller commit that checkpoint, writes its node id to `marker` and waits for
    the test to remove its node (its peer is then blocked in the next step's all-reduce, so
    the run cannot move on). If the node is not removed in time it raises, failing the test.
    """

    step: int
    rank: int
    marker: str
    placements: str

    def __call__(self, config: dict[str, Any]) -> None:
        real = ray.train.report
        snapshot = config["run"].folder.path / "checkpoint_manager_snapshot.json"
        rank = ray.train.get_context().get_world_rank()
        node_id = ray.get_runtime_context().get_node_id()
        with open(self.placements, "a") as f:
            f.write(f"{rank} {node_id}\n")

        def committed() -> bool:
            text = snapshot.read_text() if snapshot.is_file() else ""
            return f'"step_{self.step:08d}"' in text

        def report(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            real(metrics, *args, **kwargs)
            mine = metrics["step"] == self.step and rank == self.rank
            if not mine or os.path.exists(self.marker):
                return
            deadline = time.monotonic() + DEADLINE_S
            while not committed() and time.monotonic() < deadline:
                time.sleep(0.1)
            tmp = f"{self.marker}.tmp"
            Path(tmp).write_text(node_id)
            os.replace(tmp, self.marker)  # the test sees the whole id or nothing
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                time.sleep(0.1)
            raise RuntimeError(f"node {node_id} was not removed within {DEADLINE_S} s")

        ray.train.report = report
        try:
            train_loop_per_worker(config)
        finally:
            ray.train.report = real


@pytest.fixture
def cluster(no_ray: object) -> Iterator[Cluster]:
    """Head (0 CPUs, the driver's node) + 2 worker nodes with 1 CPU each; the driver connects.

    GCS health checks are tightened (1 s x 3 misses) so a killed raylet is declared dead
    within seconds (about 6 s here) rather than after the longer defaults.
    """
    system_config = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cl = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": system_config},
    )
    try:
        for _ in range(2):
            cl.add_node(num_cpus=1)
        cl.wait_for_nodes()
        ray.init(address=cl.address)
        yield cl
    finally:
        ray.shutdown()
        cl.shutdown()  # type: ignore[no-untyped-call]


class TrainThread(threading.Thread):
    """`train` in a background thread: `Cluster.add_node` only works in the main thread
    (it installs signal handlers), so the test drives the cluster there while training runs."""

    def __init__(self, params: Params, root: Path, loop_fn: HoldForNodeLoss) -> None:
        super().__init__(daemon=True)
        self.params, self.root, self.loop_fn = params, root, loop_fn
        self.out: TrainResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.out = train(self.params, self.root, loop_fn=self.loop_fn)
        except BaseException as e:  # re-raised by the test
            self.error = e


def test_node_loss_restarts_group_on_new_node_and_matches_reference(
    reference: tuple[Params, TrainResult], cluster: Cluster, shards_dir: Path, tmp_path: Path
) -> None:
    """Two workers on two nodes; rank 1's node is killed (SIGKILL, no drain) right after the
    step-2 checkpoint is committed and a replacement node joins. Ray Train must restart the
    worker group inside the same `fit()` on the surviving + the new node, resume from step 2,
    keep logging into the same MLflow run and end with exactly the weights and loss curve of
    an uninterrupted 2-worker run (REF_RUN: MULTINODE only adds placement and max_failures).

    Exact equality holds because the math does not depend on placement: same world size,
    batch split, seeds and gloo all-reduce order, and the checkpoint restores every rank's
    RNG streams (the property test_stage.py's crashed-run test checks on a single node). The
    reference is the session's (conftest `reference`), run on the single-node session cluster
    before this cluster starts.
    """
    head = cluster.head_node
    assert head is not None
    assert ray.get_runtime_context().get_node_id() == head.node_id  # controller on the head

    ref_params, ref_result = reference
    assert ref_result.steps == 6 and ref_result.resumed_from == 0

    root = tmp_path / "faulty"
    params = train_params(root, shards_dir, MULTINODE)
    marker, placements = root / "node_to_kill", root / "placements.txt"
    root.mkdir()
    trainer = TrainThread(params, root, HoldForNodeLoss(2, 1, str(marker), str(placements)))
    trainer.start()
    deadline = time.monotonic() + DEADLINE_S
    while not marker.is_file() and trainer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.is_file(), f"rank 1 never held at step 2 (training error: {trainer.error!r})"
    killed = marker.read_text()
    (node,) = [n for n in cluster.worker_nodes if n.node_id == killed]
    cluster.remove_node(node, allow_graceful=False)  # SIGKILL: raylet and its workers die
    added = cluster.add_node(num_cpus=1).node_id  # the "autoscaler" brings a fresh node
    cluster.wait_for_nodes()
    trainer.join(timeout=2 * DEADLINE_S)
    assert not trainer.is_alive(), "training did not finish after the node loss"
    if trainer.error is not None:
        raise trainer.error
    assert trainer.out is not None
    result = trainer.out

    # Attempt 1: one worker per node, rank 1 on the killed node. Attempt 2: the group was
    # rescheduled onto the surviving node and the replacement node.
    lines = [tuple(ln.split()) for ln in placements.read_text().splitlines()]
    assert len(lines) == 4, lines  # exactly one restart
    first = {rank: node for rank, node in lines[:2]}
    second = {rank: node for rank, node in lines[2:]}
    assert sorted(first) == sorted(second) == ["0", "1"]
    assert first["1"] == killed and first["0"] != killed
    assert set(second.values()) == {first["0"], added}

    assert result.steps == 6 and result.resumed_from == 2
    kept = sorted(p.name for p in result.run_dir.glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]

    # One MLflow run across both attempts, ended FINISHED by the driver.
    run_id = result.run_id
    assert RunFolder(result.run_dir).mlflow_run_id() == run_id
    client = MlflowClient(tracking_uri(params.mlflow, root))
    assert client.get_run(run_id).info.status == "FINISHED"
    resumed = client.get_metric_history(run_id, "resumed_from")
    assert [(m.step, m.value) for m in resumed] == [(2, 2.0)]
    # Step 3 cannot be logged before the kill (it needs rank 1's all-reduce): no duplicates.
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5, 6]

    history, ref_history = loss_history(params), loss_history(ref_params)
    assert [s for s, _ in history] == [s for s, _ in ref_history] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in history] == pytest.approx([v for _, v in ref_history], rel=1e-5)
    torch.testing.assert_close(ema_weights(params), ema_weights(ref_params), rtol=0, atol=1e-6)
