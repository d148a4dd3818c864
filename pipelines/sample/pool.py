"""Ray Data sampling of N images over an actor pool: fixed index ranges, resumable shards.

Work unit b is the index range [b*B, min((b+1)*B, N)) (`sample_io.plan_shards`); each actor loads
the EMA model once, samples its ranges with per-image generators (`ddpm_core.sampling`) and
writes `samples-{b:06d}.tar` itself. The pool size only decides who runs a range, so the output
is bit-identical for any number of workers, and a rerun skips the shards already verified.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from ddpm_core.config import ConfigError, UNetConfig
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.sampling import sample_indices, snapshot_timesteps
from ddpm_core.unet import UNet
from pipelines.artifacts.samples import (
    MANIFEST,
    ShardSpec,
    load_samples,
    ordered_hash,
    plan_shards,
    prepare_dir,
    sha256,
    verify_shard,
    write_shard,
)
from pipelines.config import Params, from_dict, to_dict
from pipelines.infra.figures import save_grid, save_progressive
from pipelines.infra.files import write_json
from pipelines.infra.ray import check_fits, init_ray
from pipelines.infra.tracking import Tracker, repo_root
from pipelines.train.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_weights

log = logging.getLogger(__name__)

# Keys the trained weights depend on; var_type is a sampling choice (sigma^2 = beta or beta~).
TRAINED_DIFFUSION_KEYS = ("T", "beta_schedule", "beta_start", "beta_end", "mean_type")


# ----------------------------------------------------------------------------------------------
# Model and diffusion


def image_shape(params: Params) -> tuple[int, int, int]:
    return (params.data.channels, params.data.resolution, params.data.resolution)


def check_trained_config(trained: dict[str, Any], params: Params, where: Path) -> None:
    """ConfigError naming `where` when the model's training config differs from `params`."""
    now = to_dict(params)
    keys = [("unet", k) for k in now["unet"]] + [("data", "channels"), ("data", "resolution")]
    keys += [("diffusion", k) for k in TRAINED_DIFFUSION_KEYS]
    for section, key in keys:
        have = trained.get(section, {}).get(key, "<missing>")
        if have != now[section][key]:
            raise ConfigError(
                f"{where}: the model was trained with {section}.{key}={have!r} but params have "
                f"{now[section][key]!r}; retrain (dvc repro) or restore the params"
            )


def load_ema_model(params: Params, model_dir: Path) -> UNet:
    """The EMA U-Net from `<model_dir>/ema.safetensors`, checked against `config.json`."""
    config, weights = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not config.is_file():
        raise FileNotFoundError(f"{config}: model config not found (run the train stage first)")
    trained = json.loads(config.read_text())
    check_trained_config(trained, params, config)
    unet_cfg = from_dict(UNetConfig, trained["unet"], "unet.")
    model = UNet.from_config(unet_cfg, params.data.channels, params.data.resolution)
    state_dict, _ = load_weights(weights)  # FileNotFoundError / ValueError name the file
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[1:3]
        raise ValueError(f"{weights}: weights do not fit the U-Net of {config}: {detail}") from e
    return model.eval().requires_grad_(False)


def build_diffusion(params: Params) -> GaussianDiffusion:
    """p_theta's sampler: all T steps (paper), or every `sample.stride`-th (fast, not paper)."""
    return GaussianDiffusion.from_config(params.diffusion).respaced(params.sample.stride)


def pick_device(use_gpu: bool) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("sample.use_gpu is true but this Ray worker has no CUDA device")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return torch.device("cuda")


# ----------------------------------------------------------------------------------------------
# The actor


class SamplerActor:
    """Ray Data callable class: one model copy per actor, one shard per input row."""

    def __init__(self, params: dict[str, Any], model_dir: str, out_dir: str) -> None:
        self.params = from_dict(Params, params)
        torch.set_num_threads(max(1, int(self.params.sample.cpus_per_worker)))
        self.device = pick_device(self.params.sample.use_gpu)
        self.model = load_ema_model(self.params, Path(model_dir)).to(self.device)
        self.diffusion = build_diffusion(self.params)
        self.out_dir = Path(out_dir)
        self.shape = image_shape(self.params)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch: columns index/start/stop (one row per shard) -> one result row per shard."""
        rows = [
            self.run_shard(ShardSpec(int(b), int(s), int(e)))
            for b, s, e in zip(batch["index"], batch["start"], batch["stop"], strict=True)
        ]
        return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}

    def run_shard(self, spec: ShardSpec) -> dict[str, Any]:
        t0 = time.perf_counter()
        digest = verify_shard(self.out_dir / spec.name, spec, self.shape)
        skipped = digest is not None
        if digest is None:
            images = sample_indices(
                self.model,
                self.diffusion,
                range(spec.start, spec.stop),
                self.params.seed,
                self.shape,
                self.device,
            )  # (n, C, H, W) uint8
            digest = write_shard(images, spec, self.out_dir)
        return {
            "index": spec.index,
            "file": spec.name,
            "start": spec.start,
            "stop": spec.stop,
            "sha256": digest,
            "count": spec.count,
            "skipped": skipped,
            "seconds": time.perf_counter() - t0,
        }


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
            _fmt_seconds(eta),
        )
        if self.tracker is not None:
            self.tracker.log_metrics({"images_done": self.done, "images_per_s": rate}, self.done)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        return self.new / max(self.elapsed(), 1e-9)


def _fmt_seconds(s: float) -> str:
    if s != s:  # nan
        return "?"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def sampling_plan(params: Params, weights: Path) -> dict[str, Any]:
    """What the shards' pixels depend on; a change invalidates existing shards."""
    return {
        "seed": params.seed,
        "batch_size": params.sample.batch_size,
        "stride": params.sample.stride,
        "image_shape": list(image_shape(params)),
        "diffusion": to_dict(params.diffusion),
        "weights_sha256": sha256(weights.read_bytes()),
    }


def _actor_resources(params: Params) -> dict[str, float]:
    cfg = params.sample
    check_fits(cfg.num_workers, cfg.cpus_per_worker, 1.0 if cfg.use_gpu else 0.0, "sample")
    res = {"num_cpus": cfg.cpus_per_worker}
    return {**res, "num_gpus": 1.0} if cfg.use_gpu else res


def run_pool(
    params: Params,
    specs: list[ShardSpec],
    model_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
) -> tuple[list[dict[str, Any]], Progress]:
    """Run every shard on an actor pool of `sample.num_workers`; returns rows in index order.

    The input is `from_items` (no read tasks): with `ray.data.range` a read task needs a CPU
    too, and a pool that takes every CPU of the cluster then deadlocks.
    """
    init_ray(params.ray)
    resources = _actor_resources(params)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # `Progress` logs shards, rate and ETA instead
    items = [{"index": s.index, "start": s.start, "stop": s.stop} for s in specs]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        SamplerActor,
        fn_constructor_kwargs={
            "params": to_dict(params),
            "model_dir": str(model_dir),
            "out_dir": str(out_dir),
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(params.sample.num_workers, len(specs))),
        **resources,
    )
    progress = Progress(sum(s.count for s in specs), tracker)
    rows: dict[int, dict[str, Any]] = {}
    for row in ds.iter_rows():
        rows[int(row["index"])] = row  # a retried shard may report twice: same file, same hash
        progress.update(row)
    missing = [s.index for s in specs if s.index not in rows]
    if missing:
        raise RuntimeError(f"sample: shards {missing} returned no result")
    return [rows[s.index] for s in specs], progress


def sample_to_shards(
    params: Params, root: Path | None = None, tracker: Tracker | None = None
) -> tuple[dict[str, Any], Progress]:
    """Sample `sample.num_images` images into `<paths.samples>`; returns (manifest, progress).

    Existing shards of the same plan are verified and kept (resume); the manifest (byte-stable:
    no timings) is written last, so its presence means every shard is complete.
    """
    root = root or repo_root()
    model_dir, out_dir = root / params.paths.model, root / params.paths.samples
    load_ema_model(params, model_dir)  # fail fast, before Ray starts, on bad weights/config
    specs = plan_shards(params.sample.num_images, params.sample.batch_size)
    plan = sampling_plan(params, model_dir / WEIGHTS_FILE)
    prepare_dir(out_dir, plan, specs)
    rows, progress = run_pool(params, specs, model_dir, out_dir, tracker)
    for row, spec in zip(rows, specs, strict=True):  # the driver re-checks what actors reported
        if sha256((out_dir / spec.name).read_bytes()) != row["sha256"]:
            raise RuntimeError(f"{out_dir / spec.name}: changed after its actor reported it")
    shards = [
        {"index": s.index, "file": s.name, "start": s.start, "stop": s.stop, "sha256": r["sha256"]}
        for s, r in zip(specs, rows, strict=True)
    ]
    manifest = {
        **{k: plan[k] for k in ("seed", "batch_size", "stride", "image_shape", "weights_sha256")},
        "num_images": params.sample.num_images,
        "shards": shards,
        "ordered_hash": ordered_hash([s["sha256"] for s in shards]),
    }
    write_json(out_dir / MANIFEST, manifest)
    log.info(
        "sample: %d images in %d shards, ordered_hash %s",
        manifest["num_images"],
        len(shards),
        manifest["ordered_hash"][:16],
    )
    return manifest, progress


# ----------------------------------------------------------------------------------------------
# The stage: shards, figures, metrics


def progressive_frames(params: Params, model: UNet) -> tuple[torch.Tensor, list[int]]:
    """Predicted x0 every `progressive_every` original steps for images 0..P-1 (paper Fig. 6).

    Returns:
        frames (K, P, C, H, W) uint8 and the K original timesteps (descending). The images use
        the same per-index generators as the shards, so the last frames match samples 0..P-1.
    """
    cfg = params.sample
    every = max(1, cfg.progressive_every // cfg.stride)  # in steps of the (respaced) sampler
    diffusion = build_diffusion(params)
    n = min(cfg.progressive_images, cfg.num_images)
    _, frames = sample_indices(
        model, diffusion, range(n), params.seed, image_shape(params), x0_every=every
    )
    return frames, snapshot_timesteps(diffusion, every)


def sampler_label(params: Params) -> str:
    cfg, T = params.sample, params.diffusion.T
    if cfg.stride == 1:
        return f"ancestral, all {T} steps (paper Algorithm 2)"
    steps = len(range(0, T, cfg.stride))
    return f"ancestral, strided every {cfg.stride}: {steps} of {T} steps (fast, not the paper)"


def run_sample_stage(
    params: Params, root: Path | None = None, tracker: Tracker | None = None
) -> dict[str, Any]:
    """Shards + manifest, sample grid, progressive figure; returns the metrics for sample.json."""
    t0 = time.perf_counter()
    root = root or repo_root()
    manifest, progress = sample_to_shards(params, root, tracker)
    out_dir, plots = root / params.paths.samples, root / params.paths.plots
    grid = load_samples(out_dir, params.sample.grid_images)  # (N, C, H, W) uint8
    scale = max(1, 64 // params.data.resolution)
    figures = [save_grid(grid, plots / "sample_grid.png", scale=scale)]
    frames, steps = progressive_frames(params, load_ema_model(params, root / params.paths.model))
    figures.append(save_progressive(frames, steps, plots / "progressive_generation.png"))
    metrics = {
        "num_images": manifest["num_images"],
        "new_images": progress.new,
        "images_per_s": progress.rate(),
        "sampling_time_s": progress.elapsed(),
        "wall_time_s": time.perf_counter() - t0,
        "num_workers": params.sample.num_workers,
        "stride": params.sample.stride,
        "num_steps": len(range(0, params.diffusion.T, params.sample.stride)),
        "paper_sampler": params.sample.stride == 1,
        "sampler": sampler_label(params),
        "ordered_hash": manifest["ordered_hash"],
    }
    if tracker is not None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        tracker.log_metrics(numeric, step=manifest["num_images"])
        tracker.set_tags(
            {"sampler": metrics["sampler"], "samples.ordered_hash": manifest["ordered_hash"]}
        )
        for path in [*figures, out_dir / MANIFEST]:
            tracker.log_artifact(path, "sample")
    return metrics
