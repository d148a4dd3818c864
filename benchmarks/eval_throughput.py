"""Evaluation throughput (images/s) at 1 and 2 Ray workers: Inception features and bits/dim.

    python -m benchmarks.eval_throughput [--fid-images 256] [--nll-images 64] [--chunk-size 32]
        [--T 1000] [--repeats 1]

Real digits images as the shard stage writes them (params.yaml's data section: 8x8 resized to
16x16x1). (a) FID features: `pipelines.fid.features.ray_extractor` on the train split with the
Inception weights `pipelines.fid.inception.resolve_weights` finds (grayscale replicated to
RGB, resized to 299x299 inside torch-fidelity); 1 worker runs in this process with 2 threads, 2
workers are two Ray tasks of 1 CPU each. Each timed call follows a small warm-up call (Ray worker
processes and imports), and loads the weights once per task as the evaluate stage does.
(b) Bits/dim: `pipelines.evaluate.nll.evaluate_bpd` (T U-Net forwards per image,
`calc_bpd_loop`) on the test split with the default-profile U-Net (random weights: the cost does
not depend on training), actors of 2 CPUs (1 worker) or 1 CPU (2 workers); its wall time
includes actor start-up and model build.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import ray
import torch
import yaml

from benchmarks.report import load_average, write_result
from ddpm_core.config import UNetConfig
from ddpm_core.unet import UNet
from pipelines.artifacts.model_dir import model_out_channels
from pipelines.artifacts.shards import load_split
from pipelines.config import Params, from_dict
from pipelines.data.stage import build_shards
from pipelines.evaluate.nll import evaluate_bpd
from pipelines.fid.features import ray_extractor
from pipelines.fid.inception import InceptionWeights, default_cache_dir, resolve_weights

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "eval_throughput.md"
CPUS = {1: 2.0, 2: 1.0}  # Ray CPUs per worker: both cases fill the 2-CPU cluster
FID = "FID features (Inception pool3)"
NLL = "bits/dim (calc_bpd_loop)"


@dataclass(frozen=True)
class RandomUNet:
    """Picklable model factory for `evaluate_bpd`: the U-Net with a fixed-seed random init."""

    unet: UNetConfig
    channels: int
    resolution: int
    out_channels: int  # GaussianDiffusion.model_out_channels(channels): 2C with a learned Sigma
    seed: int = 0

    def __call__(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return UNet.from_config(self.unet, self.channels, self.resolution, self.out_channels)


@dataclass(frozen=True)
class Row:
    metric: str
    workers: int
    cpus: float  # Ray CPUs (and torch threads) per worker
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def bench_params(root: Path, T: int | None) -> Params:
    """params.yaml with every path under `root` (and `diffusion.T` = `T` when given)."""
    raw: dict[str, Any] = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    if T is not None:
        raw["diffusion"]["T"] = T
    return from_dict(Params, raw)


def digits_images(params: Params, fid_images: int, nll_images: int) -> dict[str, torch.Tensor]:
    """uint8 (N, 1, 16, 16): train images for the features, test images for bits/dim."""
    shards = Path(params.paths.shards)
    build_shards(params.data, params.seed, shards)
    return {
        FID: load_split(shards, "train", max_images=fid_images)[0],
        NLL: load_split(shards, "test", max_images=nll_images)[0],
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fid_case(images: torch.Tensor, weights: InceptionWeights, workers: int) -> Row:
    """One timed `ray_extractor` call after a warm-up call on 2 images per worker."""
    cpus = CPUS[workers]
    torch.set_num_threads(int(cpus))  # the 1-worker extractor runs in this process
    extract = ray_extractor(workers, cpus)
    extract(images[: 2 * workers], weights, ("2048",))
    seconds = timed(lambda: extract(images, weights, ("2048",)))
    return Row(FID, workers, cpus, len(images), seconds)


def nll_case(images: torch.Tensor, params: Params, chunk_size: int, workers: int) -> Row:
    model_fn = RandomUNet(
        params.unet, params.data.channels, params.data.resolution, model_out_channels(params)
    )
    cpus = CPUS[workers]
    seconds = timed(
        lambda: evaluate_bpd(
            images,
            model_fn,
            params.diffusion,
            seed=0,
            chunk_size=chunk_size,
            num_workers=workers,
            cpus_per_worker=cpus,
        )
    )
    return Row(NLL, workers, cpus, len(images), seconds)


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Best (shortest) of `--repeats` interleaved rounds; also the Inception weights' label."""
    best: dict[tuple[str, int], Row] = {}
    with tempfile.TemporaryDirectory() as tmp:
        params = bench_params(Path(tmp), args.T)
        images = digits_images(params, args.fid_images, args.nll_images)
    weights = resolve_weights(params.evaluate, default_cache_dir())
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        for _ in range(args.repeats):
            for workers in (1, 2):
                rows = [
                    fid_case(images[FID], weights, workers),
                    nll_case(images[NLL], params, args.chunk_size, workers),
                ]
                for r in rows:
                    key = (r.metric, r.workers)
                    if key not in best or r.seconds < best[key].seconds:
                        best[key] = r
    finally:
        ray.shutdown()
    return sorted(best.values(), key=lambda r: (r.metric != FID, r.workers)), weights.label


def command(args: argparse.Namespace) -> str:
    return (
        f"python -m benchmarks.eval_throughput --fid-images {args.fid_images} --nll-images "
        f"{args.nll_images} --chunk-size {args.chunk_size} --T {args.T} --repeats "
        f"{args.repeats}"
    )


def to_markdown(rows: list[Row], label: str, args: argparse.Namespace, load: str) -> str:
    one = {r.metric: r for r in rows if r.workers == 1}
    lines = [
        "# Evaluation throughput: Inception features and bits/dim at 1 and 2 Ray workers",
        "",
        f"`{command(args)}` (best of the repeats, interleaved): real digits images (16x16x1, "
        f"as in the shards); Inception weights: {label}; default-profile U-Net (ch 32, random "
        f"weights), T = {args.T}, bits/dim chunks of {args.chunk_size} images. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ray "
        f"{ray.__version__}; load average before the run: {load} (the CPUs are shared with "
        "other jobs, so figures vary).",
        "",
        "| metric | workers | CPUs (threads) per worker | images | seconds | images/s "
        "| speedup vs 1 worker | scaling efficiency |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = r.images_per_s / one[r.metric].images_per_s
        lines.append(
            f"| {r.metric} | {r.workers} | {r.cpus:g} | {r.images} | {r.seconds:.1f} | "
            f"{r.images_per_s:.2f} | {speedup:.2f}x | {100 * speedup / r.workers:.0f}% |"
        )
    lines += [
        "",
        "Both worker counts use the whole 2-CPU cluster: 1 worker x 2 CPUs (2 torch threads) vs "
        "2 workers x 1 CPU (1 thread each), so scaling efficiency = speedup / workers compares "
        "process parallelism with intra-op threading on the same CPUs. FID features with 1 "
        "worker run in-process (`ray_extractor` skips Ray); with 2 workers each Ray task loads "
        "the Inception weights. Bits/dim seconds include actor start-up and model build (a few "
        "seconds; small against T forwards per image at T = 1000).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fid-images", type=int, default=256, help="train images for the features")
    p.add_argument("--nll-images", type=int, default=64, help="test images for bits/dim")
    p.add_argument("--chunk-size", type=int, default=32, help="bits/dim images per actor call")
    p.add_argument("--T", type=int, default=None, help="diffusion steps (default: params.yaml)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.T = args.T or bench_params(REPO, None).diffusion.T
    if args.fid_images < 4 or -(-args.nll_images // args.chunk_size) < 2:
        p.error("need --fid-images >= 4 and --nll-images >= 2 chunks (2 workers need 2 units)")
    if __name__ != "__main__":  # Ray workers unpickle RandomUNet without importing benchmarks/
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    load = load_average()
    rows, label = run(args)
    text = to_markdown(rows, label, args, load)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
