"""Shard writing and reading throughput (images/s) on the MNIST PNGs of ../shared/data.

    python -m benchmarks.shard_io [--images 5000] [--zip ../shared/data/mnist-png.zip]

Reads `--images` per split (train and test) from the zip in place, pads 28 -> 32, then times:
source decode (zip PNG -> uint8 arrays), shard writing (PNG encode + tar + sha256), in-process
reading (`load_split`: sha256 + tar + PNG decode) and the training stream (`train_batches`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import write_result
from pipelines.artifacts.shard_stream import train_batches
from pipelines.artifacts.shards import load_split, write_shards
from pipelines.config import DataConfig
from pipelines.data.sources import load_source

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "data" / "mnist-png.zip"
RESULTS = REPO / "benchmarks" / "results" / "shard_io.md"
# The paper's CIFAR-10 run: 800k steps of batch 128 in 10.6 h on a TPU v3-8 (Ho et al. 2020,
# Appendix B), i.e. about 21 steps/s = 2,700 images/s consumed.
PAPER_IMAGES_PER_S = 800_000 * 128 / (10.6 * 3600)


def timed(fn: object) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return out, time.perf_counter() - t0


def run(
    zip_path: Path, per_split: int, batch_size: int, batches: int
) -> list[tuple[str, int, float]]:
    cfg = DataConfig(
        source="image_folder",
        root=str(zip_path),
        raw=str(zip_path),
        download=False,
        resolution=32,
        channels=1,
        resize="pad",
        max_images=per_split,
        shard_size=1000,
        test_fraction=0.1,
        random_flip=True,
        shard_workers=1,
        image_column="image",
        label_column="label",
        downscale="lanczos",
        bad_images="fail",
    )
    data, t_src = timed(lambda: load_source(cfg, 0))
    n = sum(len(s.images) for s in data.splits.values())  # type: ignore[attr-defined]
    rows = [("source decode (zip PNG -> uint8, pad 28->32)", n, t_src)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        params = {"data": dataclasses.asdict(cfg)}
        _, t_write = timed(lambda: write_shards(data, out, cfg.shard_size, params, cfg.source))  # type: ignore[arg-type]
        rows.append(("shard write (PNG encode + tar + sha256)", n, t_write))
        (images, _), t_read = timed(lambda: load_split(out, "train"))  # type: ignore[misc]
        rows.append(("load_split read (sha256 + tar + PNG decode)", len(images), t_read))
        stream = train_batches(out, "train", batch_size, 0, 1, seed=0, random_flip=True)
        _, t_first = timed(lambda: next(stream))
        rows.append(("train_batches first batch (streamed, in process)", batch_size, t_first))
        _, t_stream = timed(lambda: list(itertools.islice(stream, batches)))
        rows.append(
            (f"train_batches steady state (B={batch_size}, flip)", batch_size * batches, t_stream)
        )
    return rows


def markdown(rows: list[tuple[str, int, float]], zip_path: Path, per_split: int) -> str:
    lines = [
        "# Shard I/O throughput",
        "",
        f"MNIST PNGs from `{zip_path.name}` (read in place), {per_split} per split, padded to "
        f"1x32x32, shards of 1000. Machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared), torch threads {torch.get_num_threads()}, Python {platform.python_version()}.",
        "",
        "| step | images | seconds | images/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {n:,} | {t:.2f} | {n / t:,.0f} |" for name, n, t in rows]
    lines += [
        "",
        f"Reference consumption: the paper's CIFAR-10 run trained at about "
        f"{PAPER_IMAGES_PER_S:,.0f} images/s (800k steps x 128 in 10.6 h on a TPU v3-8); the "
        f"steady-state stream here is {rows[-1][1] / rows[-1][2] / PAPER_IMAGES_PER_S:,.0f}x that "
        "on one thread. Timings are noisy: the 2 CPUs are shared with other jobs.",
        "",
        "Regenerate: `python -m benchmarks.shard_io`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--zip", type=Path, default=DEFAULT_ZIP)
    p.add_argument("--images", type=int, default=5000, help="images per split (train and test)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per training worker; more threads thrash on 2 shared CPUs
    if not args.zip.is_file():
        raise SystemExit(f"{args.zip}: not found (see ../shared/data/README.md)")
    rows = run(args.zip, args.images, args.batch_size, args.batches)
    text = markdown(rows, args.zip, args.images)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
