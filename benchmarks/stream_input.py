"""The streamed training input (`artifacts.shard_stream`): images/s per decode core, flat memory.

    python -m benchmarks.stream_input [--small 5000] [--large 400] [--rounds 3] [--rss 1000 50000]

Writes random RGB PNG shards into a temporary folder (random pixels: the worst case for PNG),
then times `train_batches` of one rank at 32x32 and 256x256 with 0, 1 and 2 loader workers, each
run in a fresh process (steady state, after the first batch, which includes starting the
workers), the configurations alternated over `--rounds` rounds (the machine is shared: the
median and the range are reported with the load average). Per decode core is given two ways:
images/s over the decode processes (wall clock), and images per CPU-second of the decode
processes (the training process in-process, the loader workers otherwise: the figure the
load of other jobs does not change). Beside it the PNG decoding alone, and what a 16-core
node with 8 ranks needs at the paper's 256^2 batch. Last, one rank in a fresh process streaming
400 batches of 128 from splits of 1k and of 50k 32x32 images under glibc's default settings,
reporting its peak RSS (flat: the growth should stay under 5% of the decoded dataset), and the
same with the split cached in memory for contrast.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from benchmarks.report import load_average, write_result
from pipelines.artifacts.shard_stream import train_batches
from pipelines.artifacts.shards import SourceData, Split, write_shards
from pipelines.artifacts.tars import decode_png, encode_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "stream_input.md"
SHARD_SIZE = 1000
TARGETS = {32: 5000, 256: 250}  # issues 19 and 31: images/s per decode core
WORKERS = (0, 1, 2)
# The paper's 256^2 runs (App. B): global batch 64; the step rate a GPU node aims at (issue 31).
PAPER_BATCH, TARGET_STEPS, RANKS, NODE_CORES = 64, 2.5, 8, 16
# Draws per RSS run: the same for every split size (51,200 images: an epoch of 50k, 51 of 1k),
# so the split size is the only variable.
RSS_BATCHES = 400


def write_random(root: Path, n: int, res: int, seed: int = 0) -> Path:
    """`n` random RGB (3, res, res) images as a train split of shards of SHARD_SIZE."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, res, res), dtype=np.uint8)
    data = SourceData({"train": Split(images, np.zeros(n, dtype=np.int64))}, ["x"], "random")
    write_shards(data, root, min(SHARD_SIZE, n), {}, "random")
    return root


def decode_rate(res: int, count: int) -> float:
    """Images/s of PNG decoding alone (one thread, random-pixel PNG bytes in memory)."""
    rng = np.random.default_rng(1)
    blobs = [encode_png(rng.integers(0, 256, (3, res, res), dtype=np.uint8)) for _ in range(8)]
    start = time.perf_counter()
    for i in range(count):
        decode_png(blobs[i % len(blobs)])
    return count / (time.perf_counter() - start)


def child_rate(root: Path, batch: int, batches: int, workers: int) -> dict[str, float]:
    """Rank 0 of 1 streaming `root` in this process: seconds to the first batch, steady
    images/s, and the CPU-seconds of this process and of its loader workers while steady."""
    torch.set_num_threads(1)  # one core for the training process; the workers use the others
    start = time.perf_counter()
    stream = train_batches(
        root, "train", batch, 0, 1, 0, True, shuffle_buffer=10_000, loader_workers=workers,
        prefetch=4,
    )  # fmt: skip
    next(stream)
    first = time.perf_counter() - start
    workers_cpu0 = children_cpu()
    own0 = time.process_time()
    start = time.perf_counter()
    for _ in itertools.islice(stream, batches):
        pass
    wall = time.perf_counter() - start
    own = time.process_time() - own0
    kids = children_cpu() - workers_cpu0  # the steady window: the pipeline full at both ends
    stream.close()
    return {"first": first, "rate": batch * batches / wall, "own_cpu": own, "worker_cpu": kids,
            "images": batch * batches}  # fmt: skip


def children_cpu() -> float:
    """CPU-seconds (user + system) of this process's live children (the loader workers)."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def run_child(args: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.stream_input", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def per_core_cpu(r: dict[str, float], workers: int) -> float:
    """Images per CPU-second of the decode processes (the workers, or this one in-process),
    over the steady window (from the first batch to the last)."""
    cpu = r["worker_cpu"] if workers else r["own_cpu"]
    return r["images"] / cpu if cpu > 0 else float("nan")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def run_rates(tmp: Path, small: int, large: int, rounds: int) -> tuple[list[str], dict[int, float]]:
    """Table rows, and the median CPU-based images/s per decode core at 256^2 by worker count."""
    rows, per_core_256 = [], {}
    for res, n, batch, batches in ((32, small, 128, small // 128 - 2), (256, large, 16, 16)):
        root = write_random(tmp / f"rate{res}", n, res)
        decode = decode_rate(res, 2000 if res == 32 else 100)
        rows.append(f"| {res}² | PNG decode alone (1 thread) | – | {decode:,.0f} | – | – | – |")
        runs: dict[int, list[dict[str, float]]] = {w: [] for w in WORKERS}
        for k in range(rounds):  # alternated: 0 1 2, 2 1 0, 0 1 2, ...
            for w in WORKERS if k % 2 == 0 else WORKERS[::-1]:
                args = ["--child-rate", str(root), str(batch), str(batches), str(w)]
                runs[w].append(run_child(args))
        for w in WORKERS:
            rs = runs[w]
            cores = min(max(w, 1), os.cpu_count() or 1)
            rates = [r["rate"] for r in rs]
            cpu_rates = [per_core_cpu(r, w) for r in rs]
            parent = [r["images"] / r["own_cpu"] for r in rs] if w else []
            first = statistics.median(r["first"] for r in rs)
            rows.append(
                f"| {res}² | loader_workers={w} (B={batch}) | {first:.2f} | {spread(rates)} | "
                f"{spread([x / cores for x in rates])} | {spread(cpu_rates)} | "
                f"{spread(parent) if parent else '(same process)'} |"
            )
            if res == 256:
                per_core_256[w] = statistics.median(cpu_rates)
    return rows, per_core_256


def node_lines(per_core: dict[int, float]) -> list[str]:
    """What 8 ranks on a 16-core node need at the paper's 256^2 batch, from the measured rate."""
    rate = min(v for w, v in per_core.items() if w) if any(per_core) else float("nan")
    lines = []
    for label, images in (
        (f"global batch {PAPER_BATCH} (the paper's App. B, 8 images per rank)", PAPER_BATCH),
        (f"{PAPER_BATCH} images per rank ({RANKS * PAPER_BATCH} per step)", RANKS * PAPER_BATCH),
    ):
        need = images * TARGET_STEPS
        cores = need / rate
        lines.append(
            f"- {label} at {TARGET_STEPS} steps/s: {need:,.0f} images/s per node, "
            f"{need / RANKS:,.0f} per rank; at the slowest measured {rate:,.0f} images per "
            f"decode core-second (256², with workers) that is {cores:.1f} of the node's "
            f"{NODE_CORES} cores ({cores / RANKS:.2f} per rank), 1 loader worker per rank "
            f"{'suffices' if cores / RANKS <= 1 else 'does not suffice'}."
        )
    return lines


def child_peak_rss(root: Path, cache_bytes: int) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of a fresh process streaming RSS_BATCHES from `root` (rank 0/1),
    under glibc's default malloc settings (no MALLOC_* variables)."""
    cmd = [sys.executable, "-m", "benchmarks.stream_input", "--child", str(root)]
    cmd += ["--cache-bytes", str(cache_bytes)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env).stdout
    rss_kib, seconds = out.split()[-2:]
    return int(rss_kib) / 1024, float(seconds)


def child(root: Path, cache_bytes: int) -> None:
    """Stream RSS_BATCHES batches of 128 in this process and print `peak_rss_kib seconds`."""
    torch.set_num_threads(1)
    reset_peak_rss()  # the peak of streaming, not of importing torch
    batch = 128
    start = time.perf_counter()
    stream = train_batches(
        root, "train", batch, 0, 1, 0, True, shuffle_buffer=10_000, cache_bytes=cache_bytes
    )
    for _ in itertools.islice(stream, RSS_BATCHES):
        pass
    print(peak_rss_kib(), time.perf_counter() - start)


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (Linux: clear_refs 5), where supported."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_kib() -> int:
    """VmHWM (since the reset) from /proc, else ru_maxrss (since the start), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_rss(tmp: Path, sizes: list[int]) -> list[str]:
    rows, peaks = [], {}
    for n in sizes:
        root = write_random(tmp / f"rss{n}", n, 32)
        for cache in (0, 1 << 40):
            peak, seconds = child_peak_rss(root, cache)
            peaks[n, cache] = peak
            mode = "cached (cache_bytes >= split)" if cache else "streamed (cache_bytes 0)"
            rows.append(f"| {n:,} | {mode} | {peak:,.1f} | {seconds:.1f} |")
    lo, hi = sizes[0], sizes[-1]
    decoded = (hi - lo) * 3 * 32 * 32 / 2**20
    growth = peaks[hi, 0] - peaks[lo, 0]
    cached = peaks[hi, 1 << 40] - peaks[lo, 1 << 40]
    rows += [
        "",
        f"Streamed growth from {lo:,} to {hi:,} images, glibc's default malloc: {growth:+.1f} MiB "
        f"= {100 * growth / decoded:.1f}% of the {decoded:.0f} MiB more decoded pixels "
        "(target < 5%).",
        "",
        f"Cached, for contrast: {cached:+.1f} MiB.",
    ]
    return rows


def markdown(rates: list[str], node: list[str], rss: list[str], load: tuple[str, str]) -> str:
    lines = [
        "# Streamed training input (`pipelines/artifacts/shard_stream.py`)",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), shared with other jobs: "
        f"measured under load (load average {load[0]} at the start, {load[1]} at the end); "
        f"Python {platform.python_version()}, torch {torch.__version__}. Random RGB PNG "
        f"shards of up to {SHARD_SIZE} images (incompressible pixels: the slowest PNGs), "
        "shuffle buffer 10,000, random flip on, prefetch 4 batches per worker. Each cell: "
        "the median (min-max) over runs in fresh processes, configurations alternated.",
        "",
        "## Images/s of one rank",
        "",
        "| size | input | s to 1st batch | images/s | per decode core (wall) | "
        "per decode core-second (CPU) | training process, images per CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rates,
        "",
        "Per decode core (wall) divides by min(max(workers, 1), CPUs); on 2 shared cores the "
        "training process and other jobs compete with the workers, so the wall figure is the "
        "load's as much as the input's. Per decode core-second counts the CPU time of the "
        "decode processes (in-process: the one process, which also converts to [-1, 1]); the "
        "last column is what the training process spends per image beside its workers "
        "(taking the slot, the [-1, 1] conversion into a fresh mapping).",
        "",
        "## What a 16-core GPU node needs at the paper's 256² batch",
        "",
        *node,
        "",
        f"## Peak RSS of one rank streaming {RSS_BATCHES} batches of 128 (32², fresh process, "
        "loader_workers 0, glibc defaults)",
        "",
        "The high-water mark (VmHWM) after imports: reset through /proc/self/clear_refs before "
        f"streaming. Every run draws the same {RSS_BATCHES * 128:,} images (one epoch of 50k, "
        "many of 1k), so only the split size differs.",
        "",
        "| images | input | peak RSS MiB | seconds |",
        "|---:|---|---:|---:|",
        *rss,
        "",
        "Regenerate: `python -m benchmarks.stream_input`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=5000, help="32x32 images for the rate table")
    p.add_argument("--large", type=int, default=400, help="256x256 images for the rate table")
    p.add_argument("--rounds", type=int, default=3, help="runs per configuration, alternated")
    p.add_argument("--rss", type=int, nargs=2, default=[1000, 50000], help="split sizes")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-rate", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--cache-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args.child, args.cache_bytes)
        return 0
    if args.child_rate is not None:
        root, batch, batches, workers = args.child_rate
        print(json.dumps(child_rate(Path(root), int(batch), int(batches), int(workers))))
        return 0
    torch.set_num_threads(1)
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        rates, per_core = run_rates(Path(tmp), args.small, args.large, args.rounds)
        rss = run_rss(Path(tmp), args.rss)
    text = markdown(rates, node_lines(per_core), rss, (load_start, load_average()))
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
