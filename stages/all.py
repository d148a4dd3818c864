"""Run the whole pipeline (or some stages) in one process, without DVC.

This is the entry point for `ray job submit` and scheduled retraining, where the job's working
directory has no `.git` and no DVC cache: `python -m stages.all --params params.yaml`.
Locally, prefer `dvc repro`, which skips stages whose inputs did not change.

When every stage succeeded it writes `<paths.runs>/all.json`: the params file, the stages run and
where each output went (absolute), so a checkout can bring the result back under DVC: copy each
output to its `params.yaml` path and `dvc commit -f` (then `dvc push`).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import asdict
from pathlib import Path

from pipelines.config import Params
from pipelines.infra.files import write_json
from stages.common import parser, repo_root, start

STAGES = ("shard", "fid_stats", "train", "sample", "evaluate", "quality")
log = logging.getLogger("stages.all")
RECORD = "all.json"


def record_outputs(params: Params, params_file: str, ran: list[str], root: Path) -> Path:
    """`<paths.runs>/all.json`: what this run produced and where (Ray storage is no output)."""
    paths = {k: v for k, v in asdict(params.paths).items() if k != "ray_storage"}
    outputs = {k: str((root / v).resolve()) for k, v in paths.items()}
    record = {"params": params_file, "stages": ran, "outputs": outputs}
    return write_json(root / params.paths.runs / RECORD, record)


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
    params, args = started
    # The working directory and the params file by absolute path, once: under `ray job submit`
    # the cwd is Ray's copy of the working dir, and a second node sharing this node's Ray temp
    # dir re-extracts that copy (rmtree + unzip at the same path) when it first runs a task of
    # the job; this process then sits in a deleted folder where relative paths find nothing.
    root, params_file = repo_root(), str(Path(args.params).resolve())
    ran = [s for s in STAGES if s in args.stages]
    for name in ran:
        os.chdir(root)  # by path: the folder now there, should the one we were in be gone
        log.info("stage %s", name)
        code: int = importlib.import_module(f"stages.{name}").main(["--params", params_file])
        if code != 0:
            log.error("stage %s failed with exit code %d", name, code)
            return code
    log.info("outputs recorded in %s", record_outputs(params, args.params, ran, root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
