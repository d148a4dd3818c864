"""What `train.activation_checkpointing` saves and costs: the U-Net's training step with and
without it.

Run: `python -m benchmarks.activation_checkpointing [--threads 2] [--repeats N] [--out PATH]`.
Per case: the bytes autograd keeps for backward after one forward (every tensor packed by
`torch.autograd.graph.saved_tensors_hooks`; the checkpointed blocks save nothing there but hold
their inputs for the recomputation, counted apart: the distinct input tensors of every ResBlock
and AttnBlock, which with checkpointing stay alive until backward), the peak CUDA memory of a
step when on a GPU, and the step time (forward + MSE + backward, best of `--repeats`). On CPU
it measures the 32x32 CIFAR-10 U-Net and the 256x256 one at batch 1 (the saved bytes scale with
the batch); with CUDA the 256x256 one at per-GPU batches 8 and 64.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.report import load_average, write_result
from ddpm_core.layers import AttnBlock, ResBlock
from ddpm_core.unet import UNet

RESULTS = Path(__file__).resolve().parent / "results" / "activation_checkpointing.md"


@dataclass(frozen=True)
class Case:
    name: str
    ch_mult: tuple[int, ...]
    resolution: int
    batch: int


CPU_CASES = (
    Case("CIFAR-10 U-Net, 32x32", (1, 2, 2, 2), 32, 8),
    Case("256x256 U-Net (114M)", (1, 1, 2, 2, 4, 4), 256, 1),
)
GPU_CASES = (
    Case("256x256 U-Net (114M)", (1, 1, 2, 2, 4, 4), 256, 8),
    Case("256x256 U-Net (114M)", (1, 1, 2, 2, 4, 4), 256, 64),
)


@dataclass(frozen=True)
class Row:
    case: Case
    checkpointing: bool
    saved_mib: float
    inputs_mib: float  # what the checkpointed blocks hold for the recomputation
    peak_mib: float | None
    step_s: float


def _inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, 3, case.resolution, case.resolution, generator=g)
    return x.to(device), torch.randint(0, 1000, (case.batch,), generator=g).to(device)


def saved_bytes(model: UNet, x: torch.Tensor, t: torch.Tensor) -> tuple[int, int]:
    """Bytes autograd keeps for backward after one forward of `model`, and the bytes of the
    distinct inputs of its ResBlocks and AttnBlocks."""
    total, inputs, seen = 0, 0, set()

    def pack(v: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += v.numel() * v.element_size()
        return v

    def pre_hook(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal inputs
        for a in args:
            if a.data_ptr() not in seen:
                seen.add(a.data_ptr())
                inputs += a.numel() * a.element_size()

    blocks = [m for m in model.modules() if isinstance(m, ResBlock | AttnBlock)]
    handles = [m.register_forward_pre_hook(pre_hook) for m in blocks]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
        out = model(x, t)
    for h in handles:
        h.remove()
    del out
    return total, inputs


def step_time(model: UNet, x: torch.Tensor, t: torch.Tensor, repeats: int) -> float:
    """Best wall time of forward + MSE + backward (s)."""
    best = float("inf")
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x, t).square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(case: Case, on: bool, device: torch.device, repeats: int) -> Row:
    """One case with checkpointing `on` or off; `repeats` 0 skips the step timing."""
    torch.manual_seed(0)
    model = UNet(ch_mult=case.ch_mult, resolution=case.resolution, dropout=0.1)
    model = model.to(device).train().set_activation_checkpointing(on)
    x, t = _inputs(case, device)
    saved, inputs = (b / 2**20 for b in saved_bytes(model, x, t))
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = step_time(model, x, t, repeats) if repeats else float("nan")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    return Row(case, on, saved, inputs, peak, step)


def to_markdown(
    rows: list[Row], device: torch.device, load: str, threads: int, repeats: int
) -> str:
    lines = [
        "# Activation checkpointing (`train.activation_checkpointing`)",
        "",
        f"Device {device}; torch threads {threads}; load average {load}. fp32, dropout 0.1.",
        f"`python -m benchmarks.activation_checkpointing --repeats {repeats}`",
        "",
        "Kept for backward = autograd's saved tensors + (checkpointing on) the blocks' inputs.",
        "",
        "| case | batch | checkpointing | saved tensors (MiB) | block inputs (MiB) | "
        "kept for backward (MiB) | peak CUDA (MiB) | step (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:,.0f}"
        step = "-" if r.step_s != r.step_s else f"{r.step_s:.3f}"  # NaN: not timed
        kept = r.saved_mib + (r.inputs_mib if r.checkpointing else 0.0)
        lines.append(
            f"| {r.case.name} | {r.case.batch} | {'on' if r.checkpointing else 'off'} | "
            f"{r.saved_mib:,.1f} | {r.inputs_mib:,.1f} | {kept:,.1f} | {peak} | {step} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="step timings per case; 0: none")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    load = load_average()
    rows = [measure(c, on, device, args.repeats) for c in cases for on in (False, True)]
    text = to_markdown(rows, device, load, args.threads, args.repeats)
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
