"""The default run against diffusers' own DDPM recipe: training and sampling images/s, and FID.

    python -m benchmarks.peer [--steps 1500] [--samples 256] [--sample-stride 1] [--repeats 1]
                              [--ours profile bf16]

Both sides get the default profile (params.yaml) on its own digits shards, the same network
shape, budget and machine, in one invocation:

- this project: training is `stages.train.train` (the run lock, the MLflow run, Ray Train with
  the profile's workers, checkpoints, sample grids and export), sampling is the sample stage's
  `sample_to_shards` (the Ray Data actor pool writing verified shards);
- diffusers: `UNet2DModel` of the same shape (the same parameter count), `DDPMScheduler` with
  the same betas and variance, a plain PyTorch loop with the profile's Adam, warm-up, clipping and
  EMA (`diffusers.training_utils.EMAModel`, for-each) on the training split held in memory as
  float tensors, with the worker's thread count; sampling is `DDPMPipeline` in this process at
  the sample stage's batch size, as many threads as the stage's actors have CPUs.

Our side runs once per execution named in `--ours` (`EXECUTIONS`): `profile` is the default
profile as it is (eager fp32, the default run's numbers); `compile` and `bf16` are named options
that change the numbers (rounding; bf16 beyond rounding), each in its own folders from the same
shards. The table gives each one's ratio to the peer, its loss curve's largest relative
difference from `profile`'s at the log points, and its FID.

The turns alternate train (ours..., peer), then sample (peer, ...ours) -- ABBA -- and repeat, so
a load change on the shared machine hits both sides. Each turn records the CPUs that processes
outside the benchmark's own process tree used meanwhile (`benchmarks.report.OtherCpus`; the load
average counts the benchmark's own Ray processes, so it cannot tell): above
`report.OTHER_CPUS_LIMIT` the table is marked as measured under load, not a verdict.
Images/s of training are "steady" (after the first `train.log_every` steps: the worker's logged
windows, which include its checkpoints and sample grids; the peer's step clock) and "session"
(all steps). Sampling images/s are images / wall time of the call (ours incl. actor start-up).
Both sample sets are scored by the project's FID call (`pipelines.fid.score.score`) against the
same reference statistics (`evaluate.fid.reference`, `evaluate.fid.reference_images` images).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
import torch.nn.functional as F
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

from benchmarks.report import (
    OTHER_CPUS_LIMIT,
    OtherCpus,
    cpu_model,
    load_average,
    write_result,
)
from benchmarks.train_overhead import local_cluster, set_dotted, window_rate
from ddpm_core.convert import diffusers_config_from_unet
from ddpm_core.sampling import from_uint8
from pipelines.artifacts.diffusers_dir import scheduler_config, unet_kwargs
from pipelines.artifacts.samples import load_samples
from pipelines.artifacts.shards import load_split
from pipelines.config import Params, from_dict
from pipelines.data.stage import build_shards
from pipelines.fid.features import extract_features
from pipelines.fid.inception import default_cache_dir, resolve_weights
from pipelines.fid.reference import write_reference_stats
from pipelines.fid.score import score
from pipelines.sample.stage import sample_to_shards
from pipelines.train.step import (
    ADAM_BETAS,
    ADAM_EPS,
    build_model,
    draw_t_noise,
    make_state,
    prepare_model,
    warmup_lr,
)
from stages.train import train

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
RESULTS = REPO / "benchmarks" / "results" / "peer.md"
TARGET = 1.2  # ours / peer images/s, training and sampling
OURS = "this project (default profile)"
# How our stages run the network (`--ours`): the profile as it is, or a named option. Each named
# option rounds differently from the default eager fp32 network, so its losses and samples (and
# their hash) differ; bf16 changes them beyond rounding. The peer always runs diffusers' default
# (eager fp32).
EXECUTIONS: dict[str, dict[str, Any]] = {
    "profile": {},
    "compile": {"train.compile": "default", "sample.compile": "default"},  # Inductor
    # bf16 autocast (AMX on this CPU); in training eager and channels-first, its fastest form
    # here (CPU ms per step at 1 thread: 210 eager, 211 compiled, 429 with channels_last, vs
    # 293-302 in fp32); in sampling channels_last and compiled with frozen weights (3.3x fp32)
    "bf16": {
        "train.precision": "bf16",
        "sample.precision": "bf16",
        "sample.channels_last": True,
        "sample.compile": "default",  # weights frozen (accel.frozen)
    },
}


def side_name(execution: str) -> str:
    """The table's name of our side under `execution`."""
    return OURS if execution == "profile" else f"this project, named option `{execution}`"


PEER = "diffusers recipe"


@dataclass(frozen=True)
class Budget:
    steps: int  # training steps (train.steps)
    samples: int  # images sampled by each side (sample.num_images)
    stride: int  # sample.stride: T / stride reverse steps (1: all T, the paper)
    repeats: int
    fid_reference: int  # reference images (evaluate.fid.reference_images)
    breakdown: int = 10  # steps of the per-part CPU-time breakdown
    ours: tuple[str, ...] = ("profile",)  # how our stages run the network (EXECUTIONS)


@dataclass(frozen=True)
class TrainRun:
    side: str
    steady: float  # images/s after the first log window
    session: float  # images/s over all steps
    wall: float  # s: ours = the whole stage (Ray start, workers, export); peer = model + loop
    losses: tuple[float, ...]  # the loss at each log point
    load: str
    other: float = math.nan  # CPUs other processes used during the turn (OtherCpus)


@dataclass(frozen=True)
class SampleRun:
    side: str
    rate: float  # images / wall s of the sampling call
    wall: float
    load: str
    other: float = math.nan  # CPUs other processes used during the turn (OtherCpus)


# ----------------------------------------------------------------------------------------------
# Set-up


SHARED_PATHS = ("shards", "fid_stats")  # inputs every execution reads; the rest are its own


def bench_params(root: Path, budget: Budget, rep: int = 0, execution: str = "profile") -> Params:
    """The default profile (params.yaml) with its paths under `root` (outputs under
    `root/<execution>`), the budget and `EXECUTIONS[execution]` applied."""
    raw: dict[str, Any] = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    own = root / execution
    raw["paths"] = {
        k: str((root if k in SHARED_PATHS else own) / v) for k, v in raw["paths"].items()
    }
    raw["paths"]["ray_storage"] = str(own / f"ray-{rep}")  # a fresh run per repeat
    overrides = {
        "train.steps": budget.steps,
        "train.max_failures": 0,  # a retried attempt would distort the timing: fail instead
        "sample.num_images": budget.samples,
        "sample.stride": budget.stride,
        "evaluate.fid.images": budget.samples,
        "evaluate.fid.reference_images": budget.fid_reference,
        # KID's subsets are drawn from the samples: no larger than the budget's sample count
        "evaluate.kid.subset_size": min(raw["evaluate"]["kid"]["subset_size"], budget.samples),
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }
    overrides |= EXECUTIONS[execution]
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return from_dict(Params, raw)


def peer_unet(params: Params) -> nn.Module:
    """diffusers `UNet2DModel` of the default U-Net's shape; ValueError if the counts differ."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        unet = UNet2DModel(**diffusers_config_from_unet(unet_kwargs(params)))
    ours, theirs = (sum(p.numel() for p in m.parameters()) for m in (build_model(params), unet))
    if ours != theirs:
        raise ValueError(f"UNet2DModel has {theirs} parameters, the project's U-Net {ours}")
    return unet


def peer_scheduler(params: Params) -> Any:
    """`DDPMScheduler` of the run's betas and variance (the project's diffusers export)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config(params.diffusion))


# ----------------------------------------------------------------------------------------------
# Training


def ours_train(params: Params, root: Path, side: str = OURS) -> TrainRun:
    """`stages.train.train` on a fresh cluster; steady rate from rank 0's MLflow windows."""
    start = time.perf_counter()
    with local_cluster(params):
        result = train(params, root)
    wall = time.perf_counter() - start
    assert params.mlflow.tracking_uri is not None
    client, cfg = MlflowClient(params.mlflow.tracking_uri), params.train
    steady = window_rate(client, result.run_id, cfg.batch_size, cfg.log_every)
    losses = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "loss"))
    session = result.images_per_s
    return TrainRun(
        side, steady or session, session, wall, tuple(v for _, v in losses), load_average()
    )


def peer_train(params: Params, root: Path) -> tuple[TrainRun, nn.Module]:
    """diffusers' recipe: in-memory epochs of the train split; returns the run and the EMA net."""
    from diffusers.training_utils import EMAModel

    cfg, start = params.train, time.perf_counter()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))  # as the Ray Train worker
    images, _ = load_split(params.paths.shards, "train")
    data = from_uint8(images)  # (N, C, H, W) float32 in [-1, 1], all in memory
    unet, scheduler = peer_unet(params), peer_scheduler(params)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, min_decay=cfg.ema_decay, foreach=True)
    gen = torch.Generator().manual_seed(params.seed)
    order, losses, marks = torch.empty(0, dtype=torch.long), [], []
    unet.train()
    loop_start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.batch_size:  # a new epoch: reshuffle (DataLoader(shuffle=True))
            order = torch.randperm(len(data), generator=gen)
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        for group in opt.param_groups:
            group["lr"] = warmup_lr(step, cfg.lr, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        ema.step(unet.parameters())
        if step % cfg.log_every == 0 or step == cfg.steps:
            losses.append(loss.item())  # one host read per log window, as the worker
        marks.append(time.perf_counter())
    wall = time.perf_counter() - start
    ema.copy_to(unet.parameters())
    session = cfg.steps * cfg.batch_size / (marks[-1] - loop_start)
    skip = cfg.log_every
    steady = (
        (cfg.steps - skip) * cfg.batch_size / (marks[-1] - marks[skip - 1])
        if cfg.steps > skip
        else session
    )
    return TrainRun(PEER, steady, session, wall, tuple(losses), load_average()), unet.eval()


# ----------------------------------------------------------------------------------------------
# Sampling


def ours_sample(params: Params, root: Path, side: str = OURS) -> tuple[SampleRun, torch.Tensor]:
    """The sample stage's shards from the exported EMA model; images (N, C, H, W) uint8."""
    start = time.perf_counter()
    with local_cluster(params):
        sample_to_shards(params, root)
    wall = time.perf_counter() - start
    images = load_samples(params.paths.samples)
    return SampleRun(side, len(images) / wall, wall, load_average()), images


def peer_sample(params: Params, unet: nn.Module) -> tuple[SampleRun, torch.Tensor]:
    """`DDPMPipeline` in batches of sample.batch_size, T / stride steps; (N, C, H, W) uint8."""
    from diffusers import DDPMPipeline

    cfg = params.sample
    threads = max(1, int(cfg.num_workers * cfg.cpus_per_worker))  # the stage's actor CPUs
    torch.set_num_threads(threads)
    pipe = DDPMPipeline(unet=unet, scheduler=peer_scheduler(params))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(params.seed)
    steps = params.diffusion.T // cfg.stride
    start, parts = time.perf_counter(), []
    for lo in range(0, cfg.num_images, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_images - lo)
        out = pipe(batch_size=n, generator=gen, num_inference_steps=steps, output_type="np")
        parts.append(torch.from_numpy(out.images).permute(0, 3, 1, 2))  # (n, C, H, W) in [0, 1]
    wall = time.perf_counter() - start
    images = (torch.cat(parts) * 255).round().clamp(0, 255).to(torch.uint8)
    return SampleRun(PEER, len(images) / wall, wall, load_average()), images


def fids(params: Params, root: Path, sets: dict[str, torch.Tensor]) -> dict[str, float]:
    """FID of each image set against the same reference statistics (the project's call)."""
    ev = params.evaluate.fid
    weights = resolve_weights(ev, default_cache_dir())
    ref = write_reference_stats(
        Path(params.paths.shards),
        root / "fid_ref",
        ev.reference,
        ev.reference_images,
        weights,
        extract_features,
    )
    return {side: score(images, weights, [ref.stats]).fid[0] for side, images in sets.items()}


# ----------------------------------------------------------------------------------------------
# Where the time goes: CPU seconds per part of one step, 1 thread (less sensitive to load)


class PartClock:
    """CPU time (`time.process_time`) per named part, summed over the timed steps."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.process_time()
        yield
        self.parts[name] = self.parts.get(name, 0.0) + time.process_time() - t0


def ours_step_parts(params: Params, x0: torch.Tensor, clock: PartClock) -> Callable[[], None]:
    """`train_step`'s parts (the worker's step) on a fixed batch."""
    state, cfg = make_state(params, torch.device("cpu"), 0, 1), params.train
    prepare_model(state, cfg.channels_last)

    def step() -> None:
        with clock("t, eps draw"):
            t, noise = draw_t_noise(state.generator, tuple(x0.shape), params.diffusion.T)
        state.optimizer.zero_grad(set_to_none=True)
        with clock("forward + loss"):
            loss = state.loss_fn(x0, t, noise).mean()
        with clock("backward"):
            loss.backward()
        with clock("clip"):
            norm = torch.nn.utils.clip_grad_norm_(state.params, cfg.grad_clip, foreach=True)
        with clock("Adam"):
            state.optimizer.step()
        with clock("EMA"):
            state.ema.update(state.raw)
        state.stats.add(loss, norm)

    return step


def peer_step_parts(params: Params, x0: torch.Tensor, clock: PartClock) -> Callable[[], None]:
    """The peer loop's parts on the same batch."""
    from diffusers.training_utils import EMAModel

    cfg, unet, scheduler = params.train, peer_unet(params), peer_scheduler(params)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, min_decay=cfg.ema_decay, foreach=True)

    def step() -> None:
        with clock("t, eps draw"):
            noise, t = torch.randn_like(x0), torch.randint(0, params.diffusion.T, (len(x0),))
        opt.zero_grad(set_to_none=True)
        with clock("forward + loss"):
            loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        with clock("backward"):
            loss.backward()
        with clock("clip"):
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        with clock("Adam"):
            opt.step()
        with clock("EMA"):
            ema.step(unet.parameters())

    return step


def breakdown(params: Params, steps: int = 10) -> dict[str, dict[str, float]]:
    """ms of CPU per part of a training step, ours and the peer's, timed alternately."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x0 = torch.rand(params.train.batch_size, *params.data.image_shape) * 2 - 1
    clocks = {OURS: PartClock(), PEER: PartClock()}
    fns = {OURS: ours_step_parts(params, x0, clocks[OURS])}
    fns[PEER] = peer_step_parts(params, x0, clocks[PEER])
    for _ in range(2):  # warm-up
        for fn in fns.values():
            fn()
    for c in clocks.values():
        c.parts.clear()
    for _ in range(steps):
        for fn in fns.values():
            fn()
    torch.set_num_threads(threads)
    return {side: {k: 1000 * v / steps for k, v in c.parts.items()} for side, c in clocks.items()}


def breakdown_lines(parts: dict[str, dict[str, float]], steps: int) -> list[str]:
    names = list(parts[OURS])
    total = {side: sum(p.values()) for side, p in parts.items()}
    lines = [
        "Where a training step's time goes (CPU ms per step at 1 thread, `time.process_time`, "
        f"{steps} alternating steps on one batch: CPU time is less disturbed by other load "
        "than wall time):",
        "",
        "| part | " + " | ".join(names) + " | total |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for side, p in parts.items():
        cells = " | ".join(f"{p[n]:.1f}" for n in names)
        lines.append(f"| {side} | {cells} | {total[side]:.1f} |")
    return [*lines, ""]


# ----------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Outcome:
    train: list[TrainRun]
    sample: list[SampleRun]
    fid: dict[str, float]
    parts: dict[str, dict[str, float]]


def turn(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """fn(*args), and the CPUs that processes outside the benchmark used meanwhile."""
    with OtherCpus() as other:
        out = fn(*args)
    return out, other.cpus


def run(root: Path, budget: Budget) -> Outcome:
    """ABBA turns per repeat (train: ours..., peer; sample: peer, ...ours); FID of the last
    repeat's sample sets."""
    params = bench_params(root, budget)
    build_shards(params.data, params.seed, Path(params.paths.shards))
    trains: list[TrainRun] = []
    samples: list[SampleRun] = []
    sets: dict[str, torch.Tensor] = {}
    for rep in range(budget.repeats):
        ours = {e: bench_params(root, budget, rep, e) for e in budget.ours}
        for e, p in ours.items():
            ours_t, cpus = turn(ours_train, p, root, side_name(e))
            trains.append(replace(ours_t, other=cpus))
        params = bench_params(root, budget, rep)  # the peer: the profile's shards and budget
        (peer_t, peer_net), cpus = turn(peer_train, params, root)
        trains.append(replace(peer_t, other=cpus))
        print(f"train {rep}: " + "\n         ".join(map(str, trains[-len(ours) - 1 :])))
        (peer_s, sets[PEER]), cpus = turn(peer_sample, params, peer_net)
        samples.append(replace(peer_s, other=cpus))
        for e, p in reversed(ours.items()):
            (ours_s, sets[side_name(e)]), cpus = turn(ours_sample, p, root, side_name(e))
            samples.append(replace(ours_s, other=cpus))
        print(f"sample {rep}: " + "\n          ".join(map(str, samples[-len(ours) - 1 :])))
    return Outcome(trains, samples, fids(params, root, sets), breakdown(params, budget.breakdown))


UNDER_LOAD = " Measured under load: not a verdict (rerun on a quiet machine)."


def under_load(out: Outcome) -> bool:
    """In some turn, processes outside the benchmark used more than OTHER_CPUS_LIMIT CPUs."""
    return max(r.other for r in [*out.train, *out.sample]) > OTHER_CPUS_LIMIT


def best(runs: list[Any], side: str, key: str) -> Any:
    return max((r for r in runs if r.side == side), key=lambda r: getattr(r, key))


def command(args: argparse.Namespace) -> str:
    return (
        f"python -m benchmarks.peer --steps {args.steps} --samples {args.samples} "
        f"--sample-stride {args.sample_stride} --repeats {args.repeats} "
        f"--fid-reference {args.fid_reference} --breakdown-steps {args.breakdown_steps}"
        + f" --ours {' '.join(args.ours)}"
    )


def curve_gap(losses: tuple[float, ...], reference: tuple[float, ...]) -> float:
    """The largest |loss - reference loss| / reference loss over the log points (the same
    points: one budget)."""
    pairs = zip(losses, reference, strict=True)
    return max((abs(a - b) / abs(b) for a, b in pairs), default=math.nan)


def to_markdown(out: Outcome, args: argparse.Namespace, start_load: str) -> str:
    budget = budget_of(args)
    params = bench_params(Path("."), budget)
    cfg, s = params.train, params.sample
    sides = [side_name(e) for e in budget.ours]
    t_best = {side: best(out.train, side, "steady") for side in [*sides, PEER]}
    s_best = {side: best(out.sample, side, "rate") for side in [*sides, PEER]}
    t_peer, s_peer = t_best[PEER], s_best[PEER]
    steps = params.diffusion.T // s.stride
    full = args.steps == 1500 and args.samples == 256 and args.sample_stride == 1
    lines = [
        "# The default run vs diffusers' DDPM recipe (same data, shape, budget, machine)",
        "",
        f"`{command(args)}` ({'the default budget' if full else 'a REDUCED budget'}): "
        f"{cfg.steps} training steps of {cfg.batch_size}, {s.num_images} samples of {steps} "
        f"reverse steps, FID against {args.fid_reference} `{params.evaluate.fid.reference}` "
        f"images. Machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), torch "
        f"{torch.__version__}, ray {ray.__version__}. Load average at the start: {start_load}. "
        "'other CPUs' is what processes outside the benchmark's own process tree used during "
        f"the turn (MEASURED UNDER LOAD when any turn exceeds {OTHER_CPUS_LIMIT}: the CPUs were "
        "shared with other jobs); 'load' is the load average after the turn, which counts the "
        "benchmark's own processes. Best of the repeats.",
        "",
        "| side | train steady images/s | train session images/s | train wall s | other CPUs "
        "| load | sample images/s | sample wall s | other CPUs | load | FID |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for side in [*sides, PEER]:
        t, sm = t_best[side], s_best[side]
        lines.append(
            f"| {side} | {t.steady:.1f} | {t.session:.1f} | {t.wall:.1f} | {t.other:.2f} | "
            f"{t.load} | {sm.rate:.3f} | {sm.wall:.1f} | {sm.other:.2f} | {sm.load} | "
            f"{out.fid[side]:.2f} |"
        )
    lines.append("")
    for e, side in zip(budget.ours, sides, strict=True):
        r_train, r_sample = t_best[side].steady / t_peer.steady, s_best[side].rate / s_peer.rate
        lines.append(
            f"Ratio ours (`{e}`) / peer: training {r_train:.2f}x (steady; session "
            f"{t_best[side].session / t_peer.session:.2f}x), sampling {r_sample:.2f}x. Target "
            f">= {TARGET}x each: training {'met' if r_train >= TARGET else 'NOT met'}, "
            f"sampling {'met' if r_sample >= TARGET else 'NOT met'}."
            + (UNDER_LOAD if under_load(out) else "")
        )
    lines += ["", *execution_lines(budget, params), ""]
    lines.append(
        "Losses at the log points (ours = mean over the window, peer = the last batch): "
        + "; ".join(f"{side}: {fmt_losses(t_best[side].losses)}" for side in [*sides, PEER])
        + "."
    )
    if "profile" in budget.ours:
        ref = t_best[OURS].losses
        for e, side in zip(budget.ours, sides, strict=True):
            if e != "profile":
                lines.append(
                    f"The loss curve of `{e}` differs from the profile's by at most "
                    f"{100 * curve_gap(t_best[side].losses, ref):.2f}% at a log point (same "
                    "data order, t and eps; other rounding)."
                )
    return "\n".join([*lines, "", *breakdown_lines(out.parts, args.breakdown_steps)])


def execution_lines(budget: Budget, params: Params) -> list[str]:
    """What each side ran."""
    cfg, s = params.train, params.sample
    return [
        f"Ours: training = `stages.train.train` ({cfg.num_workers} Ray Train worker x "
        f"{cfg.cpus_per_worker:g} CPUs, MLflow, checkpoints every {cfg.checkpoint_every}, "
        "sample grids, export); its steady rate is rank 0's logged windows after the first, "
        "which include checkpoints and grids; wall includes Ray start-up and export. Sampling = "
        f"`sample_to_shards` ({s.num_workers} actors x {s.cpus_per_worker:g} CPU, batch "
        f"{s.batch_size}), wall incl. Ray and actor start-up. Executions: "
        + "; ".join(
            f"`{e}` = "
            + (
                ", ".join(f"`{k}: {v}`" for k, v in EXECUTIONS[e].items())
                or "the profile as it is (eager fp32: the default run's numbers)"
            )
            for e in budget.ours
        )
        + ".",
        "Peer: `UNet2DModel` + `DDPMScheduler` + Adam/warm-up/clipping/`EMAModel(foreach=True)` "
        "in a plain loop on in-memory tensors (no checkpoints), sampling `DDPMPipeline` in this "
        "process, under glibc's default heap thresholds (our Ray workers set theirs: "
        "`pipelines.infra.device.keep_freed_memory`). FID of "
        f"{s.num_images} samples each: differences of a few points are within the noise of so "
        "few images.",
    ]


def fmt_losses(losses: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.4f}" for v in losses[-3:]) + " (last 3)"


def budget_of(args: argparse.Namespace) -> Budget:
    return Budget(
        args.steps,
        args.samples,
        args.sample_stride,
        args.repeats,
        args.fid_reference,
        args.breakdown_steps,
        tuple(args.ours),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=1500, help="training steps (default profile)")
    p.add_argument("--samples", type=int, default=256, help="images each side samples")
    p.add_argument("--sample-stride", type=int, default=1, help="T / stride reverse steps")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--fid-reference", type=int, default=500, help="reference images for FID")
    p.add_argument("--breakdown-steps", type=int, default=10, help="steps of the CPU breakdown")
    p.add_argument(
        "--ours",
        nargs="+",
        choices=tuple(EXECUTIONS),
        default=["profile", "bf16"],
        help="how our stages run the network, one run each (profile: the default eager fp32)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if min(vars(args)[k] for k in ("steps", "samples", "sample_stride", "repeats")) < 1:
        p.error("--steps, --samples, --sample-stride, --repeats must be >= 1")
    if min(args.fid_reference, args.breakdown_steps) < 1:
        p.error("--fid-reference, --breakdown-steps must be >= 1")
    if len(set(args.ours)) != len(args.ours):
        p.error(f"--ours: each execution once, got {args.ours}")
    start_load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        out = run(Path(tmp), budget_of(args))
    text = to_markdown(out, args, start_load)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
