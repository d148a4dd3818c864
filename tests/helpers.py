"""Test helpers shared by several test files: tiny params, stand-in outputs, real servers.

Fixtures live in `conftest.py`; test files import helpers from here, never from each other.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from ddpm_core.config import DiffusionConfig, UNetConfig
from pipelines.artifacts.model_dir import STEP_KEY, build_unet, write_model_dir
from pipelines.artifacts.shards import SourceData, Split, write_shards
from pipelines.config import Params, from_dict, to_dict

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

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
    "train.fid_stride": 5,
    "train.cpus_per_worker": 0.5,
    "sample.num_images": 8,
    "sample.batch_size": 4,
    "sample.cpus_per_worker": 0.5,
    "sample.progressive_every": 5,
    "sample.progressive_images": 2,
    "sample.grid_images": 4,
    "evaluate.fid.images": 8,
    "evaluate.fid.reference_images": 16,
    "evaluate.kid.subset_size": 4,
    "evaluate.nll_images": 4,
    "evaluate.nll_batch_size": 4,
    "evaluate.cpus_per_worker": 0.5,
    "evaluate.interpolation_t": 10,
    "evaluate.shared_latent_t": [20, 10, 5],
    "evaluate.shared_latent_draws": 2,
    "ray.num_cpus": 2,
}


# Ho et al. 2020, Appendix B (hojonathanho/diffusion scripts/run_cifar.py).
PAPER_DIFFUSION = DiffusionConfig(
    T=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    mean_type="eps",
    var_type="fixedlarge",
    loss_type="mse",
)
PAPER_UNET = UNetConfig(
    ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1
)


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


def assert_portable(run_file: Path) -> None:
    """The record of a `runs/<stage>.json` (tracked by git) holds no absolute path: no string in
    its `details` starts with `/` or names this machine's home or temp folder. (Its `uri` is
    `portable_uri`'s: relative for a store in the repository, the tests' stores are not.)"""
    import json
    import tempfile

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        return [node] if isinstance(node, str) else []

    machine = (str(Path.home()), tempfile.gettempdir())
    for text in strings(json.loads(run_file.read_text())["details"]):
        assert not text.startswith("/") and not any(m in text for m in machine), (run_file, text)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_repo(dst: Path) -> None:
    """This repository's tracked and new (not ignored) files, as they are now, under `dst`."""
    import shutil

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def dead_pid() -> str:
    """The pid of a process that has exited (a killed writer's, for leftover temporaries)."""
    run = [sys.executable, "-c", "import os; print(os.getpid())"]
    return subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()


class RayHead:
    """A real `ray start --head` on loopback with the dashboard (job server), for job tests.

    It uses its own temp dir, and teardown kills only processes started under it, never other
    Ray clusters on the machine (`ray stop` would kill them all).
    """

    def __init__(self, num_cpus: int = 2, temp_dir: str | None = None) -> None:
        import tempfile

        # short (socket paths); `temp_dir` is a folder of its own unless given
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="rayh_", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        # Ports of its own also for the agent and the client server: the defaults (52365,
        # 10001) belong to whichever cluster took them first (the session's local one).
        self.agent_port, self.client_port = free_port(), free_port()
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
            f"--dashboard-agent-listen-port={self.agent_port}",
            f"--ray-client-server-port={self.client_port}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        subprocess.run(cmd, env=self.env(), check=True, capture_output=True, timeout=120)
        return self

    def processes(self) -> list[Any]:
        """The head's processes (those naming its temp dir or its GCS port: the client server)
        and all their descendants: the agents rename themselves (`ray::DashboardAgent`) and
        would outlive a name match."""
        marks = (self.temp_dir, f"--address=127.0.0.1:{self.port} ", f":{self.port} --host")
        return process_family(marks)

    def stop(self) -> None:
        """In `ray stop`'s order: the raylets (each ends its workers and agents), the rest, the
        GCS last. All at once, the raylets, agents, GCS and the autoscaler's monitor outlive
        SIGTERM (the monitor waits on the GCS) and meet SIGKILL after 10 s: a head and a node
        after one job took 12-14 s to stop that way, 5 s in this order."""
        import shutil

        import psutil

        def name(proc: Any) -> str:
            with contextlib.suppress(psutil.Error):
                return str(proc.name())
            return ""

        stop_processes([p for p in self.processes() if name(p) == "raylet"])
        stop_processes([p for p in self.processes() if name(p) != "gcs_server"])
        stop_processes(self.processes())  # the GCS
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def process_family(marks: tuple[str, ...]) -> list[Any]:
    """Processes whose command line holds one of `marks`, and all their descendants."""
    import psutil

    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or []) + " "
        if any(m in cmdline for m in marks):
            roots.append(proc)
    family = {p.pid: p for r in roots for p in [r, *r.children(recursive=True)]}
    family.pop(os.getpid(), None)
    return list(family.values())


def stop_processes(family: list[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s, to exactly these processes."""
    import psutil

    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


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
        self.stop()  # never leave a half-started server behind
        raise TimeoutError(f"mlflow server at {self.url} not healthy after {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ----------------------------------------------------------------------------------------------
# Stand-ins for stage outputs


def params_file(params: Params, path: Path) -> Path:
    """`params` as a YAML file at `path` (what the stage CLIs read)."""
    path.write_text(yaml.safe_dump(to_dict(params)))
    return path


def make_model_dir(params: Params, seed: int = 0, step: int | None = None) -> Path:
    """A stand-in for the train stage's outputs: random (non-zero) EMA weights + config.json;
    `step` is the training step the weights are said to be from (none: like released weights)."""
    torch.manual_seed(seed)
    model = build_unet(params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the zero-initialised output conv would give eps=0
    model_dir = Path(params.paths.model)
    meta = {} if step is None else {STEP_KEY: str(step)}
    write_model_dir(params, model.state_dict(), meta, model_dir)
    return model_dir


# Shards whose images carry their sample id (data-shard readers and the training stream).
W = 6  # image width; row 0 carries the sample id at one end and a 255 marker at the other


def id_images(n: int) -> np.ndarray:
    """(n, 1, 4, W) uint8: image i has id i at [0, 0, 0] and 255 at [0, 0, W-1]."""
    x = np.full((n, 1, 4, W), 100, dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    x[:, 0, 0, -1] = 255
    return x


def write_ids(root: Path, n: int, shard_size: int) -> Path:
    data = SourceData({"train": Split(id_images(n), np.arange(n) % 3)}, ["a", "b", "c"], "ids")
    write_shards(data, root, shard_size, {}, "ids")
    return root


class TinyEps(nn.Module):
    """A small time-conditioned conv net standing in for the U-Net."""

    def __init__(self, channels: int = 2, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, dtype=dtype)
        with torch.no_grad():
            self.conv.weight.copy_(0.2 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(0.1 * torch.randn(self.conv.bias.shape, generator=g))
        self.calls: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append(t.clone())
        return torch.tanh(self.conv(x) + (t.to(x.dtype) / 1000.0).reshape(-1, 1, 1, 1))


# google/ddpm-cifar10-32 config.json (the paper's released CIFAR-10 model, converted by diffusers).
CIFAR10_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def random_diffusers(config: dict[str, Any], seed: int = 0) -> Any:
    """A diffusers UNet2DModel whose every parameter (GN affine too) is random."""
    import diffusers

    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


# A released model (a diffusers folder) in the released CIFAR-10 layout, scaled down: 32 and 64
# channels, attention at 4x4, 8x8 grey; MATCHING: the params overrides that fit it.
SMALL: dict[str, Any] = {
    **CIFAR10_CONFIG,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
}
MATCHING: dict[str, Any] = {"unet.ch": 32, "unet.ch_mult": [1, 2], "unet.attn_resolutions": [4]}


def save_released(
    folder: Path, T: int = 20, config: dict[str, Any] | None = None, **scheduler: object
) -> Any:
    """A random UNet2DModel (SMALL unless `config`) and its DDPMScheduler saved in `folder`."""
    import diffusers

    released = random_diffusers(config or SMALL)
    released.save_pretrained(folder)  # config.json + .safetensors
    kwargs = {"num_train_timesteps": T, "beta_start": 1e-4, "beta_end": 0.02, **scheduler}
    diffusers.DDPMScheduler(**kwargs).save_pretrained(folder)  # scheduler_config.json
    return released


# ----------------------------------------------------------------------------------------------
# Training runs

# A 2-worker run of 6 steps with a checkpoint every 2: the yardstick of the fault tests.
REF_RUN: dict[str, Any] = {"train.steps": 6, "train.num_workers": 2, "train.checkpoint_every": 2}


def train_params(root: Path, shards: Path, overrides: dict[str, Any] | None = None) -> Params:
    """Tiny params under `root` reading `shards`, with one MLflow db next to the shards (so the
    schema is created once for every run that shares them)."""
    import dataclasses

    from pipelines.config import replace_path

    params = replace_path(build_params(root, overrides), shards=str(shards))
    uri = f"sqlite:///{shards.parents[1] / 'mlflow.db'}"
    return dataclasses.replace(params, mlflow=dataclasses.replace(params.mlflow, tracking_uri=uri))


def train(params: Params, root: Path, **kwargs: Any) -> Any:
    """The train stage as its CLI runs it (`stages.train.train`: run lock, MLflow run, fit,
    outputs); `kwargs` go to `run_train` (test-only loop wrappers). Returns the `TrainResult`."""
    from stages.train import train as train_stage

    return train_stage(params, root, **kwargs)


def ema_weights(params: Params) -> dict[str, torch.Tensor]:
    from pipelines.artifacts.model_dir import WEIGHTS_FILE, load_weights

    return load_weights(Path(params.paths.model) / WEIGHTS_FILE)[0]


def loss_history(params: Params) -> list[tuple[int, float]]:
    """The (step, loss) rows of `plots/train_loss.csv`."""
    import csv

    from pipelines.train.export import LOSS_CSV

    with (Path(params.paths.plots) / LOSS_CSV).open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def fid_history(params: Params) -> list[tuple[int, float]]:
    """The (step, in-training FID) rows of `plots/train_fid.csv`."""
    import csv

    from pipelines.train.export import FID_CSV

    with (Path(params.paths.plots) / FID_CSV).open() as f:
        return [(int(r["step"]), float(r["fid"])) for r in csv.DictReader(f)]
