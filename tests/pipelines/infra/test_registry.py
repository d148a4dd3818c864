"""The model as an MLflow Model, its registered versions and the promotion gate, on a real
`mlflow server` on loopback."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.sampling import sample_indices
from pipelines.artifacts.model_dir import CONFIG_FILE, WEIGHTS_FILE, load_ema_model
from pipelines.config import Params
from pipelines.infra import pyfunc_model, registry
from pipelines.infra.monitor import system_metrics
from pipelines.infra.pyfunc_model import check_indices
from pipelines.infra.tracking import Tracker, open_run
from pipelines.train.mlflow_model import WEIGHTS_TAG, log_mlflow_model
from tests.helpers import MlflowServer, build_params, make_model_dir

NAME = "ddpm-test"


def server_params(root: Path, url: str, name: str | None = NAME) -> Params:
    params = build_params(root)
    cfg = dataclasses.replace(params.mlflow, tracking_uri=url, model_name=name)
    return dataclasses.replace(params, mlflow=cfg)


def test_trained_model_is_a_registered_pyfunc_that_samples_without_this_repo(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    params = server_params(tmp_path, mlflow_server.url)
    model_dir = make_model_dir(params)
    tracker = open_run(params, "train", tmp_path)
    tracker.log_metrics({"final_loss": 0.5}, step=params.train.steps)
    logged = log_mlflow_model(params, tracker, model_dir, params.train.steps)
    assert logged.version is not None
    # A rerun of the finished run logs no second model and registers no second version.
    assert log_mlflow_model(params, tracker, model_dir, params.train.steps) == logged
    client = MlflowClient(mlflow_server.url)
    model = client.get_logged_model(logged.model_id)
    assert model.source_run_id == tracker.run_id and WEIGHTS_TAG in model.tags
    # The run's metrics at the final step are the model's metrics (MLflow 3 LoggedModel).
    assert {m.key: m.value for m in model.metrics or []} == {"final_loss": 0.5}
    version = client.get_model_version(NAME, logged.version)
    assert version.run_id == tracker.run_id and version.source == logged.model_uri

    # In a fresh interpreter outside the repository: ddpm_core comes from the model's code.
    out = tmp_path / "out.npy"
    script = textwrap.dedent(
        f"""
        import sys
        import mlflow, numpy as np, pandas as pd
        mlflow.set_tracking_uri({mlflow_server.url!r})
        model = mlflow.pyfunc.load_model("models:/{NAME}/{logged.version}")
        sig = model.metadata.signature
        assert [c.name for c in sig.inputs.inputs] == ["index"], sig
        assert sig.outputs.inputs[0].shape == (-1, 8, 8, 1), sig
        images = model.predict(pd.DataFrame({{"index": [0, 1, 2]}}), params={{"stride": 5}})
        np.save({str(out)!r}, images)
        print(sys.modules["ddpm_core"].__file__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "/code/ddpm_core/" in done.stdout.strip().splitlines()[-1]
    # The same images as the pipeline's sampler: image i depends only on (seed, i).
    unet = load_ema_model(params, model_dir)
    chain = GaussianDiffusion.from_config(params.diffusion).respaced(5)
    want = sample_indices(unet, chain, [0, 1, 2], params.seed, (1, 8, 8))  # (3, C, H, W)
    images = np.load(out)
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(images, want.permute(0, 2, 3, 1).numpy())


def test_pyfunc_reads_the_model_folder_format() -> None:
    """The model's code cannot import `pipelines`: its copy of the folder's file names agrees."""
    assert (pyfunc_model.WEIGHTS_FILE, pyfunc_model.CONFIG_FILE) == (WEIGHTS_FILE, CONFIG_FILE)
    assert pyfunc_model.__name__ == pyfunc_model.MODULE  # imported: set_model is not called


def test_pyfunc_input_errors_name_the_column() -> None:
    with pytest.raises(ValueError, match="expected a column 'index'"):
        check_indices(pd.DataFrame({"i": [0]}))
    with pytest.raises(ValueError, match="index must be >= 0, got -1"):
        check_indices(pd.DataFrame({"index": [0, -1]}))


def test_unregistered_when_model_name_is_null(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    params = server_params(tmp_path, mlflow_server.url, name=None)
    tracker = open_run(params, "train", tmp_path)
    logged = log_mlflow_model(params, tracker, make_model_dir(params), params.train.steps)
    assert logged.version is None
    assert registry.logged_model_id(tracker.client, tracker.run_id) == logged.model_id


def gated_versions(
    root: Path, url: str, name: str, n: int
) -> tuple[MlflowClient, tuple[Tracker, Any], list[str]]:
    """`n` versions of `name`: the train run's logged model, then the same model registered from
    `n - 1` other runs (the runs are labels here; a new run id makes a new version)."""
    params = server_params(root, url, name=name)
    tracker = open_run(params, "train", root)
    logged = log_mlflow_model(params, tracker, make_model_dir(params), params.train.steps)
    client = MlflowClient(url)
    others = [registry.register(client, name, logged.model_id, f"run{i}") for i in range(n - 1)]
    return client, (tracker, logged), [str(logged.version)] + [str(v.version) for v in others]


def test_promotion_gate_moves_champion_only_on_a_better_comparable_fid(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """Versions of one logged model, gated in turn with FIDs as evaluate reports them."""
    name = "ddpm-gate"
    client, _, versions = gated_versions(tmp_path, mlflow_server.url, name, 6)
    label = "NOT comparable with published figures: 8 samples, not 50000"

    def gate(i: int, fid: float, lab: str = label) -> registry.Promotion:
        return registry.gate(client, name, versions[i], fid, "train", lab)

    def champion() -> str:
        return client.get_model_version_by_alias(name, registry.CHAMPION).version

    first = gate(0, 10.0)
    assert first.outcome == "champion" and first.previous is None and champion() == versions[0]
    worse = gate(1, 12.0)
    assert worse.outcome == "rejected" and champion() == versions[0]
    tags = client.get_model_version(name, versions[1]).tags
    assert tags[registry.PROMOTION_TAG] == "rejected"
    assert tags[registry.REASON_TAG] == f"FID 12 >= champion v{versions[0]}'s 10"
    assert gate(2, 8.0).outcome == "champion" and champion() == versions[2]
    other = gate(3, 1.0, "comparable with published figures")
    assert other.outcome == "not_compared" and champion() == versions[2]
    assert "not comparable with champion" in other.reason
    assert gate(4, math.nan).outcome == "rejected" and champion() == versions[2]
    again = gate(2, 9.0)  # evaluate rerun on the champion: keeps the alias, updates its FID
    assert again.outcome == "champion" and champion() == versions[2]
    assert client.get_model_version(name, versions[2]).tags[registry.FID_TAG] == "9.0"
    # The champion loads by alias.
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        images = model.predict(pd.DataFrame({"index": [3]}), params={"stride": 20})
    finally:
        mlflow.set_tracking_uri(None)
    assert images.shape == (1, 8, 8, 1)


def test_gate_promotes_on_the_metric_mlflow_promote_on_names(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """`mlflow.promote_on: kid` (any lower-is-better metric): the same rule on its tags; a
    champion gated on another metric is not compared (and keeps the alias)."""
    name = "ddpm-kid"
    client, (tracker, logged), versions = gated_versions(tmp_path, mlflow_server.url, name, 3)
    label = "NOT comparable with published figures: 8 samples, not 50000"

    def gate(i: int, kid: float, metric: str = "kid") -> registry.Promotion:
        return registry.gate(client, name, versions[i], kid, "train", label, metric)

    def champion() -> str:
        return client.get_model_version_by_alias(name, registry.CHAMPION).version

    first = gate(0, 0.02)
    assert first.reason == "first version with a KID (0.02); no champion yet"
    tags = client.get_model_version(name, versions[0]).tags
    assert (tags["kid"], tags["kid.reference"], tags["kid.comparability"]) == (
        "0.02",
        "train",
        label,
    )
    assert registry.FID_TAG not in tags
    worse = gate(1, 0.05)
    assert (
        worse.outcome == "rejected"
        and worse.reason == f"KID 0.05 >= champion v{versions[0]}'s 0.02"
    )
    assert gate(2, 0.01).outcome == "champion" and champion() == versions[2]
    other = gate(1, 3.1, "nll_bpd")  # promote_on changed: the champion has no nll_bpd
    assert other.outcome == "not_compared" and champion() == versions[2]
    assert other.reason == f"champion v{versions[2]} has no nll_bpd: gated on another metric"
    text = registry.promote(
        client, name, tracker.run_id, logged.model_id, 0.03, "train", label, "kid"
    )
    assert text == f"{name} v{versions[0]}: rejected (KID 0.03 >= champion v{versions[2]}'s 0.01)"


def test_system_metrics_are_logged_to_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    params = build_params(tmp_path)
    tracker: Tracker = open_run(params, "train", tmp_path)
    key = "system/cpu_utilization_percentage"
    with system_metrics(tracker, enabled=True):
        pass  # shorter than one interval: still one sample, logged at the end
    first = [m.step for m in tracker.client.get_metric_history(tracker.run_id, key)]
    assert len(first) >= 1 and first == list(range(len(first)))
    with system_metrics(tracker, enabled=True):  # a resumed run continues the steps
        pass
    steps = [m.step for m in tracker.client.get_metric_history(tracker.run_id, key)]
    assert len(steps) > len(first) and sorted(steps) == list(range(len(steps)))


def test_gate_on_a_local_store_keeps_the_champion_on_an_evaluate_rerun(tmp_path: Path) -> None:
    """A sqlite store (the default) reports versions as ints, a server as strings."""
    params = build_params(tmp_path)
    tracker = open_run(params, "train", tmp_path)
    logged = log_mlflow_model(params, tracker, make_model_dir(params), params.train.steps)
    name, client = params.mlflow.model_name, tracker.client
    assert name is not None and logged.version == "1"
    assert registry.gate(client, name, "1", 5.0, "train", "x").reason.startswith("first version")
    again = registry.gate(client, name, "1", 4.0, "train", "x")
    assert (again.outcome, again.previous, again.reason) == (
        "champion",
        "1",
        "already champion; FID now 4",
    )


class RacingClient(MlflowClient):
    """A real client that holds its gate at two points, to run two gates in a set interleaving:
    both read the registry only after both tagged their versions (`get_registered_model`), and
    the `later` one moves the alias only after the `first` one has moved it."""

    def __init__(self, url: str, barrier: threading.Barrier, moved: threading.Event, first: bool):
        super().__init__(url)
        self.barrier, self.moved, self.first = barrier, moved, first
        self.read = self.set = False

    def get_registered_model(self, name: str) -> Any:
        if not self.read:
            self.read = True
            self.barrier.wait()
        return super().get_registered_model(name)

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        if not self.set and not self.first:
            self.moved.wait()
        super().set_registered_model_alias(name, alias, version)
        if not self.set and self.first:
            self.moved.set()
        self.set = True


def test_two_racing_promotions_leave_the_champion_on_the_better_fid(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """Two evaluates gate at once with no champion yet: both see none, both would promote; the
    worse one moves the alias last. The alias must still end on the better FID."""
    name = "ddpm-race"
    params = server_params(tmp_path, mlflow_server.url, name=name)
    tracker = open_run(params, "train", tmp_path)
    logged = log_mlflow_model(params, tracker, make_model_dir(params), params.train.steps)
    client = MlflowClient(mlflow_server.url)
    worse_v = str(registry.register(client, name, logged.model_id, "other-run").version)
    barrier, moved = threading.Barrier(2), threading.Event()
    fids = {str(logged.version): 5.0, worse_v: 8.0}
    results: dict[str, registry.Promotion] = {}

    def gate(version: str) -> None:
        racer = RacingClient(mlflow_server.url, barrier, moved, first=fids[version] == 5.0)
        results[version] = registry.gate(racer, name, version, fids[version], "train", "x")

    threads = [threading.Thread(target=gate, args=(v,)) for v in fids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == set(fids)
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == logged.version
    assert results[str(logged.version)].promoted and not results[worse_v].promoted
    tags = client.get_model_version(name, worse_v).tags
    assert tags[registry.PROMOTION_TAG] == "rejected"
