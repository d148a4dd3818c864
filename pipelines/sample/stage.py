"""The sample stage: N images (Algorithm 2, or `sample.sampler`) on a Ray Data actor pool, figures
and metrics.

The driver checks the model folder before Ray starts, plans fixed index ranges (one shard each,
`artifacts.samples`), keeps shards a crashed run already completed, runs the rest on a pool of
`sample.num_workers` `SamplerActor`s and writes the manifest last. The pool size only decides
who runs a range, so the output is bit-identical for any number of workers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import ray
import torch

from ddpm_core.samplers.registry import is_paper
from ddpm_core.sampling import sample_indices, snapshot_timesteps
from ddpm_core.unet import UNet
from pipelines.artifacts.model_dir import WEIGHTS_FILE, load_ema_model
from pipelines.artifacts.samples import (
    MANIFEST,
    ShardSpec,
    load_samples,
    plan_shards,
    prepare_dir,
    publish,
    sampling_plan,
    work_dir,
    write_manifest,
)
from pipelines.config import Params
from pipelines.infra.figures import display_scale, save_grid, save_progressive
from pipelines.infra.model_runner import sample_runner
from pipelines.infra.progress import format_duration
from pipelines.infra.ray import init_ray
from pipelines.infra.sampler_params import sampler_of, sampler_record
from pipelines.infra.tracking import Tracker, numeric
from pipelines.sample.actor import SamplerActor, build_diffusion
from pipelines.sample.progress import Watcher, board

log = logging.getLogger(__name__)

GRID_PNG = "sample_grid.png"
PROGRESSIVE_PNG = "progressive_generation.png"
PROGRESS_EVERY_S = 15.0  # the denoising progress line, from the first step on


# ----------------------------------------------------------------------------------------------
# The driver


@dataclass
class Progress:
    """Console progress with throughput and ETA over newly sampled images."""

    total: int
    tracker: Tracker | None = None
    done: int = 0
    new: int = 0
    start: float = field(default_factory=time.perf_counter)

    def update(self, row: dict[str, Any]) -> None:
        self.done += int(row["count"])
        if not row["skipped"]:
            self.new += int(row["count"])
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info(
            "sample: %s %s  %d/%d images  %.2f images/s  ETA %s",
            row["file"],
            "verified, skipped" if row["skipped"] else "written",
            self.done,
            self.total,
            rate,
            format_duration(eta),
        )
        if self.tracker is not None:
            self.tracker.log_metrics({"images_done": self.done, "images_per_s": rate}, self.done)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        return self.new / max(self.elapsed(), 1e-9)


def run_pool(
    params: Params,
    specs: list[ShardSpec],
    model_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> tuple[list[dict[str, Any]], Progress]:
    """Run every shard on an actor pool of `sample.num_workers`; returns rows in index order.

    From the first reverse step on, a line with the denoising progress, images/s and ETA is
    logged every `progress_every_s` seconds (`sample.progress`); one more line per finished shard.

    The input is `from_items` (no read tasks): with `ray.data.range` a read task needs a CPU
    too, and a pool that takes every CPU of the cluster then deadlocks.
    """
    runner = sample_runner(params)  # what each actor asks Ray for; the actor sets itself up
    runner.check_fits(params.sample.num_workers)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # `Progress` logs shards, rate and ETA instead
    steps_board = board()
    items = [{"index": s.index, "start": s.start, "stop": s.stop} for s in specs]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        SamplerActor,
        fn_constructor_kwargs={
            "params": params,  # the typed frozen record: Ray pickles it as it is
            "model_dir": model_dir,
            "out_dir": out_dir,
            "board": steps_board,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(params.sample.num_workers, len(specs))),
        **runner.resources(),
    )
    total = sum(s.count for s in specs)
    progress = Progress(total, tracker)
    rows: dict[int, dict[str, Any]] = {}
    steps = build_diffusion(params).num_timesteps
    try:
        with Watcher(steps_board, total * steps, steps, progress_every_s):
            for row in ds.iter_rows():
                rows[int(row["index"])] = row  # a retried shard may report twice: same file, hash
                progress.update(row)
    finally:
        ray.kill(steps_board)  # also when a shard fails: no board left on the cluster
    missing = [s.index for s in specs if s.index not in rows]
    if missing:
        raise RuntimeError(f"sample: shards {missing} returned no result")
    return [rows[s.index] for s in specs], progress


def sample_to_shards(
    params: Params, root: Path, tracker: Tracker | None = None
) -> tuple[dict[str, Any], Progress]:
    """Sample `sample.num_images` images into `<paths.samples>`; returns (manifest, progress).

    The model folder is checked before Ray starts. Existing shards of the same plan are verified
    and kept (resume); the manifest is written last, so its presence means every shard is done.
    """
    model_dir, out_dir = root / params.paths.model, root / params.paths.samples
    load_ema_model(params, model_dir)  # fail fast, before Ray starts, on bad weights/config
    specs = plan_shards(params.sample.num_images, params.sample.batch_size)
    plan = sampling_plan(params, model_dir / WEIGHTS_FILE)
    init_ray(params.ray)
    work = work_dir(out_dir, plan)  # a new plan beside a complete old set: a staging folder
    prepare_dir(work, plan, specs)
    rows, progress = run_pool(params, specs, model_dir, work, tracker)
    manifest = write_manifest(work, plan, specs, [str(r["sha256"]) for r in rows])
    publish(work, out_dir)  # the old set stays until the new one is complete
    log.info(
        "sample: %d images in %d shards, ordered_hash %s",
        manifest["num_images"],
        len(specs),
        manifest["ordered_hash"][:16],
    )
    return manifest, progress


# ----------------------------------------------------------------------------------------------
# The stage: shards, figures, metrics


def progressive_frames(params: Params, model: UNet) -> tuple[torch.Tensor, list[int]]:
    """Predicted x0 every `progressive_every` original steps for images 0..P-1 (paper Fig. 6).

    Returns:
        frames (K, P, C, H, W) uint8 and the K original timesteps (descending). The images use
        the shards' sampler and per-index noise, so the last frames match samples 0..P-1.
    """
    cfg = params.sample
    every = max(1, cfg.progressive_every // cfg.stride)  # in steps of the (respaced) sampler
    diffusion = build_diffusion(params)
    n = min(cfg.progressive_images, cfg.num_images)
    _, frames = sample_indices(
        model, diffusion, range(n), params.seed, params.data.image_shape, x0_every=every,
        sampler=sampler_of(params),
    )  # fmt: skip
    return frames, snapshot_timesteps(diffusion, every)


def is_paper_sampler(params: Params) -> bool:
    """Algorithm 2 as published: the paper's sampler, its default options, all T steps."""
    return params.sample.stride == 1 and is_paper(sampler_of(params))


def sampler_label(params: Params) -> str:
    """What sampled: the sampler with its options, the steps, and whether it is the paper's."""
    sampler, stride, T = sampler_of(params), params.sample.stride, params.diffusion.T
    what, steps = sampler.describe(), len(range(0, T, stride))
    if is_paper_sampler(params):
        return f"{what}, all {T} steps ({sampler.reference})"
    if is_paper(sampler):
        return f"{what}, strided every {stride}: {steps} of {T} steps (fast, not the paper)"
    how_many = f"all {T} steps" if stride == 1 else f"{steps} of {T} steps"
    return f"{what}, {how_many} ({sampler.reference}, not the paper)"


@dataclass(frozen=True)
class SampleResult:
    """What the sample stage made; `metrics()` is `metrics/sample.json`."""

    metrics_file: ClassVar[str] = "sample.json"

    samples_dir: Path
    num_images: int
    new_images: int  # sampled by this run (the rest were verified and kept)
    images_per_s: float  # new images per second of sampling
    sampling_time_s: float
    wall_time_s: float
    num_workers: int
    stride: int
    num_steps: int
    sampler: str  # `sampler_label`
    sampler_name: str  # `sample.sampler`, a name in the registry
    sampler_options: dict[str, Any]  # every option it declares, as run
    paper_sampler: bool  # Algorithm 2 over all T steps (`is_paper_sampler`)
    ordered_hash: str  # equal for any number of workers
    run_id: str  # the MLflow run

    def metrics(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "new_images": self.new_images,
            "images_per_s": self.images_per_s,
            "sampling_time_s": self.sampling_time_s,
            "wall_time_s": self.wall_time_s,
            "num_workers": self.num_workers,
            "stride": self.stride,
            "num_steps": self.num_steps,
            "paper_sampler": self.paper_sampler,
            "sampler": self.sampler,
            "sampler_name": self.sampler_name,
            "sampler_options": self.sampler_options,
            "ordered_hash": self.ordered_hash,
        }

    def summary(self) -> str:
        return (
            f"{self.samples_dir}: {self.num_images} images ({self.sampler}), {self.new_images} "
            f"new at {self.images_per_s:.2f} images/s, ordered_hash {self.ordered_hash[:16]} "
            f"(MLflow run {self.run_id})"
        )


def run_sample(params: Params, root: Path, tracker: Tracker) -> SampleResult:
    """Shards + manifest, sample grid and progressive figure, logged to `tracker`."""
    t0 = time.perf_counter()
    manifest, progress = sample_to_shards(params, root, tracker)
    out_dir, plots = root / params.paths.samples, root / params.paths.plots
    grid = load_samples(out_dir, params.sample.grid_images)  # (N, C, H, W) uint8
    figures = [save_grid(grid, plots / GRID_PNG, scale=display_scale(params.data.resolution))]
    frames, steps = progressive_frames(params, load_ema_model(params, root / params.paths.model))
    figures.append(save_progressive(frames, steps, plots / PROGRESSIVE_PNG))
    result = SampleResult(
        samples_dir=out_dir,
        num_images=manifest["num_images"],
        new_images=progress.new,
        images_per_s=progress.rate(),
        sampling_time_s=progress.elapsed(),
        wall_time_s=time.perf_counter() - t0,
        num_workers=params.sample.num_workers,
        stride=params.sample.stride,
        num_steps=len(range(0, params.diffusion.T, params.sample.stride)),
        sampler=sampler_label(params),
        sampler_name=params.sample.sampler,
        sampler_options=sampler_record(params)["sampler_options"],
        paper_sampler=is_paper_sampler(params),
        ordered_hash=manifest["ordered_hash"],
        run_id=tracker.run_id,
    )
    tracker.log_metrics(numeric(result.metrics()), step=result.num_images)
    tracker.set_tags({
        "sampler": result.sampler,
        "sampler.name": result.sampler_name,
        "sampler.options": json.dumps(result.sampler_options, sort_keys=True),
        "samples.ordered_hash": result.ordered_hash,
    })  # fmt: skip
    for path in [*figures, out_dir / MANIFEST]:
        tracker.log_artifact(path, "sample")
    return result
