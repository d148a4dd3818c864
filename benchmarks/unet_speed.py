"""Throughput of `ddpm_core.unet.UNet` vs diffusers `UNet2DModel` with the same configuration.

Run: `python -m benchmarks.unet_speed [--threads 2] [--repeats N] [--out PATH]`. Both networks are
built in this process and timed interleaved (ours, theirs, ours, ...) so CPU contention hits both
alike; throughput is taken from the best repeat (least disturbed by other load). Training step =
forward + MSE + backward + Adam step on random (x_t, t, eps); sampling step = one no-grad forward
(one step of Algorithm 2's network call).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.report import write_result
from ddpm_core.convert import diffusers_config_from_unet
from ddpm_core.unet import UNet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    name: str
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int
    batch: int
    repeats: int


CASES = (
    Case("small CPU (ch 32, (1,2,2), 16x16)", 32, (1, 2, 2), 2, (8,), 16, 32, 12),
    Case("CIFAR-10 (ch 128, (1,2,2,2), 32x32)", 128, (1, 2, 2, 2), 2, (16,), 32, 4, 8),
)


def diffusers_config(case: Case, dropout: float) -> dict[str, Any]:
    """The diffusers UNet2DModel config equal to `case` (google/ddpm-cifar10-32 conventions)."""
    return diffusers_config_from_unet(
        {
            "in_channels": 3,
            "out_channels": 3,
            "ch": case.ch,
            "ch_mult": case.ch_mult,
            "num_res_blocks": case.num_res_blocks,
            "attn_resolutions": case.attn_resolutions,
            "dropout": dropout,
            "resolution": case.resolution,
        }
    )


def build(case: Case, dropout: float = 0.1) -> tuple[nn.Module, nn.Module]:
    from diffusers import UNet2DModel

    ours = UNet(
        ch=case.ch,
        ch_mult=case.ch_mult,
        num_res_blocks=case.num_res_blocks,
        attn_resolutions=case.attn_resolutions,
        dropout=dropout,
        resolution=case.resolution,
    )
    theirs = UNet2DModel(**diffusers_config(case, dropout))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    if n_ours != n_theirs:
        raise RuntimeError(f"{case.name}: parameter counts differ ({n_ours} vs {n_theirs})")
    return ours, theirs


def step_fns(model: nn.Module, case: Case, is_ours: bool) -> tuple[Callable[[], None], ...]:
    """(training step, sampling step) closures on fixed random inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, 3, case.resolution, case.resolution, generator=g)
    eps = torch.randn(x.shape, generator=g)
    t = torch.randint(0, 1000, (case.batch,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)

    def forward() -> torch.Tensor:
        out = model(x, t)
        return out if is_ours else out.sample

    def train() -> None:
        model.train()
        loss = (forward() - eps).square().mean()  # L_simple
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample() -> None:
        model.eval()
        forward()

    return train, sample


def time_interleaved(fns: list[Callable[[], None]], repeats: int) -> list[list[float]]:
    """Seconds per call of each fn (repeats each), alternating between them after a warm-up."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return times


def run_case(case: Case, repeats: int | None) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    ours, theirs = build(case)
    (train_o, sample_o), (train_t, sample_t) = (
        step_fns(ours, case, True),
        step_fns(theirs, case, False),
    )
    n = repeats or case.repeats
    rows = []
    for kind, fns in (("train step", [train_o, train_t]), ("sampling step", [sample_o, sample_t])):
        t_ours, t_theirs = time_interleaved(fns, n)
        best_o, best_t = min(t_ours), min(t_theirs)
        rows.append(
            {
                "case": case.name,
                "kind": kind,
                "batch": case.batch,
                "ours": case.batch / best_o,
                "diffusers": case.batch / best_t,
                "ratio": best_t / best_o,
                "median_ratio": statistics.median(t_theirs) / statistics.median(t_ours),
            }
        )
        logger.info("%s %s: best ours %.4fs, diffusers %.4fs", case.name, kind, best_o, best_t)
    return rows


def to_markdown(rows: list[dict[str, Any]], threads: int, seconds: float, load: float) -> str:
    import diffusers

    lines = [
        "# UNet throughput: ddpm_core.unet.UNet vs diffusers.UNet2DModel (same config)",
        "",
        f"CPU, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"`torch.set_num_threads({threads})`, fp32, dropout 0.1, NCHW. Interleaved repeats on a "
        f"shared machine (load average {load:.1f} at start; total {seconds:.0f} s): images/s from "
        "the best repeat; ratio = ours / diffusers throughput (best repeat and median repeat).",
        "",
        "| config | step | batch | ours (img/s) | diffusers (img/s) | ratio (best) "
        "| ratio (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['kind']} | {r['batch']} | {r['ours']:.1f} | "
            f"{r['diffusers']:.1f} | {r['ratio']:.2f}x | {r['median_ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="override per-case repeats")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/unet_speed.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    load, start = os.getloadavg()[0], time.perf_counter()
    rows = [row for case in CASES for row in run_case(case, args.repeats)]
    table = to_markdown(rows, args.threads, time.perf_counter() - start, load)
    write_result(args.out, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
