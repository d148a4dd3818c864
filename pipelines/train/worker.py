"""The per-worker loop of Ray Train (V2) training: Algorithm 1 on one rank.

Each worker (`train_loop_per_worker`) restores the latest checkpoint of its run, streams its
share of the shards (`artifacts.shard_stream`), steps `train.step.train_step` under DDP and
reports a checkpoint every `train.checkpoint_every` steps from all ranks (rank 0 writes the
files). Rank 0 leaves its notes for the driver in the run folder (`train.run.RunFolder`). The
driver that starts the workers is `train.stage`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from ddpm_core.rng import SeedPurpose, mix_seed
from ddpm_core.sampling import sample_indices
from pipelines.artifacts.shard_stream import train_batches
from pipelines.config import Params
from pipelines.infra.accel import autocast
from pipelines.infra.device import configure_backends
from pipelines.infra.figures import display_scale, grid_image
from pipelines.infra.progress import format_duration
from pipelines.infra.tracking import Tracker
from pipelines.train.checkpoint import (
    UnloadableStateError,
    checkpoint_dir_name,
    resume_candidates,
)
from pipelines.train.fid_probe import FidProbe, load_reference, small_fid
from pipelines.train.run import RunFolder
from pipelines.train.step import (
    STATE_FILE,
    NonFiniteLossError,
    TrainState,
    WindowStats,
    draw_t_noise,
    gather_rng_states,
    load_checkpoint,
    make_state,
    prepare_model,
    save_checkpoint,
    train_step,
    warmup_lr,
)

log = logging.getLogger(__name__)

GRID_MAX_STEPS = 100  # the MLflow sample grid uses a respaced chain of at most this many steps
GRID_MAX_IMAGES = 16


def grid_key(steps: int) -> str:
    """The MLflow image key of the EMA sample grids (`mlflow.log_image`: one image per step)."""
    return f"ema_samples_{steps}steps"


@dataclass(frozen=True)
class RunSpec:
    """Absolute locations the workers need (they `chdir` into Ray's per-run folder)."""

    run_name: str
    run_dir: str  # <ray_storage>/<run_name>: checkpoints, MLflow sidecar
    shards: str


# ----------------------------------------------------------------------------------------------
# Worker side


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Algorithm 1 on one Ray Train worker; `config` = {"params", "run", "tracker", "fid"}."""
    params: Params = config["params"]  # typed: Ray pickles the frozen dataclasses
    spec = RunSpec(**config["run"])
    tracker: Tracker | None = config["tracker"]
    _worker_logging()
    torch.set_num_threads(max(1, int(params.train.cpus_per_worker)))  # intra-op CPU threads
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cuda = [device.index or 0] if device.type == "cuda" else []
    # Dropout draws from torch's global generator (nn.Dropout takes none): seed it per rank
    # inside fork_rng so this process's global state is restored afterwards.
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(mix_seed(params.seed, world, rank, SeedPurpose.DROPOUT))
        configure_backends(device)
        state = make_state(params, device, rank, world, compile_mode=params.train.compile)
        restored = _restore(state, rank)
        if rank == 0:  # the driver reports where the last attempt started (train.json)
            RunFolder(Path(spec.run_dir)).begin_attempt(restored.step, sorted(restored.unusable))
        _wrap(state, params, device)
        if rank == 0 and tracker is not None and restored.step:
            tracker.log_metrics({"resumed_from": restored.step}, step=restored.step)
        probe = config.get("fid")
        loop = _Loop(params, spec, tracker, state, rank, world, device, probe, restored.unusable)
        loop.run(restored.step, restored.checkpoint)


def _worker_logging() -> None:
    """Show this package's INFO lines (progress) in the worker's stderr, which Ray forwards."""
    pkg = logging.getLogger("pipelines")
    pkg.setLevel(logging.INFO)
    if not (pkg.handlers or logging.getLogger().handlers):
        pkg.addHandler(logging.StreamHandler())


@dataclass(frozen=True)
class Restored:
    """Where an attempt starts: the step, the checkpoint folder, the folders that failed."""

    step: int
    checkpoint: str | None
    unusable: frozenset[str]


class NoLoadableCheckpointError(RuntimeError):
    """Every checkpoint folder of the run fails to load (truncated or corrupt files)."""


def _restore(state: TrainState, rank: int) -> Restored:
    """Load the latest committed checkpoint, or the newest earlier one that loads.

    A checkpoint whose file cannot be loaded (truncated by a full disk, a crash mid-copy) is
    named in a warning and skipped; Ray Train keeps listing it until it rotates it out, so the
    steps redone after it report to new folders (`checkpoint_dir_name`). Run folders are on a
    file system every node mounts (`paths.ray_storage`), so they are read in place.
    """
    latest = ray.train.get_checkpoint()
    if latest is None:
        return Restored(0, None, frozenset())
    unusable: list[str] = []
    for folder in resume_candidates(Path(latest.path)):
        try:
            load_checkpoint(folder, state, rank)
        except (FileNotFoundError, UnloadableStateError) as e:
            unusable.append(folder.name)
            if rank == 0:
                log.warning("checkpoint %s skipped: %s", folder / STATE_FILE, e)
            continue
        if rank == 0:
            log.info("resumed from %s at step %d", folder, state.step)
        if unusable and rank == 0:
            log.warning("fell back past %s to %s", ", ".join(unusable), folder.name)
        return Restored(state.step, str(folder), frozenset(unusable))
    raise NoLoadableCheckpointError(
        f"{Path(latest.path).parent}: no checkpoint of this run can be loaded (tried "
        f"{', '.join(unusable)}); delete the run folder to train from scratch"
    )


def _wrap(state: TrainState, params: Params, device: torch.device) -> None:
    """channels_last / DDP (world > 1) / torch.compile, each only when params say so."""

    def ddp(raw: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(raw, move_to_device=device)

    prepare_model(state, params.train.channels_last, ddp)


class _Loop:
    """The step loop of one worker: batches, steps, logging, sample grids, checkpoints."""

    def __init__(
        self,
        params: Params,
        spec: RunSpec,
        tracker: Tracker | None,
        state: TrainState,
        rank: int,
        world: int,
        device: torch.device,
        probe: FidProbe | None = None,
        unusable: frozenset[str] = frozenset(),
    ) -> None:
        self.params, self.cfg, self.spec, self.tracker = params, params.train, spec, tracker
        self.unusable = unusable  # checkpoint folders that failed to load: never reused
        self.state, self.rank, self.world, self.device = state, rank, world, device
        self.probe = probe if rank == 0 else None  # min-FID selection runs on rank 0 only
        self.reference = load_reference(self.probe) if self.probe else None
        self.autocast = autocast(params.train.precision, device)
        self.window_start = time.perf_counter()
        self.last_loss = float("nan")

    def batches(self) -> Iterator[torch.Tensor]:
        return train_batches(
            self.spec.shards,
            "train",
            self.cfg.batch_size // self.world,
            self.rank,
            self.world,
            self.params.seed,
            self.params.data.random_flip,
            start_step=self.state.step,
            shuffle_buffer=self.cfg.shuffle_buffer,
            loader_workers=self.cfg.loader_workers,
            prefetch=self.cfg.prefetch,
            cache_bytes=self.cfg.cache_bytes,
        )

    def run(self, resumed_from: int, last_ckpt: str | None) -> None:
        cfg, state = self.cfg, self.state
        session_start, session_steps = time.perf_counter(), 0
        batches = self.batches()
        try:
            while state.step < cfg.steps:
                x0 = next(batches).to(self.device, non_blocking=True)  # (B/world, C, H, W)
                if cfg.channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                t, noise = draw_t_noise(state.generator, tuple(x0.shape), self.num_timesteps)
                train_step(state, x0, t, noise, cfg, self.autocast)
                session_steps += 1
                step = state.step
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self.log_window()
                if self.rank == 0 and cfg.sample_every and step % cfg.sample_every == 0:
                    self.log_sample_grid()
                if self.probe is not None and step % cfg.fid_every == 0:
                    self.record_fid()  # before the checkpoint, which stores the curve
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self.raise_if_nonfinite()  # never checkpoint weights after a NaN step
                    seconds = time.perf_counter() - session_start
                    last_ckpt = self.checkpoint(
                        {
                            "step": step,
                            "loss": self.last_loss,
                            "lr": warmup_lr(step, cfg.lr, cfg.warmup_steps),
                            "images_per_s": session_steps * cfg.batch_size / max(seconds, 1e-9),
                            "session_seconds": seconds,
                            "resumed_from": resumed_from,
                        }
                    )
        except NonFiniteLossError as e:
            self.stop_nonfinite(e, last_ckpt)
            return
        sampled_last = cfg.sample_every > 0 and cfg.steps % cfg.sample_every == 0
        if self.rank == 0 and session_steps and not sampled_last:
            self.log_sample_grid()  # the end-of-training grid

    @property
    def num_timesteps(self) -> int:
        return self.state.diffusion.num_timesteps

    def raise_if_nonfinite(self, window: WindowStats | None = None) -> None:
        """NonFiniteLossError naming the steps since the last log point (same on every rank)."""
        first = self.state.stats.first_step if window is None else window.first_step
        bad = self.state.any_nonfinite(self.world) if window is None else window.nonfinite
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss or gradient norm in steps {first}..{self.state.step}"
            )

    def log_window(self) -> None:
        """Mean loss over ranks and steps since the last log; rank 0 prints and logs it."""
        window = self.state.read_stats(self.world)  # the loop's one host sync per log window
        self.raise_if_nonfinite(window)
        self.last_loss = loss = window.loss
        now = time.perf_counter()
        seconds, self.window_start = now - self.window_start, now
        if self.rank != 0:
            return
        step, steps, n = self.state.step, self.cfg.steps, window.steps
        lr = warmup_lr(step, self.cfg.lr, self.cfg.warmup_steps)
        img_s = n * self.cfg.batch_size / max(seconds, 1e-9)
        eta = (steps - step) * seconds / max(n, 1)
        log.info(
            "step %d/%d  loss %.4f  grad %.3f  lr %.2e  %.0f img/s  ETA %s",
            step, steps, loss, window.grad_norm, lr, img_s, format_duration(eta),
        )  # fmt: skip
        self.state.history.append((step, loss))
        if self.tracker is not None:
            metrics = {"loss": loss, "grad_norm": window.grad_norm, "lr": lr}
            self.tracker.log_metrics({**metrics, "images_per_s": img_s}, step=step)

    def log_sample_grid(self) -> None:
        """EMA samples from a respaced (strided) chain to MLflow: a progress check, not FID."""
        if self.tracker is None:
            return
        diffusion = self.state.diffusion
        stride = max(1, -(-diffusion.num_timesteps // GRID_MAX_STEPS))  # ceil(T / max steps)
        chain = diffusion.respaced(stride)
        n = min(self.params.sample.grid_images, GRID_MAX_IMAGES)
        data, model = self.params.data, self.state.ema.model.eval()
        images = sample_indices(
            model, chain, range(n), self.params.seed, data.image_shape, self.device
        )
        grid = grid_image(images, scale=display_scale(data.resolution))
        self.tracker.log_image(grid, grid_key(chain.num_timesteps), self.state.step)

    def record_fid(self) -> None:
        """Small-sample FID of the EMA weights; keep a CPU copy of them when it is the lowest.

        One host sync per `train.fid_every` steps; the other ranks wait at their next collective.
        """
        assert self.probe is not None and self.reference is not None
        state, t0 = self.state, time.perf_counter()
        if bool(state.stats.nonfinite):  # never score (or keep) weights after a NaN step: the
            return  # next log point or checkpoint stops every rank together
        model = state.ema.model.eval()
        value = small_fid(
            model, state.diffusion, self.params, self.probe, self.reference, self.device
        )
        if state.fid_curve.record(state.step, value):
            state.best_ema = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best = state.fid_curve.best
        log.info(
            "step %d: in-training FID %.3f (best %s, %.0f s)", state.step, value,
            f"{best[1]:.3f} at step {best[0]}" if best else "none", time.perf_counter() - t0,
        )  # fmt: skip
        if self.tracker is not None:
            self.tracker.log_metrics({"fid_train_small": value}, step=state.step)

    def checkpoint(self, metrics: dict[str, Any]) -> str:
        """Report `metrics` with a checkpoint from all ranks (rank 0 writes the files)."""
        rngs = gather_rng_states(self.state.generator)  # collective: every rank's streams
        name = checkpoint_dir_name(self.state.step, self.unusable)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                save_checkpoint(tmp, self.state, rngs)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)
        return str(Path(self.spec.run_dir) / name)

    def stop_nonfinite(self, error: NonFiniteLossError, last_ckpt: str | None) -> None:
        """All ranks stop together; rank 0 leaves a note for the driver (no pointless retries)."""
        if self.rank != 0:
            return
        RunFolder(Path(self.spec.run_dir)).note_nonfinite(str(error), self.state.step, last_ckpt)
        log.error("%s; last good checkpoint: %s", error, last_ckpt)
