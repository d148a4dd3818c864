"""Run every benchmark's `main()` with its defaults, one after another (`make bench`).

    python -m benchmarks.run_all [--only NAME ...] [--dry-run]

Each benchmark writes its own table under benchmarks/results/. shard_io is skipped (with the
reason printed) when ../shared/data/mnist-png.zip is absent. A failing benchmark is reported and
the others still run; the exit status is 1 when any failed. This takes a long time on 2 CPUs.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST_ZIP = REPO.parent / "shared" / "data" / "mnist-png.zip"  # shard_io's default input
BENCHMARKS = (
    "shard_io",
    "shard_memory",
    "stream_input",
    "unet_speed",
    "cpu_options",
    "sample_scaling",
    "train_overhead",
    "eval_throughput",
    "peer",
    "activation_checkpointing",
)


def skip_reason(name: str) -> str | None:
    if name == "shard_io" and not MNIST_ZIP.is_file():
        return f"{MNIST_ZIP} not found (see ../shared/data/README.md)"
    return None


def run_one(name: str) -> bool:
    """Import `benchmarks.<name>` and call its `main([])`; True when it returned 0."""
    start = time.perf_counter()
    try:
        main: Callable[[list[str]], int] = importlib.import_module(f"benchmarks.{name}").main
        code = main([])
    except (Exception, SystemExit) as e:  # shard_io exits via SystemExit on a missing input
        traceback.print_exception(e)
        code = 1
    finally:
        shutdown_ray()  # a failed benchmark may leave Ray connected; the next one inits its own
    print(f"== {name}: {'ok' if code == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    return code == 0


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = p.parse_args(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        reason = skip_reason(name)
        if reason is not None:
            print(f"== {name}: skipped: {reason}")
            continue
        print(f"== {name}: {'would run' if args.dry_run else 'running'} with its defaults")
        if not args.dry_run and not run_one(name):
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
