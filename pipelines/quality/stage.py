"""The quality stage: FID against sampler steps (each of `quality.samplers`) and FID / IS of the
predicted x0 over the reverse process (Ho et al. 2020, Fig. 10).

Both curves are off by default (`quality.steps: []`, `quality.reverse_every: 0`); then the stage
only writes header-only plot files and says so in its metrics. When on, one Ray task (a GPU with
`quality.use_gpu`) samples `quality.images` images per (sampler, step count), each sampler with
its `sample.sampler_options`, and `quality.reverse_images` images for the progressive pass, with
the same per-image noise keys and the same network set-up as the sample stage
(`infra.model_runner`: deterministic backends, the sample.* precision, channels_last and
compile), and scores them against the cached reference statistics of the fid_stats stage. These
FIDs use few samples and only `ancestral` is the paper's sampler (Heun makes two network calls a
step): every figure carries `label`, which says so.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ddpm_core.diffusion import GaussianDiffusion, Model
from ddpm_core.sampling import sample_batched, snapshot_timesteps
from pipelines.artifacts.fid_stats import FidStats, InceptionWeights, load_inception
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.config import Params
from pipelines.fid.reference import headline_reference
from pipelines.fid.score import Score, score
from pipelines.infra.files import atomic_path
from pipelines.infra.model_runner import quality_runner
from pipelines.infra.ray import init_ray
from pipelines.infra.sampler_params import check_samplers, sampler_of
from pipelines.infra.tracking import Tracker, numeric

log = logging.getLogger(__name__)

STEPS_CSV = "fid_vs_steps.csv"
REVERSE_CSV = "fid_over_reverse.csv"


# ----------------------------------------------------------------------------------------------
# Curves


def _row(s: Score, suffix: str = "") -> dict[str, float]:
    """{"fid<suffix>": FID} and, when measured, {"isc<suffix>": IS mean}."""
    isc = {f"isc{suffix}": s.isc[0]} if s.isc is not None else {}
    return {f"fid{suffix}": s.fid[0]} | isc


def steps_curve(
    params: Params, model: Model, device: torch.device, weights: InceptionWeights, ref: FidStats
) -> list[dict[str, Any]]:
    """One row per step count: FID (and IS) of each `quality.samplers` at stride T / steps."""
    cfg, shape = params.quality, params.data.image_shape
    full = GaussianDiffusion.from_config(params.diffusion)
    rows = []
    for steps in sorted(cfg.steps):
        diffusion = full.respaced(params.diffusion.T // steps)
        row: dict[str, Any] = {"steps": steps}
        for sampler in cfg.samplers:
            t0 = time.perf_counter()
            step, n = sampler_of(params, sampler), range(cfg.images)
            images = sample_batched(
                model, diffusion, n, params.seed, shape, cfg.batch_size, device, step
            )
            s = score(images, weights, [ref], _isc_splits(params))
            row |= _row(s, f"_{sampler}")
            log.info("quality: %s, %d steps: FID %.3f (%.0f s)", sampler, steps, s.fid[0],
                     time.perf_counter() - t0)  # fmt: skip
        rows.append(row)
    return rows


def reverse_curve(
    params: Params, model: Model, device: torch.device, weights: InceptionWeights, ref: FidStats
) -> list[dict[str, Any]]:
    """Paper Fig. 10: FID (and IS) of predicted x0 every `reverse_every` steps of Algorithm 2."""
    cfg, shape = params.quality, params.data.image_shape
    diffusion = GaussianDiffusion.from_config(params.diffusion)  # all T steps: the paper's pass
    _, frames = sample_batched(
        model, diffusion, range(cfg.reverse_images), params.seed, shape, cfg.batch_size, device,
        x0_every=cfg.reverse_every,
    )  # (K, N, C, H, W) uint8  # fmt: skip
    rows = []
    for t, x0 in zip(snapshot_timesteps(diffusion, cfg.reverse_every), frames, strict=True):
        s = score(x0, weights, [ref], _isc_splits(params))
        rows.append({"reverse_steps": params.diffusion.T - t, "t": t} | _row(s))
    return rows


def _isc_splits(params: Params) -> int | None:
    return params.evaluate.isc_splits if "isc" in params.evaluate.metrics else None


def compute_curves(
    params: Params, model_dir: Path, weights: InceptionWeights, ref: FidStats
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both curves in this process (the body of the stage's one Ray task). The network runs as
    the sample stage's actors run it (`model_runner.quality_runner`): deterministic backends,
    the sample.* precision, channels_last and compile."""
    model, device = quality_runner(params).load(load_ema_model, params, model_dir)
    steps = steps_curve(params, model, device, weights, ref) if params.quality.steps else []
    if not params.quality.reverse_every:
        return steps, []
    return steps, reverse_curve(params, model, device, weights, ref)


# ----------------------------------------------------------------------------------------------
# Files and the stage


def steps_header(rows: Sequence[dict[str, Any]], samplers: Sequence[str]) -> list[str]:
    return list(rows[0]) if rows else ["steps", *(f"fid_{s}" for s in samplers)]


def reverse_header(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else ["reverse_steps", "t", "fid"]


def write_csv(path: Path, header: list[str], rows: Sequence[dict[str, Any]]) -> Path:
    """A DVC plot file (header only when the curve is off), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()}
                    for r in rows)  # fmt: skip
    return path


def curve_label(params: Params, weights: InceptionWeights, ref_count: int, split: str) -> str:
    q = params.quality
    samplers = [sampler_of(params, n) for n in q.samplers]
    others = [f"{s.describe()} ({s.reference})" for s in samplers if not s.paper]
    not_paper = f"; {', '.join(others)}: not the paper" if others else ""
    calls = [f"{s.title} {s.calls_per_step}" for s in samplers if s.calls_per_step > 1]
    not_paper += f"; network calls a step: {', '.join(calls)}" if calls else ""
    return (
        f"in-stage FID of {q.images} samples per point ({q.reverse_images} for the reverse "
        f"process) vs {ref_count} {split} images, {weights.label}{not_paper}; NOT comparable "
        f"with published figures"
    )


@dataclass(frozen=True)
class QualityResult:
    """What the quality stage measured; `metrics()` is `metrics/quality.json`."""

    metrics_file: ClassVar[str] = "quality.json"

    steps: tuple[dict[str, Any], ...]
    reverse: tuple[dict[str, Any], ...]
    label: str  # "off (...)" or what the numbers are comparable with
    wall_time_s: float

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "wall_time_s": self.wall_time_s}
        for row in self.steps:
            out |= {f"{k}_steps{row['steps']}": v for k, v in row.items() if k != "steps"}
        for row in self.reverse:
            out |= {f"x0_{k}_t{row['t']}": v for k, v in row.items() if k in ("fid", "isc")}
        return out

    def summary(self) -> str:
        lines = [f"quality: {self.label}"]
        lines += [", ".join(f"{k} {v:.4g}" for k, v in r.items()) for r in self.steps]
        lines += [f"x0 at t={r['t']}: FID {r['fid']:.4g}" for r in self.reverse]
        return "\n".join(lines)


def run_quality(params: Params, root: Path, tracker: Tracker) -> QualityResult:
    """Both curves (or header-only files when off), logged to `tracker` against steps / t."""
    t0, cfg, plots = time.perf_counter(), params.quality, root / params.paths.plots
    steps: list[dict[str, Any]] = []
    reverse: list[dict[str, Any]] = []
    label = "off (quality.steps: [] and quality.reverse_every: 0)"
    check_samplers(params)
    if cfg.steps or cfg.reverse_every:
        model_dir = root / params.paths.model
        load_ema_model(params, model_dir)  # fail fast, before Ray starts
        weights = load_inception(root / params.paths.fid_stats)  # what the reference stats used
        init_ray(params.ray)
        runner = quality_runner(params)
        runner.check_fits(1)
        ref = headline_reference(params, root, weights)  # cached by the fid_stats stage
        import ray

        task = runner.remote(compute_curves)
        steps, reverse = ray.get(task.remote(params, model_dir, weights, ref.stats))
        label = curve_label(params, weights, ref.count, ref.split)
    files = [
        write_csv(plots / STEPS_CSV, steps_header(steps, cfg.samplers), steps),
        write_csv(plots / REVERSE_CSV, reverse_header(reverse), reverse),
    ]
    result = QualityResult(tuple(steps), tuple(reverse), label, time.perf_counter() - t0)
    for row in steps:
        tracker.log_metrics(numeric({k: v for k, v in row.items() if k != "steps"}), row["steps"])
    for row in reverse:
        x0 = {f"x0_{k}": v for k, v in row.items() if k in ("fid", "isc")}
        tracker.log_metrics(numeric(x0), row["reverse_steps"])
    tracker.set_tags({"quality.label": label})
    for path in files:
        tracker.log_artifact(path, "quality")
    return result
