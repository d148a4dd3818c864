"""Run the whole pipeline (or some stages) in one process, without DVC.

This is the entry point for `ray job submit` and scheduled retraining, where the job's working
directory has no `.git` and no DVC cache: `python -m stages.all --params params.yaml`.
Locally, prefer `dvc repro`, which skips stages whose inputs did not change.
"""

from __future__ import annotations

import importlib
import logging

from stages.common import parser, start

STAGES = ("shard", "train", "sample", "fid_stats", "evaluate", "quality")
log = logging.getLogger("stages.all")


def main(argv: list[str] | None = None) -> int:
    p = parser("Run the DDPM pipeline stages in order (shard ... evaluate, quality).")
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="which stages to run, in pipeline order (default: all)",
    )
    started = start(p, argv)  # a bad params file fails before any stage starts
    if started is None:
        return 0  # --dry-run printed the resolved config
    _, args = started
    for name in (s for s in STAGES if s in args.stages):
        log.info("stage %s", name)
        code: int = importlib.import_module(f"stages.{name}").main(["--params", args.params])
        if code != 0:
            log.error("stage %s failed with exit code %d", name, code)
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
