"""Training throughput (images/s): the real Ray Train path at 1 and 2 workers vs a plain loop,
and where the difference goes.

    python -m benchmarks.train_overhead [--steps 200] [--batch-size 64] [--threads 2] [--repeats 2]

Digits shards (params.yaml's data section: 16x16x1) and the default-profile U-Net (ch 32). The
plain loop is `make_state`, `train_batches`, `draw_t_noise` and `train_step` (Adam, clipping,
EMA) exactly as a worker's `_Loop.run`, with `--threads` torch threads and the worker's process
switches, but no logging, checkpoints or MLflow. It runs in four hosts, each a fresh process:
its main thread; a second thread of it (Ray Train runs the training function in one); that
thread again while a local Ray cluster runs a Train run that does nothing (what Ray's own
processes cost a loop on the same CPUs); and a Ray Train worker (a TorchTrainer whose function
is the plain loop). The stage rows call `pipelines.train.stage.run_train` (TorchTrainer, MLflow
logging, a checkpoint at the last step) on a fresh local Ray cluster per run: 1 worker with
`--threads` CPUs, or 2 workers with 1 CPU each (DDP over gloo), same global batch. Consecutive
rows of the 1-worker path split the stage's overhead into the thread, Ray's processes beside
the loop, hosting it in the worker, and the stage's own loop. Two more main-thread rows each
leave out one of the workers' switches (glibc's heap thresholds, `keep_freed_memory`; for-each
Adam), so the speed each one gives is measured too. The last plain row is the loop as two
processes of one thread each (DDP over gloo, half the batch each, no Ray): the fastest layout
of this per-step work on the machine's CPUs, the ceiling for any host. "Steady" images/s leave out
the first `--log-every` steps (start-up, shard read, allocator warm-up): for the stage from rank
0's logged window rates, for the plain loop from its own step clock. "Session" images/s are what
a worker reports at its checkpoint (all steps of the session); the plain loop is measured the
same way.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import multiprocessing
import os
import platform
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist
import yaml
from mlflow.tracking import MlflowClient
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch.nn.parallel import DistributedDataParallel

from benchmarks.report import load_average, write_result
from ddpm_core.rng import SeedPurpose, mix_seed
from pipelines.artifacts.shard_stream import train_batches
from pipelines.config import Params, from_dict
from pipelines.data.stage import build_shards
from pipelines.infra.device import configure_backends
from pipelines.infra.lifecycle import run_tracked
from pipelines.infra.ray import init_ray
from pipelines.train.run import open_train_run, plan_run
from pipelines.train.stage import run_train
from pipelines.train.step import (
    ADAM_BETAS,
    ADAM_EPS,
    TrainState,
    draw_t_noise,
    make_state,
    prepare_model,
    train_step,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_overhead.md"
TARGET_OVERHEAD = 0.10  # Ray Train at 1 worker should cost < 10% of the plain loop's throughput
PLAIN = "plain loop, main thread (no Ray)"
PLAIN_THREAD = "plain loop, second thread (no Ray)"
PLAIN_BESIDE = "plain loop, second thread, beside an idle Ray Train run"
PLAIN_RAY = "plain loop in a Ray Train worker"
RAY = "train stage (`run_train`)"
# the main-thread loop without one of the workers' process switches (`plain_loop`'s keywords)
PLAIN_GLIBC_HEAP = "plain loop, main thread, glibc's default heap thresholds"
PLAIN_PER_PARAMETER_ADAM = "plain loop, main thread, per-parameter Adam (torch's CPU default)"
PLAIN_DDP = "plain loop, 2 processes x 1 thread (DDP over gloo, no Ray)"
WITHOUT_SWITCH = {
    PLAIN_GLIBC_HEAP: {"keep_freed_memory": False},
    PLAIN_PER_PARAMETER_ADAM: {"foreach_adam": False},
}
# the 1-worker path: each host adds one thing to the one before it
ONE_WORKER_PATH = (PLAIN, PLAIN_THREAD, PLAIN_BESIDE, PLAIN_RAY, RAY)


@dataclass(frozen=True)
class Measurement:
    path: str
    workers: int
    threads: int  # torch intra-op threads per worker
    steady: float  # images/s without the first log window
    session: float  # images/s over the whole session (what a worker reports)
    wall: float  # seconds; Ray rows include cluster start-up and the end-of-training grid
    steady_is_session: bool = False  # too few log windows: steady falls back to session


@dataclass(frozen=True)
class Setup:
    root: Path
    steps: int
    batch_size: int
    log_every: int
    threads: int


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        raw = raw[p]
    raw[last] = value


def bench_params(setup: Setup, workers: int, cpus_per_worker: float, storage: str) -> Params:
    """params.yaml with every path under `setup.root` (shards shared, `storage` per run)."""
    raw: dict[str, Any] = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    overrides = {
        "train.steps": setup.steps,
        "train.batch_size": setup.batch_size,
        "train.checkpoint_every": setup.steps,
        "train.sample_every": 0,
        "train.log_every": setup.log_every,
        "train.num_workers": workers,
        "train.cpus_per_worker": cpus_per_worker,
        "train.max_failures": 0,  # a retried attempt would distort the timing: fail instead
        "ray.num_cpus": max(2, setup.threads),
    }
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    raw["paths"] = {k: str(setup.root / v) for k, v in raw["paths"].items()}
    raw["paths"]["ray_storage"] = str(setup.root / storage)
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{setup.root / 'mlflow.db'}"
    return from_dict(Params, raw)


def threads_per_worker(setup: Setup, workers: int) -> int:
    """Torch threads of each of `workers` processes: `--threads` for one, one each for more."""
    return setup.threads if workers == 1 else 1


def prepare(params: Params) -> None:
    """Digits shards once, and the MLflow schema, so no timed run pays for creating them."""
    build_shards(params.data, params.seed, Path(params.paths.shards))
    assert params.mlflow.tracking_uri is not None
    MlflowClient(params.mlflow.tracking_uri).search_experiments()


def steady_rate(marks: list[float], skip: int, batch_size: int) -> float | None:
    """Images/s between the end of step `skip` and the last step (None if too few steps)."""
    if skip < 1 or len(marks) <= skip:
        return None
    return (len(marks) - skip) * batch_size / (marks[-1] - marks[skip - 1])


def step_clock(params: Params, state: TrainState, batches: Iterator[torch.Tensor]) -> list[float]:
    """Run the remaining steps; the clock time after each one."""
    cfg, cpu = params.train, torch.device("cpu")
    marks: list[float] = []
    while state.step < cfg.steps:
        x0 = next(batches).to(cpu)  # (B, C, H, W)
        shape, num_t = tuple(x0.shape), state.diffusion.num_timesteps
        t, noise = draw_t_noise(state.generator, shape, num_t)
        train_step(state, x0, t, noise, cfg)
        if state.step % cfg.log_every == 0:
            state.read_stats(1)  # the worker's one host sync per log window
        marks.append(time.perf_counter())
    return marks


def plain_loop(
    setup: Setup,
    path: str = PLAIN,
    keep_freed_memory: bool = True,
    foreach_adam: bool = True,
    rank: int = 0,
    world: int = 1,
) -> Measurement:
    """`_Loop.run`'s per-step work in the calling thread: batch, t/eps draw, train_step (incl.
    EMA), with the worker's threads and process switches (`configure_backends`: glibc's heap
    thresholds, unless `keep_freed_memory` is False) and its for-each Adam (unless
    `foreach_adam` is False: torch's CPU default, a loop over parameters). With `world` > 1 it
    is rank `rank` of a DDP group this process has joined: 1 thread, its share of the batch."""
    threads = threads_per_worker(setup, world)
    params = bench_params(setup, world, float(threads), "ray-unused")
    cfg = params.train
    torch.set_num_threads(threads)
    if keep_freed_memory:  # process-wide and irreversible: only in a fresh process without it
        configure_backends(torch.device("cpu"))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # dropout seeded per rank, as in the worker
        torch.manual_seed(mix_seed(params.seed, world, rank, SeedPurpose.DROPOUT))
        state = make_state(params, torch.device("cpu"), rank, world)
        if world > 1:
            prepare_model(state, False, DistributedDataParallel)
        if not foreach_adam:
            state.optimizer = torch.optim.Adam(
                state.params, lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False
            )
        session_start = time.perf_counter()
        batches = train_batches(
            params.paths.shards,
            "train",
            cfg.batch_size // world,
            rank,
            world,
            params.seed,
            params.data.random_flip,
            shuffle_buffer=cfg.shuffle_buffer,
            loader_workers=cfg.loader_workers,
            prefetch=cfg.prefetch,
            cache_bytes=cfg.cache_bytes,
        )
        marks = step_clock(params, state, batches)
    wall = time.perf_counter() - start
    if world > 1 and not ranks_agree(state.raw):  # after the clock: not part of the loop's time
        raise RuntimeError(f"rank {rank}: the DDP ranks' weights differ after {cfg.steps} steps")
    session = cfg.steps * cfg.batch_size / (marks[-1] - session_start)
    steady = steady_rate(marks, setup.log_every, cfg.batch_size)
    return Measurement(path, world, threads, steady or session, session, wall, steady is None)


def ranks_agree(model: torch.nn.Module) -> bool:
    """Every rank of the process group holds the same weights (DDP kept them in step)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return torch.equal(low, high)


def in_second_thread(fn: Callable[[], Measurement]) -> Measurement:
    """`fn()` in a new thread of this process (its main thread runs no torch meanwhile); an
    error in it is raised here."""
    out: list[Measurement | BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 -- handed to the caller below
            out.append(e)

    worker = threading.Thread(target=body, name="plain-loop")
    worker.start()
    worker.join()
    if isinstance(out[0], BaseException):
        raise RuntimeError("the plain loop's thread failed") from out[0]
    return out[0]


def plain_host(setup: Setup, path: str) -> Measurement:
    """The plain loop in a fresh process (no OpenMP pool or heap from earlier runs), in its
    main thread (PLAIN, or without a switch: WITHOUT_SWITCH) or a second one (PLAIN_THREAD)."""
    if path == PLAIN_THREAD:
        return in_second_thread(functools.partial(plain_loop, setup, PLAIN_THREAD))
    return plain_loop(setup, path, **WITHOUT_SWITCH.get(path, {}))


def ddp_rank(setup: Setup, rank: int, port: int) -> Measurement:
    """Rank `rank` of PLAIN_DDP's 2-process gloo group on this machine."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        return plain_loop(setup, PLAIN_DDP, rank=rank, world=2)
    finally:
        dist.destroy_process_group()


def plain_ddp(setup: Setup) -> Measurement:
    """PLAIN_DDP: the plain loop in two fresh processes of one thread each; rank 0's figures
    (the ranks step together: DDP's all-reduce is a barrier every step)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        ranks = [pool.submit(ddp_rank, setup, rank, port) for rank in (0, 1)]
        return [r.result() for r in ranks][0]


def in_fresh_process(setup: Setup, path: str) -> Measurement:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(plain_host, setup, path).result()


def plain_train_fn(config: dict[str, Any]) -> None:
    """A Ray Train worker's training function that is only the plain loop (Ray Train runs it in
    a thread of the worker actor, as it runs the stage's); its Measurement goes to a file."""
    measured = plain_loop(config["setup"], PLAIN_RAY)
    Path(config["out"]).write_text(json.dumps(measured.__dict__))


@contextlib.contextmanager
def local_cluster(params: Params) -> Iterator[None]:
    """A fresh local Ray cluster as the stages start it (`init_ray`), shut down after; a cluster
    the caller already connected (tests) is left as it was."""
    owned = not ray.is_initialized()
    init_ray(params.ray)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()


def one_worker_trainer(
    setup: Setup,
    storage: str,
    fn: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    cpus: float,
) -> TorchTrainer:
    """A 1-worker TorchTrainer of `fn(config)` with `cpus` CPUs, its run under
    `setup.root / storage`."""
    return TorchTrainer(
        fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(storage_path=str(setup.root / storage), name=fn.__name__),
    )


def idle_train_fn(config: dict[str, Any]) -> None:
    """A Ray Train worker's training function that does no work: it marks that it started,
    then waits (polling twice a second) until the file `config["stop"]` exists."""
    Path(config["started"]).touch()
    while not Path(config["stop"]).exists():
        time.sleep(0.5)


def plain_beside_ray(setup: Setup, storage: str, timeout: float = 120.0) -> Measurement:
    """The second-thread plain loop in a fresh process, while a local cluster runs a 1-worker
    TorchTrainer that does nothing (0.1 CPU): what Ray's own processes (GCS, raylet, dashboard,
    the Train controller and its helper actors) cost a loop they do not host."""
    started, stop = setup.root / f"{storage}.started", setup.root / f"{storage}.stop"
    config = {"started": str(started), "stop": str(stop)}
    trainer = one_worker_trainer(setup, storage, idle_train_fn, config, cpus=0.1)
    with local_cluster(bench_params(setup, 1, float(setup.threads), storage)):
        run = threading.Thread(target=trainer.fit, name="idle-train-run")
        run.start()
        try:
            deadline = time.monotonic() + timeout
            while not started.exists():
                if time.monotonic() > deadline or not run.is_alive():
                    raise RuntimeError(f"the idle Ray Train run did not start in {timeout:.0f} s")
                time.sleep(0.5)
            measured = in_fresh_process(setup, PLAIN_THREAD)
        finally:
            stop.touch()
            run.join()
    return replace(measured, path=PLAIN_BESIDE)


def plain_in_ray_worker(setup: Setup, storage: str) -> Measurement:
    """The plain loop as the training function of a 1-worker TorchTrainer on a fresh cluster."""
    out = setup.root / f"{storage}.json"
    config = {"setup": setup, "out": str(out)}
    trainer = one_worker_trainer(setup, storage, plain_train_fn, config, cpus=setup.threads)
    with local_cluster(bench_params(setup, 1, float(setup.threads), storage)):
        trainer.fit()
    return Measurement(**json.loads(out.read_text()))


def window_rate(client: MlflowClient, run_id: str, batch_size: int, skip: int) -> float | None:
    """Images/s over rank 0's logged windows after step `skip` (MLflow `images_per_s`)."""
    history = client.get_metric_history(run_id, "images_per_s")
    points = sorted((m.step, m.value) for m in history)
    images = seconds = 0.0
    prev = 0
    for step, rate in points:
        if prev >= skip:
            images += (step - prev) * batch_size
            seconds += (step - prev) * batch_size / rate
        prev = step
    return images / seconds if seconds > 0 else None


def ray_train(setup: Setup, workers: int, storage: str) -> Measurement:
    """The train stage (`run_train`) on a fresh local cluster; wall time includes `ray.init`."""
    threads = threads_per_worker(setup, workers)
    params = bench_params(setup, workers, float(threads), storage)
    start = time.perf_counter()
    with local_cluster(params):
        plan = plan_run(params, setup.root)
        tracker = open_train_run(params, setup.root, plan)
        body = functools.partial(run_train, plan=plan)
        result = run_tracked(params, setup.root, "train", tracker, body)
        wall = time.perf_counter() - start
    session = result.images_per_s
    steady = window_rate(tracker.client, tracker.run_id, setup.batch_size, setup.log_every)
    return Measurement(RAY, workers, threads, steady or session, session, wall, steady is None)


def run(setup: Setup, repeats: int) -> list[Measurement]:
    """Best (highest steady images/s) of `repeats` interleaved rounds: the CPUs are shared."""
    best: dict[tuple[str, int], Measurement] = {}

    def keep(m: Measurement) -> None:
        key = (m.path, m.workers)
        if key not in best or m.steady > best[key].steady:
            best[key] = m

    prepare(bench_params(setup, 1, float(setup.threads), "ray-unused"))
    for rep in range(repeats):
        for path in (PLAIN, *WITHOUT_SWITCH, PLAIN_THREAD):
            keep(in_fresh_process(setup, path))
        keep(plain_ddp(setup))
        keep(plain_beside_ray(setup, f"idle-ray-r{rep}"))
        keep(plain_in_ray_worker(setup, f"plain-ray-r{rep}"))
        for workers in (1, 2):
            keep(ray_train(setup, workers, f"ray-{workers}w-r{rep}"))
    order = {path: i for i, path in enumerate((*ONE_WORKER_PATH, *WITHOUT_SWITCH, PLAIN_DDP))}
    return sorted(best.values(), key=lambda m: (order[m.path], m.workers))


def command(args: argparse.Namespace) -> str:
    return (
        f"python -m benchmarks.train_overhead --steps {args.steps} --batch-size {args.batch_size} "
        f"--threads {args.threads} --log-every {args.log_every} --repeats {args.repeats}"
    )


def overhead(m: Measurement, plain: Measurement) -> float:
    return 1.0 - m.steady / plain.steady


def verdict(rows: list[Measurement], plain: Measurement) -> str:
    one = next((m for m in rows if m.path == RAY and m.workers == 1), None)  # the stage
    if one is None:
        return ""
    ok = overhead(one, plain) < TARGET_OVERHEAD
    return f" Measured: {100 * overhead(one, plain):.1f}% ({'met' if ok else 'NOT met'})."


STEP_NAMES = {  # what each host of the 1-worker path adds to the one before it
    PLAIN_THREAD: "running in a second thread",
    PLAIN_BESIDE: "Ray's processes and an idle Train run beside it",
    PLAIN_RAY: "running inside the Ray Train worker instead",
    RAY: "the stage's loop around the step (`_Loop`: cadence, loss windows, MLflow)",
}


def breakdown(rows: list[Measurement]) -> str:
    """The 1-worker path host by host: the change in steady images/s each one makes."""
    one = {m.path: m for m in rows if m.workers == 1}
    hosts = [path for path in ONE_WORKER_PATH if path in one]
    parts = [
        f"{STEP_NAMES[path]} {100 * (one[path].steady / one[prev].steady - 1):+.1f}%"
        for prev, path in zip(hosts, hosts[1:], strict=False)
    ]
    text = "Host by host (1 worker, steady images/s vs the row before): " + "; ".join(parts) + "."
    switches = [
        f"{path.split(', ')[-1]} {100 * (one[path].steady / one[PLAIN].steady - 1):+.1f}%"
        for path in WITHOUT_SWITCH
        if path in one and PLAIN in one
    ]
    if switches:
        text += (
            " The main-thread loop without one of the workers' switches: "
            + "; ".join(switches)
            + "."
        )
    return text + ceiling(rows)


def ceiling(rows: list[Measurement]) -> str:
    """PLAIN_DDP against the main-thread loop, and the 2-worker stage against PLAIN_DDP."""
    ddp = next((m for m in rows if m.path == PLAIN_DDP), None)
    plain = next((m for m in rows if m.path == PLAIN), None)
    if ddp is None or plain is None:
        return ""
    text = (
        f" The loop as 2 processes x 1 thread without Ray (the fastest layout here): "
        f"{ddp.steady:.1f} images/s, {100 * (ddp.steady / plain.steady - 1):+.1f}% vs the "
        "main-thread loop"
    )
    two = next((m for m in rows if m.path == RAY and m.workers == 2), None)
    if two is not None:
        text += f"; the stage at 2 workers x 1 thread {100 * (two.steady / ddp.steady - 1):+.1f}%"
    return text + "."


def footnote(rows: list[Measurement]) -> str:
    if any(m.steady_is_session for m in rows):
        return " \\* too few log windows after the warm-up: steady = session."
    return ""


def to_markdown(rows: list[Measurement], args: argparse.Namespace, load: str) -> str:
    plain = next(m for m in rows if m.path == PLAIN)
    lines = [
        "# Training throughput: the Ray Train stage vs a plain loop",
        "",
        f"`{command(args)}` (best of the repeats by steady images/s, interleaved): digits shards "
        f"(16x16x1), default-profile U-Net (ch 32, (1,2,2), dropout 0.1), global batch "
        f"{args.batch_size}, {args.steps} steps, fp32 on CPU. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}; load average "
        f"before the run: {load} (the CPUs are shared with other jobs, so figures vary).",
        "",
        "| path | workers | threads/worker | steady images/s | wall s | overhead vs plain "
        "| session images/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        star = "\\*" if m.steady_is_session else ""
        lines.append(
            f"| {m.path} | {m.workers} | {m.threads} | {m.steady:.1f}{star} | {m.wall:.1f} | "
            f"{100 * overhead(m, plain):.1f}% | {m.session:.1f} |"
        )
    lines += [
        "",
        f"Target: Ray overhead < {100 * TARGET_OVERHEAD:.0f}% at 1 worker (overhead = 1 - the "
        "stage's steady images/s / the main-thread plain loop's; negative = faster)."
        + verdict(rows, plain),
        "",
        breakdown(rows),
        "",
        f"Steady = steps {args.log_every + 1}..{args.steps} (stage: rank 0's logged window "
        "rates, which include its MLflow metric writes; plain loop: its step clock). Session = "
        "all steps incl. the shard read and warm-up (stage: `TrainResult.images_per_s`). Wall s: "
        "plain loop = state + steps; stage = `ray.init` + `run_train` (validation, MLflow run, "
        "worker start-up, DDP set-up, the final checkpoint and the end-of-training sample grid "
        "of 16 images). Each plain-loop row runs in a fresh process (the Ray Train row in a "
        "fresh cluster's worker). 2 workers: 1 CPU and 1 thread each, global batch split in "
        "halves. Ray's workers run at nice 0 (`pipelines.infra.ray.WORKER_NICENESS`, as the "
        "stages start Ray; Ray's default is 15), the plain loop at the caller's priority."
        + footnote(rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over workers)")
    p.add_argument("--threads", type=int, default=2, help="torch threads: plain loop, 1 worker")
    p.add_argument("--log-every", type=int, default=50, help="also the warm-up steps left out")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.batch_size % 2:
        p.error("--batch-size must be even (2 workers split it in halves)")
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(Path(tmp), args.steps, args.batch_size, args.log_every, args.threads)
        rows = run(setup, args.repeats)
    text = to_markdown(rows, args, load)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
