"""The per-worker loop of Ray Train (V2) training: Algorithm 1 on one rank.

Each worker (`train_loop_per_worker`) restores the latest checkpoint of its run, streams its
share of the shards (`artifacts.shard_stream`) and steps `train.step.train_step` under DDP;
`Cadence` says on which steps it logs, samples a grid, runs the FID probe and reports a
checkpoint from all ranks (rank 0 writes the files). Rank 0 leaves its notes for the driver in
the run folder (`train.run.RunFolder`). The driver that starts the workers is `train.stage`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import ray.train.torch
import torch

from ddpm_core.rng import SeedPurpose, mix_seed
from ddpm_core.sampling import sample_indices
from pipelines.artifacts.shard_stream import train_batches
from pipelines.config import Params, TrainConfig
from pipelines.infra.accel import autocast
from pipelines.infra.device import configure_backends
from pipelines.infra.figures import display_scale, grid_image
from pipelines.infra.progress import format_duration
from pipelines.infra.tracking import Tracker
from pipelines.train.checkpoint import (
    STATE_FILE,
    UnloadableStateError,
    checkpoint_dir_name,
    resume_candidates,
)
from pipelines.train.run import TrainPlan
from pipelines.train.step import (
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

if TYPE_CHECKING:  # the probe's module (torch-fidelity: ~2 s per process) loads only when used
    from pipelines.train.fid_probe import FidProbe

log = logging.getLogger(__name__)

GRID_MAX_STEPS = 100  # the MLflow sample grid uses a respaced chain of at most this many steps
GRID_MAX_IMAGES = 16


def grid_key(steps: int) -> str:
    """The MLflow image key of the EMA sample grids (`mlflow.log_image`: one image per step)."""
    return f"ema_samples_{steps}steps"


# ----------------------------------------------------------------------------------------------
# Worker side


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Algorithm 1 on one Ray Train worker; `config` = {"params", "run", "tracker", "fid"}."""
    params: Params = config["params"]  # typed: Ray pickles the frozen dataclasses
    plan: TrainPlan = config["run"]  # the driver's plan: absolute paths (workers `chdir`)
    tracker: Tracker | None = config["tracker"]
    _worker_logging()
    torch.set_num_threads(max(1, int(params.train.cpus_per_worker)))  # intra-op CPU threads
    ctx = ray.train.get_context()
    where = Placement(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    rank, world, device = where.rank, where.world, where.device
    cuda = [device.index or 0] if device.type == "cuda" else []
    # Dropout draws from torch's global generator (nn.Dropout takes none): seed it per rank
    # inside fork_rng so this process's global state is restored afterwards.
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(mix_seed(params.seed, world, rank, SeedPurpose.DROPOUT))
        configure_backends(device)
        state = make_state(params, device, rank, world, compile_mode=params.train.compile)
        restored = _restore(state, rank)
        if rank == 0:  # the driver reports where the last attempt started (train.json)
            plan.folder.begin_attempt(restored.step, sorted(restored.unusable))
        _wrap(state, params, device)
        if rank == 0 and tracker is not None and restored.step:
            tracker.log_metrics({"resumed_from": restored.step}, step=restored.step)
        _Loop(params, plan, state, where, restored, tracker, config.get("fid")).run()


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
    """`restore_from` Ray Train's latest committed checkpoint of this run (None: a new run)."""
    latest = ray.train.get_checkpoint()
    return restore_from(None if latest is None else Path(latest.path), state, rank)


def restore_from(latest: Path | None, state: TrainState, rank: int) -> Restored:
    """Load the checkpoint folder `latest`, or the newest earlier one of its run that loads.

    A checkpoint whose file cannot be loaded (truncated by a full disk, a crash mid-copy) is
    named in a warning and skipped; Ray Train keeps listing it until it rotates it out, so the
    steps redone after it report to new folders (`checkpoint_dir_name`). Run folders are on a
    file system every node mounts (`paths.ray_storage`), so they are read in place.
    """
    if latest is None:
        return Restored(0, None, frozenset())
    unusable: list[str] = []
    for folder in resume_candidates(latest):
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
        f"{latest.parent}: no checkpoint of this run can be loaded (tried "
        f"{', '.join(unusable)}); delete the run folder to train from scratch"
    )


def _wrap(state: TrainState, params: Params, device: torch.device) -> None:
    """channels_last / DDP (world > 1) / torch.compile, each only when params say so."""

    def ddp(raw: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(raw, move_to_device=device)

    prepare_model(state, params.train.channels_last, ddp)


@dataclass(frozen=True)
class Placement:
    """Where this worker runs: its rank, the number of ranks and its training device."""

    rank: int
    world: int
    device: torch.device

    @property
    def lead(self) -> bool:
        """Rank 0: writes the files, logs to MLflow, samples grids, runs the FID probe."""
        return self.rank == 0


@dataclass(frozen=True)
class Cadence:
    """On which steps (1-based, after the update) the loop's periodic actions fall."""

    steps: int  # train.steps: the last step
    log_every: int
    sample_every: int  # 0: a grid at the end only
    fid_every: int  # 0: no in-training FID
    checkpoint_every: int

    @classmethod
    def of(cls, cfg: TrainConfig) -> Cadence:
        every = (cfg.log_every, cfg.sample_every, cfg.fid_every, cfg.checkpoint_every)
        return cls(cfg.steps, *every)

    def log(self, step: int) -> bool:
        """Read the statistics window (loss, NaN check): every log_every and at the last step."""
        return step % self.log_every == 0 or step == self.steps

    def grid(self, step: int) -> bool:
        """Log an EMA sample grid: every sample_every steps."""
        return self.sample_every > 0 and step % self.sample_every == 0

    def fid(self, step: int) -> bool:
        """Score the EMA weights (min-FID selection): every fid_every steps."""
        return self.fid_every > 0 and step % self.fid_every == 0

    def checkpoint(self, step: int) -> bool:
        """Report a checkpoint: every checkpoint_every steps and at the last step."""
        return step % self.checkpoint_every == 0 or step == self.steps

    def final_grid(self) -> bool:
        """An end-of-training grid, unless the last step already logged one."""
        return not self.grid(self.steps)


class _Loop:
    """The step loop of one worker: batches, steps, and on their `Cadence` the logging, sample
    grids, FID probe and checkpoints."""

    def __init__(
        self,
        params: Params,
        plan: TrainPlan,
        state: TrainState,
        where: Placement,
        restored: Restored,
        tracker: Tracker | None = None,
        probe: FidProbe | None = None,
    ) -> None:
        self.params, self.plan, self.state, self.where = params, plan, state, where
        self.restored = restored  # its `unusable` folders are never reused
        self.tracker = tracker
        self.due = Cadence.of(params.train)
        self.probe = probe if where.lead else None  # min-FID selection runs on rank 0 only
        self.reference = None
        if self.probe is not None:
            from pipelines.train.fid_probe import load_reference

            self.reference = load_reference(self.probe)
        self.autocast = autocast(params.train.precision, where.device)
        self.window_start = self.session_start = time.perf_counter()
        self.session_steps = 0  # steps of this attempt (the images/s of its checkpoints)
        self.last_loss = float("nan")
        self.last_ckpt = restored.checkpoint

    def batches(self) -> Iterator[torch.Tensor]:
        cfg, where = self.params.train, self.where
        return train_batches(
            self.plan.shards,
            "train",
            cfg.batch_size // where.world,
            where.rank,
            where.world,
            self.params.seed,
            self.params.data.random_flip,
            start_step=self.state.step,
            shuffle_buffer=cfg.shuffle_buffer,
            loader_workers=cfg.loader_workers,
            prefetch=cfg.prefetch,
            cache_bytes=cfg.cache_bytes,
        )

    def run(self) -> None:
        """Step to `train.steps`, then the end-of-training grid; a NaN step stops every rank."""
        batches = self.batches()
        try:
            while self.state.step < self.params.train.steps:
                self.step(next(batches))
                self.on_cadence(self.state.step)
        except NonFiniteLossError as e:
            self.stop_nonfinite(e)
            return
        if self.where.lead and self.session_steps and self.due.final_grid():
            self.log_sample_grid()

    def step(self, batch: torch.Tensor) -> None:
        """One `train_step` on this rank's batch (B/world, C, H, W) with fresh t and eps."""
        x0 = batch.to(self.where.device, non_blocking=True)
        if self.params.train.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t, noise = draw_t_noise(self.state.generator, tuple(x0.shape), self.num_timesteps)
        train_step(self.state, x0, t, noise, self.params.train, self.autocast)
        self.session_steps += 1

    def on_cadence(self, step: int) -> None:
        """What falls on `step`, in this order (the FID point before the checkpoint storing it)."""
        if self.due.log(step):
            self.log_window()
        if self.where.lead and self.due.grid(step):
            self.log_sample_grid()
        if self.probe is not None and self.due.fid(step):
            self.record_fid()
        if self.due.checkpoint(step):
            self.raise_if_nonfinite()  # never checkpoint weights after a NaN step
            self.checkpoint(self.checkpoint_metrics())

    def checkpoint_metrics(self) -> dict[str, float]:
        """What a checkpoint reports: step, last logged loss, lr, this attempt's images/s."""
        cfg, step = self.params.train, self.state.step
        seconds = time.perf_counter() - self.session_start
        return {
            "step": step,
            "loss": self.last_loss,
            "lr": warmup_lr(step, cfg.lr, cfg.warmup_steps),
            "images_per_s": self.session_steps * cfg.batch_size / max(seconds, 1e-9),
            "session_seconds": seconds,
            "resumed_from": self.restored.step,
        }

    @property
    def num_timesteps(self) -> int:
        return self.state.diffusion.num_timesteps

    def raise_if_nonfinite(self, window: WindowStats | None = None) -> None:
        """NonFiniteLossError naming the steps since the last log point (same on every rank)."""
        first = self.state.stats.first_step if window is None else window.first_step
        bad = self.state.any_nonfinite(self.where.world) if window is None else window.nonfinite
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss or gradient norm in steps {first}..{self.state.step}"
            )

    def log_window(self) -> None:
        """Mean loss over ranks and steps since the last log; rank 0 prints and logs it."""
        window = self.state.read_stats(self.where.world)  # the loop's one host sync per log window
        self.raise_if_nonfinite(window)
        self.last_loss = loss = window.loss
        now = time.perf_counter()
        seconds, self.window_start = now - self.window_start, now
        if not self.where.lead:
            return
        cfg = self.params.train
        step, steps, n = self.state.step, cfg.steps, window.steps
        lr = warmup_lr(step, cfg.lr, cfg.warmup_steps)
        img_s = n * cfg.batch_size / max(seconds, 1e-9)
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
            model, chain, range(n), self.params.seed, data.image_shape, self.where.device
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
        from pipelines.train.fid_probe import small_fid

        value = small_fid(
            model, state.diffusion, self.params, self.probe, self.reference, self.where.device
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

    def checkpoint(self, metrics: dict[str, float]) -> None:
        """Report `metrics` with a checkpoint from all ranks (rank 0 writes the files)."""
        rngs = gather_rng_states(self.state.generator)  # collective: every rank's streams
        name = checkpoint_dir_name(self.state.step, self.restored.unusable)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.where.lead:
                save_checkpoint(tmp, self.state, rngs)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)
        self.last_ckpt = str(self.plan.folder.path / name)

    def stop_nonfinite(self, error: NonFiniteLossError) -> None:
        """All ranks stop together; rank 0 leaves a note for the driver (no pointless retries)."""
        if not self.where.lead:
            return
        folder, last = self.plan.folder, self.last_ckpt
        folder.note_nonfinite(str(error), self.state.step, last)
        log.error("%s; last good checkpoint: %s", error, last)
