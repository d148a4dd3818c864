"""Peak RSS of the shard stage at 1k vs many images (flat), and its throughput on 1 and 2 workers.

    python -m benchmarks.shard_memory [--small 1000] [--large 20000] [--workers 1 2]

Writes image folders of random 64x64 RGB PNGs (kept in $TMPDIR/ddpm-shard-memory/ between
runs), then runs `python -m stages.shard` on each as a child process: its peak RSS
(`getrusage(RUSAGE_CHILDREN)` in a fresh parent after the stage exits: with data.shard_workers
1 the stage process does all the decoding) and the writer's own images/s (the stage's last
progress line; with 2 workers the Ray tasks decode and encode, the stage process writes).
The issue measured the old in-memory stage at 652 MiB (400 images) -> 2,123 MiB (8,400).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmarks.report import load_average, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "shard_memory.md"
CACHE = Path(tempfile.gettempdir()) / "ddpm-shard-memory"  # the generated image folders
# Runs a command and prints its peak RSS (KiB): a fresh parent per run, so RUSAGE_CHILDREN's
# maximum is that run's alone.
PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(r.returncode)"
)
SIDE = 64
RATE = re.compile(r"(\d+)/(\d+) images .* ([\d.]+|nan) images/s")


def image_folder(n: int) -> Path:
    """`n` random 64x64 RGB PNGs in 10 class folders (made once, reused)."""
    folder = CACHE / f"png64-{n}"
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        (folder / f"c{i % 10}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 10}" / f"{i:06d}.png", compress_level=1)
    (folder / ".complete").touch()
    return folder


def run_stage(folder: Path, workers: int, tmp: Path) -> tuple[float, float, float]:
    """(peak RSS MiB of the stage process, writer images/s, wall s) of one shard stage run."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(
        source="image_folder", root=str(folder), raw=str(folder), channels=3, resolution=SIDE,
        resize="resize", max_images=None, shard_size=512, test_fraction=0.1,
        shard_workers=workers,
    )  # fmt: skip
    params["unet"]["attn_resolutions"] = [16]  # a level of the 64x64 U-Net (validation only)
    params["paths"]["shards"] = str(tmp / f"shards-{folder.name}-{workers}")
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "stages.shard", "--params", str(path)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"shard stage failed:\n{proc.stderr[-3000:]}")
    peak = int(proc.stderr.strip().splitlines()[-1])  # KiB
    rates = RATE.findall(proc.stderr)
    rate = float(rates[-1][2]) if rates else float("nan")
    shutil.rmtree(params["paths"]["shards"], ignore_errors=True)
    return peak / 1024, rate, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            folder = image_folder(n)
            for workers in args.workers:
                peak, rate, wall = run_stage(folder, workers, Path(tmp))
                rows.append((n, workers, peak, rate, wall))
                print(rows[-1], flush=True)
    decoded = {n: n * 3 * SIDE * SIDE / 2**20 for n in (args.small, args.large)}
    rss = {n: r[2] for r in rows if r[1] == 1 for n in [r[0]]}
    growth = rss[args.large] - rss[args.small]
    share = growth / (decoded[args.large] - decoded[args.small])
    lines = [
        "# Shard stage memory and throughput",
        "",
        f"Image folders of random {SIDE}x{SIDE} RGB PNGs, `resize` to {SIDE}, shards of 512, "
        f"`python -m stages.shard` as a child process. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with other jobs; load average {load_average()}), "
        f"Python {platform.python_version()}.",
        "",
        "| images | decoded MiB | shard_workers | peak RSS MiB (stage process) | writer images/s "
        "| wall s (incl. start-up) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, workers, peak, rate, wall in rows:
        shown = f"{peak:,.0f}" if workers == 1 else "(Ray workers: separate processes)"
        lines.append(
            f"| {n:,} | {decoded[n]:,.0f} | {workers} | {shown} | {rate:,.0f} | {wall:,.1f} |"
        )
    lines += [
        "",
        f"Peak RSS growth {args.small:,} -> {args.large:,} images (1 worker): {growth:+,.1f} MiB "
        f"= {100 * share:.1f}% of the {decoded[args.large] - decoded[args.small]:,.0f} MiB of "
        f"extra decoded pixels (target < 5%). The old in-memory stage (issue 19): 652 MiB at "
        "400 images -> 2,123 MiB at 8,400, about 16x the decoded size.",
        "",
        "Regenerate: `python -m benchmarks.shard_memory`.",
        "",
    ]
    text = "\n".join(lines)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
