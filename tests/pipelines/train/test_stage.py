"""The train stage on the session's Ray cluster: 2 workers, DDP equivalence, resume, faults."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import ray
import ray.train
import ray.train.torch
import torch
from mlflow.tracking import MlflowClient

from ddpm_core.rng import mix_seed
from ddpm_core.unet import UNet
from pipelines.artifacts.model_dir import CONFIG_FILE, WEIGHTS_FILE, load_weights
from pipelines.config import Params, to_dict
from pipelines.fid.stage import run_fid_stats
from pipelines.infra.files import file_digest
from pipelines.infra.run_files import read_run_file, split_metrics
from pipelines.infra.tracking import tracking_uri
from pipelines.train.checkpoint import STATE_FILE, TrainingCheckpoint
from pipelines.train.run import RunFolder
from pipelines.train.stage import TrainResult
from pipelines.train.step import (
    NonFiniteLossError,
    draw_t_noise,
    make_state,
    prepare_model,
    train_step,
    warmup_lr,
)
from pipelines.train.worker import (
    NoLoadableCheckpointError,
    grid_key,
    restore_from,
    train_loop_per_worker,
)
from stages import fid_stats as fid_stats_cli
from stages import train as train_cli
from tests.helpers import (
    REF_RUN,
    REPO,
    ema_weights,
    fid_history,
    loss_history,
    params_file,
    train,
    train_params,
)

pytestmark = pytest.mark.ray

# The fault-injecting loop wrappers below must reach the workers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ----------------------------------------------------------------------------------------------
# 2 workers, outputs, MLflow


def test_two_workers_train_export_and_log(reference: tuple[Params, TrainResult]) -> None:
    params, result = reference
    metrics = result.metrics()
    assert metrics["steps"] == 6 and metrics["resumed_from"] == 0
    assert metrics["images_per_s"] > 0 and metrics["final_loss"] > 0
    # Checkpoints at steps 2, 4, 6; train.keep_checkpoints = 2 are kept.
    kept = sorted(p.name for p in result.run_dir.glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]
    assert RunFolder(result.run_dir).mlflow_run_id() == result.run_id
    model = UNet.from_config(params.unet, params.data.channels, params.data.resolution)
    weights, meta = load_weights(Path(params.paths.model) / WEIGHTS_FILE)
    model.load_state_dict(weights)  # the EMA weights fit the configured U-Net
    assert meta["step"] == "6" and json.loads(meta["config"]) == to_dict(params)
    # No run id in the DVC output: identical trainings must give identical `models/` hashes.
    assert result.run_id.encode() not in (Path(params.paths.model) / WEIGHTS_FILE).read_bytes()
    assert "mlflow_run_id" not in meta
    assert json.loads((Path(params.paths.model) / CONFIG_FILE).read_text()) == to_dict(params)
    # The diffusers export (paths.diffusers) exists; at unet.ch 8 it says why it holds no model.
    assert "unet.ch is 8" in (Path(params.paths.diffusers) / "README.md").read_text()
    written = json.loads((Path(params.paths.metrics) / "train.json").read_text())
    assert written == split_metrics(metrics)[0]  # numbers; texts and timings go to runs/
    history = loss_history(params)
    assert [s for s, _ in history] == [1, 2, 3, 4, 5, 6]
    assert all(0 < v < 10 for _, v in history)
    client = MlflowClient(tracking_uri(params.mlflow, Path("/")))
    run_id = result.run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    logged = client.get_metric_history(run_id, "loss")
    assert [m.step for m in logged] == [s for s, _ in history]
    assert [m.value for m in logged] == pytest.approx([v for _, v in history], rel=1e-5)
    lrs = [m.value for m in client.get_metric_history(run_id, "lr")]
    assert lrs == pytest.approx([warmup_lr(s, params.train.lr, 2) for s in range(1, 7)])
    # The end-of-training EMA grid, by step in the UI's image panel (mlflow.log_image).
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith(f"images/{grid_key(20)}+step+6+") for p in images), images
    # The model as an MLflow Model, registered from this run.
    assert result.model_uri.startswith("models:/m-") and result.model_version is not None
    version = client.get_model_version(params.mlflow.model_name, result.model_version)
    assert version.run_id == run_id and version.source == result.model_uri
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {
        "model/config.json",
        "model/ema.safetensors",
    }
    run_file = json.loads((Path(params.paths.runs) / "train.json").read_text())
    assert run_file["run_id"] == run_id
    # The shard manifest is the run's dataset (mlflow.log_input: the runs table's Dataset).
    (inp,) = client.get_run(run_id).inputs.dataset_inputs
    manifest = Path(params.paths.shards) / "manifest.json"
    assert inp.dataset.name == "digits-8px" and json.loads(inp.dataset.source)["uri"].endswith(
        str(manifest)
    )
    assert inp.dataset.digest == file_digest(manifest, "sha1")[:12]
    assert json.loads(inp.dataset.profile)["train_images"] > 0
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}


# ----------------------------------------------------------------------------------------------
# DDP equivalence: 2 workers on halves == 1 worker on the concatenated global batch


def _ddp_loop(config: dict[str, Any]) -> None:
    """Two train_steps on rank r's half of fixed (x0, t, noise); rank 0 saves the weights."""
    import tempfile

    from pipelines.config import from_dict

    params = from_dict(Params, config["params"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    state = make_state(params, torch.device("cpu"), rank, world)
    prepare_model(state, False, ray.train.torch.prepare_model)  # the loss calls DDP(raw)
    half = len(config["x0"][0]) // world
    for x0, t, noise in zip(config["x0"], config["t"], config["noise"], strict=True):
        part = slice(rank * half, (rank + 1) * half)
        train_step(state, x0[part], t[part], noise[part], params.train)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            torch.save(state.raw.state_dict(), Path(tmp) / "model.pt")
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"step": state.step}, checkpoint=ckpt)


def test_two_workers_compute_the_single_worker_update(
    local_ray: object, shards_dir: Path, tmp_path: Path
) -> None:
    params = train_params(tmp_path, shards_dir, {"train.warmup_steps": 1, "train.lr": 1e-4})
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(mix_seed(1, 2, 3))
    batches = [torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1 for _ in range(2)]  # 2 steps
    draws = [draw_t_noise(gen, (8, 1, 8, 8), params.diffusion.T) for _ in batches]
    config = {
        "params": to_dict(params),
        "x0": batches,
        "t": [t for t, _ in draws],
        "noise": [n for _, n in draws],
    }
    trainer = ray.train.torch.TorchTrainer(
        _ddp_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="ddp-equivalence", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    assert result.checkpoint is not None
    two = torch.load(Path(result.checkpoint.path) / "model.pt", weights_only=True)

    def one_worker(part: slice) -> dict[str, torch.Tensor]:
        """No process group, world 1: the update on rows `part` of each global batch."""
        state = make_state(params, cpu, 0, 1)
        for x0, (t, noise) in zip(batches, draws, strict=True):
            train_step(state, x0[part], t[part], noise[part], params.train)
        return state.raw.state_dict()

    torch.testing.assert_close(two, one_worker(slice(0, 8)), rtol=0, atol=1e-5)
    # The check can fail: rank 0's half alone gives a clearly different update.
    half = one_worker(slice(0, 4))
    assert max((two[k] - half[k]).abs().max().item() for k in half) > 1e-4


# ----------------------------------------------------------------------------------------------
# Faults: crash + rerun (job-level resume), worker killed inside a run, NaN loss


@dataclasses.dataclass(frozen=True)
class KillAfterReport:
    """Test-only loop wrapper: rank `rank` dies (os._exit) right after reporting step `step`,
    once (a marker file records it), as soon as the controller has committed that checkpoint.
    """

    step: int
    rank: int
    marker: str
    folder: str = ""  # the checkpoint folder of that step (default `step_<step>`; `-redo`)

    def __call__(self, config: dict[str, Any]) -> None:
        snapshot = config["run"].folder.path / "checkpoint_manager_snapshot.json"
        folder = self.folder or f"step_{self.step:08d}"

        def committed() -> bool:
            text = snapshot.read_text() if snapshot.is_file() else ""
            return f'"{folder}"' in text

        def after(metrics: dict[str, Any], rank: int) -> None:
            mine = metrics["step"] == self.step and rank == self.rank
            if mine and not os.path.exists(self.marker):
                Path(self.marker).touch()
                wait_for(committed)
                os._exit(1)

        run_with_report_hook(config, after)


def wait_for(done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def run_with_report_hook(
    config: dict[str, Any], after: Callable[[dict[str, Any], int], None]
) -> None:
    """The worker loop with `after(metrics, rank)` called after each real `ray.train.report`."""
    real = ray.train.report

    def report(metrics: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        real(metrics, *args, **kwargs)
        after(metrics, ray.train.get_context().get_world_rank())

    ray.train.report = report
    try:
        train_loop_per_worker(config)
    finally:
        ray.train.report = real


def test_min_fid_selection_survives_a_worker_killed_mid_run(
    shards_dir: Path, converted_path: Path, local_ray: object, tmp_path: Path
) -> None:
    """The minimum is forced before the kill by the probe schedule: 5 steps, FID at 2 and 4 (no
    probe at step 5), rank 0 killed after the step-4 checkpoint. The resumed run records no new
    point, so the curve and the best EMA can only come from that checkpoint: best_fid exports
    the argmin step's EMA (not the final one), exactly as an uninterrupted run does. That run
    goes through the CLIs (`stages.fid_stats`, `stages.train`), and then `train.export=last`
    (same run key) re-exports its final EMA without retraining."""
    overrides = {
        "train.steps": 5, "train.checkpoint_every": 2, "train.keep_checkpoints": 3,
        "train.max_failures": 1, "train.fid_every": 2, "train.fid_images": 6,
        "train.export": "best_fid", "evaluate.fid.inception_weights": str(converted_path),
    }  # fmt: skip
    params = train_params(tmp_path / "killed", shards_dir, overrides)
    run_fid_stats(params, tmp_path / "killed")  # the probe's reference: only fid_stats writes it
    kill = KillAfterReport(4, 0, str(tmp_path / "killed.marker"))
    result = train(params, tmp_path / "killed", loop_fn=kill)
    assert (tmp_path / "killed.marker").exists() and result.resumed_from == 4
    curve = fid_history(params)
    assert [s for s, _ in curve] == [2, 4]  # every point once, all of them before the kill
    best_step = min(curve, key=lambda p: (p[1], p[0]))[0]
    assert result.steps == 5 and result.exported_step == best_step < 5
    assert f"step {best_step}" in result.export_reason
    exported = ema_weights(params)
    at_best = TrainingCheckpoint.read(result.run_dir / f"step_{best_step:08d}")
    torch.testing.assert_close(exported, dict(at_best.final_ema), rtol=0, atol=0)
    final = TrainingCheckpoint.read(result.run_dir / f"step_{5:08d}").final_ema
    assert not all(torch.equal(exported[k], v) for k, v in final.items())  # not the last EMA
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path / "killed"))
    history = client.get_metric_history(result.run_id, "fid_train_small")
    assert sorted({m.step for m in history}) == [2, 4]

    # The same params uninterrupted, through the CLIs: the same curve and exported weights.
    plain = train_params(tmp_path / "plain", shards_dir, overrides)
    (tmp_path / "plain").mkdir()
    path = params_file(plain, tmp_path / "plain" / "params.yaml")
    assert fid_stats_cli.main(["--params", str(path)]) == 0
    assert train_cli.main(["--params", str(path)]) == 0
    metrics = json.loads((Path(plain.paths.metrics) / "train.json").read_text())
    assert metrics["resumed_from"] == 0 and metrics["exported_step"] == best_step
    plain_curve = fid_history(plain)
    assert [s for s, _ in plain_curve] == [2, 4]
    assert [v for _, v in plain_curve] == pytest.approx([v for _, v in curve], rel=1e-5)
    assert metrics["best_fid_train_small"] == pytest.approx(
        min(v for _, v in plain_curve), rel=1e-5
    )
    torch.testing.assert_close(exported, ema_weights(plain), rtol=0, atol=1e-6)
    run = read_run_file(plain, "train", REPO)
    assert f"the EMA at step {best_step}" in run["details"]["export_reason"]
    assert "NOT comparable" in run["details"]["fid_train_small_label"]
    # export=last keeps the run key: the finished run is re-exported (its final EMA, step 5),
    # without starting workers (no attempt note).
    last = params_file(dataclasses.replace(plain, train=dataclasses.replace(
        plain.train, export="last")), tmp_path / "plain" / "last.yaml")  # fmt: skip
    assert train_cli.main(["--params", str(last)]) == 0
    metrics = json.loads((Path(plain.paths.metrics) / "train.json").read_text())
    assert metrics["exported_step"] == 5 and metrics["resumed_from"] == 5
    plain_dir = next(Path(plain.paths.ray_storage).glob("ddpm-train-*/"))
    assert RunFolder(plain_dir).attempt() == {}
    final = TrainingCheckpoint.read(plain_dir / f"step_{5:08d}").final_ema
    torch.testing.assert_close(ema_weights(plain), dict(final), rtol=0, atol=0)


def test_nonfinite_loss_stops_naming_step_and_checkpoint(
    local_ray: object, shards_dir: Path, tmp_path: Path
) -> None:
    """lr 1e36: the first update blows the weights up, the next loss is not finite."""
    over = {"train.lr": 1e36, "train.checkpoint_every": 1, "train.max_failures": 1}
    params = train_params(tmp_path, shards_dir, over)
    with pytest.raises(NonFiniteLossError) as info:
        train(params, tmp_path)
    # checkpoint_every 1 reads the device-side flag every step: the window is that one step
    text = str(info.value)
    match = re.search(r"in steps (\d+)\.\.(\d+); last good checkpoint: (\S+)", text)
    assert match is not None, text
    first, last, ckpt = int(match.group(1)), int(match.group(2)), Path(match.group(3))
    assert first == last >= 2 and ckpt.name == f"step_{first - 1:08d}" and ckpt.is_dir()
    run_id = RunFolder(ckpt.parent).mlflow_run_id()
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path))
    assert client.get_run(run_id).info.status == "FAILED"
    assert not Path(params.paths.model).exists()


# ----------------------------------------------------------------------------------------------
# Bad inputs: clear errors before any worker starts


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (
            {"data.resolution": 16, "unet.attn_resolutions": [8]},
            ValueError,
            ["image_shape", "data.resolution=16"],
        ),
        ({"train.use_gpu": True, "train.gpus_per_worker": 1.0}, ValueError, ["GPUs requested"]),
        ({"train.num_workers": 4, "train.cpus_per_worker": 1.0}, ValueError, ["CPUs requested"]),
    ],
)
def test_bad_inputs_fail_before_training(
    local_ray: object,
    shards_dir: Path,
    tmp_path: Path,
    overrides: dict[str, Any],
    error: type[Exception],
    words: list[str],
) -> None:
    params = train_params(tmp_path, shards_dir, overrides)
    with pytest.raises(error) as info:
        train(params, tmp_path)
    assert all(w in str(info.value) for w in words), str(info.value)
    storage = Path(params.paths.ray_storage)  # no Ray run, no MLflow run: at most the run lock
    assert not storage.exists() or all(p.suffix == ".lock" for p in storage.iterdir())


# ----------------------------------------------------------------------------------------------
# The MLflow server stopped mid-run: training goes on, nothing is logged twice or lost


@dataclasses.dataclass(frozen=True)
class StopServerAfterReport:
    """Test-only loop wrapper: rank 0, after reporting step `step`, asks the test to stop the
    MLflow server (`<folder>/stop`) and waits until it is down (`<folder>/stopped`)."""

    step: int
    folder: str

    def __call__(self, config: dict[str, Any]) -> None:
        def after(metrics: dict[str, Any], rank: int) -> None:
            if rank == 0 and metrics["step"] == self.step:
                Path(self.folder, "stop").touch()
                wait_for(Path(self.folder, "stopped").exists)

        run_with_report_hook(config, after)


def test_mlflow_server_down_mid_run_loses_and_repeats_nothing(
    reference: tuple[Params, TrainResult], local_ray: object, tmp_path: Path
) -> None:
    """A real server stopped after step 2 and still down when training ends: the stage finishes
    and reports the unsent calls; the rerun (server back) sends them, each metric step once."""
    import threading

    from tests.helpers import MlflowServer

    ref_params, _ = reference
    server_root = tmp_path / "server"
    server_root.mkdir()
    server = MlflowServer(server_root).start()
    try:
        params = train_params(tmp_path, Path(ref_params.paths.shards), REF_RUN)
        mlflow = dataclasses.replace(params.mlflow, tracking_uri=server.url)
        params = dataclasses.replace(params, mlflow=mlflow)

        def stop_when_asked() -> None:
            deadline = time.monotonic() + 300
            while not (tmp_path / "stop").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            server.stop()
            (tmp_path / "stopped").touch()

        watcher = threading.Thread(target=stop_when_asked, daemon=True)
        watcher.start()
        # The end's retries of the unsent calls: 1 s, not the stage's 30 s (the server stays down).
        stop = StopServerAfterReport(2, str(tmp_path))
        result = train(params, tmp_path, loop_fn=stop, final_wait_s=1.0)
        watcher.join(timeout=30)
        assert (tmp_path / "stopped").exists()  # the server did go down mid-run
        # The outputs are written; the run file names the unsent calls and where they are.
        assert result.steps == 6 and (Path(params.paths.model) / WEIGHTS_FILE).is_file()
        details = json.loads((Path(params.paths.runs) / "train.json").read_text())["details"]
        outbox = tmp_path / details["mlflow_outbox"]  # relative to the root: runs/*.json is in git
        assert details["mlflow_unsent"] > 0 and (outbox / "journal.jsonl").is_file()
        # The server comes back; the same command (a finished run: nothing to train) sends them.
        server.start()
        again = train(params, tmp_path)
        assert again.run_id == result.run_id and again.steps == 6
        details = json.loads((Path(params.paths.runs) / "train.json").read_text())["details"]
        assert "mlflow_unsent" not in details and not outbox.exists()
        client = MlflowClient(server.url)
        assert client.get_run(result.run_id).info.status == "FINISHED"
        for key in ("loss", "grad_norm", "lr", "images_per_s"):
            steps = [m.step for m in client.get_metric_history(result.run_id, key)]
            assert sorted(steps) == [1, 2, 3, 4, 5, 6], key
        history = loss_history(params)
        logged = {m.step: m.value for m in client.get_metric_history(result.run_id, "loss")}
        assert [logged[s] for s, _ in history] == pytest.approx([v for _, v in history], rel=1e-5)
        artifacts = {a.path for a in client.list_artifacts(result.run_id, "model")}
        assert artifacts == {"model/config.json", "model/ema.safetensors"}
        assert [a.path for a in client.list_artifacts(result.run_id, "train")] == [
            "train/train.json"
        ]
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------------
# A crashed run, a truncated checkpoint, a lost worker: one run key, the uninterrupted result


def test_a_crashed_run_reruns_past_a_truncated_checkpoint_and_restarts_a_lost_worker(
    reference: tuple[Params, TrainResult],
    local_ray: object,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1) max_failures 0: rank 1 dies after the step-4 checkpoint, the run fails (FAILED, no
    model). 2) That checkpoint's state file is truncated on disk. 3) The same command (max_failures
    does not change the run key) reattaches the run, skips the truncated checkpoint (named in
    runs/train.json), resumes at step 2, and rank 1 dies again after the redone step 4: the worker
    group restarts inside the run from that checkpoint. Loss curve and weights equal the
    uninterrupted run's."""
    ref_params, ref_result = reference
    shards = Path(ref_params.paths.shards)
    params = train_params(tmp_path, shards, {**REF_RUN, "train.max_failures": 0})
    with pytest.raises(ray.train.TrainingFailedError):
        train(params, tmp_path, loop_fn=KillAfterReport(4, 1, str(tmp_path / "crash1")))
    run_dir = Path(params.paths.ray_storage) / ref_result.run_name
    run_id = RunFolder(run_dir).mlflow_run_id()
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path))
    assert client.get_run(run_id).info.status == "FAILED"
    assert not (Path(params.paths.model) / WEIGHTS_FILE).exists()
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_00000002", "step_00000004"]
    bad = run_dir / "step_00000004" / STATE_FILE
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a real truncated file

    params = train_params(tmp_path, shards, {**REF_RUN, "train.max_failures": 1})
    kill = KillAfterReport(4, 1, str(tmp_path / "crash2"), folder="step_00000004-redo")
    result = train(params, tmp_path, loop_fn=kill)
    assert (tmp_path / "crash2").exists()  # the second kill did happen
    assert result.run_name == ref_result.run_name and result.run_id == run_id
    assert result.steps == 6 and result.resumed_from == 4
    resumed = client.get_metric_history(run_id, "resumed_from")
    assert [(m.step, m.value) for m in resumed] == [(2, 2.0), (4, 4.0)]
    assert client.get_run(run_id).info.status == "FINISHED"
    # The skipped folder is named although the restarted attempt had nothing to skip.
    assert result.unusable_checkpoints == ("step_00000004",)
    details = json.loads((Path(params.paths.runs) / "train.json").read_text())["details"]
    assert details["unusable_checkpoints"] == "step_00000004"
    # Right step, lr and data order: the loss curve and the weights equal the uninterrupted run.
    history, ref_history = loss_history(params), loss_history(ref_params)
    assert [s for s, _ in history] == [s for s, _ in ref_history]
    assert [v for _, v in history] == pytest.approx([v for _, v in ref_history], rel=1e-5)
    torch.testing.assert_close(ema_weights(params), ema_weights(ref_params), rtol=0, atol=1e-6)
    lr = {m.step: m.value for m in client.get_metric_history(run_id, "lr")}
    assert lr[3] == pytest.approx(params.train.lr)
    # The redone step 4 went to a folder of its own: when Ray Train rotated the bad one out it
    # deleted that folder, not the redone checkpoint.
    kept = sorted(p.name for p in run_dir.glob("step_*"))
    assert kept == ["step_00000004-redo", "step_00000006"]
    # What the workers did, in this process on copies of the folders: the warning names the
    # skipped file; with nothing loadable, a clear error naming every folder tried.
    copies = tmp_path / "copies"
    for name in kept:
        shutil.copytree(run_dir / name, copies / name)
    newest = copies / "step_00000006" / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])
    state = make_state(params, torch.device("cpu"), 0, 1)
    with caplog.at_level(logging.WARNING, logger="pipelines.train.worker"):
        restored = restore_from(copies / "step_00000006", state, 0)
    assert restored.step == 4 and restored.unusable == {"step_00000006"}
    assert f"checkpoint {newest} skipped: training state file {newest}" in caplog.text
    assert "fell back past step_00000006 to step_00000004-redo" in caplog.text
    redo = copies / "step_00000004-redo" / STATE_FILE
    redo.write_bytes(b"")
    with pytest.raises(NoLoadableCheckpointError) as info:
        restore_from(copies / "step_00000006", state, 0)
    assert str(info.value).startswith(
        f"{copies}: no checkpoint of this run can be loaded "
        "(tried step_00000006, step_00000004-redo)"
    )


# ----------------------------------------------------------------------------------------------
# Reproducibility of the DVC outputs


def test_identical_trainings_write_byte_identical_models(
    reference: tuple[Params, TrainResult], local_ray: object
) -> None:
    """The reference run's params trained again from scratch in its root (its Ray run folder
    removed: no checkpoint to resume, no run id to reattach; a new MLflow run): `models/` has
    the same bytes, so DVC sees the same output hashes. Last in this module: it rewrites the
    reference's outputs (with the same bytes, as it checks)."""
    params, first_result = reference
    model_dir = Path(params.paths.model)

    def digests() -> dict[str, str]:
        return {p.name: file_digest(p) for p in sorted(model_dir.iterdir())}

    first, first_weights, first_history = digests(), ema_weights(params), loss_history(params)
    first_meta = load_weights(model_dir / WEIGHTS_FILE)[1]
    shutil.rmtree(first_result.run_dir)
    second_run = train(params, model_dir.parent).run_id  # the reference's root
    assert second_run != first_result.run_id
    assert loss_history(params) == first_history
    diffs = {k: (v - first_weights[k]).abs().max().item() for k, v in ema_weights(params).items()}
    assert max(diffs.values()) == 0, {k: d for k, d in diffs.items() if d}
    meta = load_weights(model_dir / WEIGHTS_FILE)[1]
    assert {k: v for k, v in meta.items() if first_meta.get(k) != v} == {}
    assert {WEIGHTS_FILE, CONFIG_FILE} <= set(first)
    assert digests() == first
