"""The network's execution options on CPU: where training and sampling steps could go faster.

    python -m benchmarks.cpu_options [--profile params.yaml] [--repeats 5] [--out PATH]

The default profile's U-Net through the code the stages run (`benchmarks.gpu_profile`'s
`train_stepper` = the Ray worker's loop body, `sample_chain` = the sample actor's
`sample_indices` with `InferenceModel` and counter noise), without Ray, on CPU, under each
option: fp32 eager (the default run), channels_last, `torch.compile` (Inductor; for inference
with freezing: weights folded and prepacked for oneDNN), both, and bf16 autocast (which changes
the numbers beyond float rounding: a named option only). Training runs with the worker's
threads (`train.cpus_per_worker`) at `train.batch_size`, sampling with one actor's threads
(`sample.cpus_per_worker`) at `sample.batch_size`. Modes are timed interleaved (each repeat
times every mode once) and the best repeat is kept, so a load change hits all modes alike; the
CPUs other processes took meanwhile are printed (`report.OtherCpus`).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.gpu_profile import Mode, Plan, sample_chain, timed, train_stepper
from benchmarks.report import OTHER_CPUS_LIMIT, OtherCpus, cpu_model, write_result
from pipelines.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cpu_options.md"
CPU = torch.device("cpu")
MODES = (
    Mode("fp32 eager (the default)", "fp32", False, False),
    Mode("fp32 channels_last", "fp32", True, False),
    Mode("fp32 compile", "fp32", False, "default"),
    Mode("fp32 channels_last + compile", "fp32", True, "default"),
    Mode("bf16 eager (named option: other numbers)", "bf16", False, False),
    Mode("bf16 channels_last + compile (named option)", "bf16", True, "default"),
)


def plan(steps: int, chain: int) -> Plan:
    return Plan(train=(), sample=(), nll=(), steps=steps, warmup=3, chain=chain, matmul=0)


def best_ms(
    fns: dict[str, tuple[Callable[[], object], int]], repeats: int, calls: int
) -> dict[str, float]:
    """Best-of-`repeats` ms per unit of each fn (units = what one call does), interleaved."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, (fn, units) in fns.items():
            best[name] = min(best[name], timed(CPU, fn, calls) * 1e3 / units)
    return best


def measure(params: Params, repeats: int, steps: int, chain: int) -> tuple[str, float]:
    p = plan(steps, chain)
    lines: list[str] = []
    with OtherCpus() as other:
        torch.set_num_threads(max(1, int(params.train.cpus_per_worker)))
        batch = params.train.batch_size
        train = {m.name: (train_stepper(params, m, batch, p, CPU), 1) for m in MODES}
        t_ms = best_ms(train, repeats, steps)
        del train
        torch.set_num_threads(max(1, int(params.sample.cpus_per_worker)))
        sb = params.sample.batch_size
        sample = {m.name: sample_chain(params, m, sb, p, CPU) for m in MODES}
        s_ms = best_ms(sample, repeats, 1)
    base_t, base_s = t_ms[MODES[0].name], s_ms[MODES[0].name]
    lines += [
        f"| mode | training ms/step (batch {batch}, {params.train.cpus_per_worker:g} threads) "
        f"| vs eager | sampling ms/step (batch {sb}, {params.sample.cpus_per_worker:g} thread) "
        "| vs eager |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in MODES:
        lines.append(
            f"| {m.name} | {t_ms[m.name]:.1f} | {base_t / t_ms[m.name]:.2f}x | "
            f"{s_ms[m.name]:.1f} | {base_s / s_ms[m.name]:.2f}x |"
        )
    return "\n".join(lines), other.cpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timing")
    ap.add_argument("--chain", type=int, default=20, help="reverse steps per sampling timing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if min(args.repeats, args.steps, args.chain) < 1:
        ap.error("--repeats, --steps, --chain must be >= 1")
    params = load_params(args.profile)
    start = time.perf_counter()
    table, other = measure(params, args.repeats, args.steps, args.chain)
    loaded = other > OTHER_CPUS_LIMIT
    text = "\n".join([
        f"# Execution options on CPU: {params.profile} profile",
        "",
        f"`python -m benchmarks.cpu_options --repeats {args.repeats} --steps {args.steps} "
        f"--chain {args.chain}`. Machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"({cpu_model()}), torch {torch.__version__}. Best of "
        f"{args.repeats} interleaved repeats; training = the worker's loop body on one batch "
        "(no input, no Ray); sampling = Algorithm 2 steps of `sample_indices` (network, "
        f"posterior, counter noise). Other processes used {other:.2f} CPUs meanwhile"
        + (" (MEASURED UNDER LOAD: not a verdict)." if loaded else ".")
        + f" Total {time.perf_counter() - start:.0f} s.",
        "",
        table,
        "",
    ])  # fmt: skip
    write_result(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
