"""The streamed training input (`artifacts.shard_stream`): images/s per rank, and flat memory.

    python -m benchmarks.stream_input [--small 5000] [--large 400] [--rss 1000 50000]

Writes random RGB PNG shards into a temporary folder (random pixels: the worst case for PNG),
then times `train_batches` of one rank at 32x32 and 256x256 with 0, 2 and 4 loader workers
(steady state, after the first batch, which includes starting the workers), beside the PNG
decoding alone; and runs one rank in a fresh process streaming 400 batches of 128 from splits
of 1k and of 50k 32x32 images, reporting its peak RSS (flat: the growth should stay under 5%
of the decoded dataset), and the same with the split cached in memory for contrast.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import load_average, write_result
from pipelines.artifacts.shard_stream import train_batches
from pipelines.artifacts.shards import SourceData, Split, write_shards
from pipelines.artifacts.tars import decode_png, encode_png

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "stream_input.md"
SHARD_SIZE = 1000
TARGETS = {32: 5000, 256: 250}  # issue 19: images/s per decode core
WORKERS = (0, 2, 4)
# Draws per RSS run: the same for every split size (51,200 images: an epoch of 50k, 51 of 1k),
# so the split size is the only variable. glibc's heap settles after ~200 batches of churn.
RSS_BATCHES = 400


def write_random(root: Path, n: int, res: int, seed: int = 0) -> Path:
    """`n` random RGB (3, res, res) images as a train split of shards of SHARD_SIZE."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, res, res), dtype=np.uint8)
    data = SourceData({"train": Split(images, np.zeros(n, dtype=np.int64))}, ["x"], "random")
    write_shards(data, root, SHARD_SIZE, {}, "random")
    return root


def decode_rate(res: int, count: int) -> float:
    """Images/s of PNG decoding alone (one thread, random-pixel PNG bytes in memory)."""
    rng = np.random.default_rng(1)
    blobs = [encode_png(rng.integers(0, 256, (3, res, res), dtype=np.uint8)) for _ in range(8)]
    start = time.perf_counter()
    for i in range(count):
        decode_png(blobs[i % len(blobs)])
    return count / (time.perf_counter() - start)


def stream_rate(root: Path, batch: int, batches: int, workers: int) -> tuple[float, float]:
    """(seconds to the first batch, steady images/s) of rank 0 of 1 streaming `root`."""
    start = time.perf_counter()
    stream = train_batches(
        root, "train", batch, 0, 1, 0, True, shuffle_buffer=10_000, loader_workers=workers,
        prefetch=4,
    )  # fmt: skip
    next(stream)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in itertools.islice(stream, batches):
        pass
    rate = batch * batches / (time.perf_counter() - start)
    stream.close()
    return first, rate


def child_peak_rss(root: Path, cache_bytes: int, fixed_mmap: bool) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of a fresh process streaming RSS_BATCHES from `root` (rank 0/1).

    `fixed_mmap`: glibc's mmap threshold pinned at its 128 KiB default (MALLOC_MMAP_THRESHOLD_),
    so freed batch buffers go back to the OS instead of fragmenting the heap."""
    cmd = [sys.executable, "-m", "benchmarks.stream_input", "--child", str(root)]
    cmd += ["--cache-bytes", str(cache_bytes)]
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "131072"} if fixed_mmap else {})}
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


def run_rates(tmp: Path, small: int, large: int) -> list[str]:
    rows = []
    for res, n, batch, batches in ((32, small, 128, small // 128 - 2), (256, large, 16, 16)):
        root = write_random(tmp / f"rate{res}", n, res)
        decode = decode_rate(res, 2000 if res == 32 else 100)
        rows.append(f"| {res}² | PNG decode alone (1 thread) | – | {decode:,.0f} | – |")
        for w in WORKERS:
            first, rate = stream_rate(root, batch, batches, w)
            cores = min(max(w, 1), os.cpu_count() or 1)
            rows.append(
                f"| {res}² | train_batches, loader_workers={w} (B={batch}) | {first:.2f} | "
                f"{rate:,.0f} | {rate / cores:,.0f} (target {TARGETS[res]:,}) |"
            )
    return rows


def run_rss(tmp: Path, sizes: list[int]) -> list[str]:
    rows, peaks = [], {}
    for n in sizes:
        root = write_random(tmp / f"rss{n}", n, 32)
        for cache, fixed in ((0, False), (0, True), (1 << 40, False)):
            peak, seconds = child_peak_rss(root, cache, fixed)
            peaks[n, cache, fixed] = peak
            mode = "cached (cache_bytes >= split)" if cache else "streamed (cache_bytes 0)"
            malloc = "MALLOC_MMAP_THRESHOLD_=131072" if fixed else "default"
            rows.append(f"| {n:,} | {mode} | {malloc} | {peak:,.1f} | {seconds:.1f} |")
    lo, hi = sizes[0], sizes[-1]
    decoded = (hi - lo) * 3 * 32 * 32 / 2**20
    rows.append("")
    for fixed, what in ((False, "default glibc malloc"), (True, "mmap threshold pinned")):
        growth = peaks[hi, 0, fixed] - peaks[lo, 0, fixed]
        rows.append(
            f"Streamed growth from {lo:,} to {hi:,} images, {what}: {growth:+.1f} MiB = "
            f"{100 * growth / decoded:.1f}% of the {decoded:.0f} MiB more decoded pixels "
            "(target < 5%)."
        )
        rows.append("")
    cached = peaks[hi, 1 << 40, False] - peaks[lo, 1 << 40, False]
    rows.append(f"Cached, for contrast: {cached:+.1f} MiB.")
    return rows


def markdown(rates: list[str], rss: list[str]) -> str:
    lines = [
        "# Streamed training input (`pipelines/artifacts/shard_stream.py`)",
        "",
        f"Machine: 2-core CPU ({platform.machine()}, os.cpu_count()={os.cpu_count()}, shared "
        f"with other jobs; load average {load_average()} at the end), Python "
        f"{platform.python_version()}, torch {torch.__version__}. Random RGB PNG shards of "
        f"{SHARD_SIZE} images (incompressible pixels: the slowest PNGs), shuffle buffer 10,000, "
        "random flip on, prefetch 4 batches per worker.",
        "",
        "## Images/s of one rank",
        "",
        "| size | what | s to 1st batch | images/s | per decode core |",
        "|---|---|---:|---:|---:|",
        *rates,
        "",
        "Per decode core divides by min(max(workers, 1), CPUs): on 2 cores, 4 workers cannot",
        "beat 2; the parent (batch assembly, [-1, 1] conversion) shares the same cores.",
        "",
        f"## Peak RSS of one rank streaming {RSS_BATCHES} batches of 128 (32², fresh process, "
        "loader_workers 0)",
        "",
        "The high-water mark (VmHWM) after imports: reset through /proc/self/clear_refs before "
        f"streaming. Every run draws the same {RSS_BATCHES * 128:,} images (one epoch of 50k, "
        "many of 1k), so only the split size differs.",
        "",
        "| images | input | malloc | peak RSS MiB | seconds |",
        "|---:|---|---|---:|---:|",
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
    p.add_argument("--rss", type=int, nargs=2, default=[1000, 50000], help="split sizes")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args.child, args.cache_bytes)
        return 0
    torch.set_num_threads(1)  # one core per rank's parent; the loader workers use the others
    with tempfile.TemporaryDirectory() as tmp:
        rates = run_rates(Path(tmp), args.small, args.large)
        rss = run_rss(Path(tmp), args.rss)
    text = markdown(rates, rss)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
