"""DVC stage `train`: Algorithm 1 on Ray Train -> EMA weights, resolved config, metrics."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.infra.lifecycle import FINAL_WAIT_S, run_tracked
from pipelines.train.run import open_train_run, plan_run, run_lock
from pipelines.train.stage import TrainResult, run_train
from stages.common import main_for


def train(
    params: Params, root: Path, *, final_wait_s: float = FINAL_WAIT_S, **loop: Any
) -> TrainResult:
    """The stage under its run lock; `loop` goes to `run_train` (the fault tests' wrappers),
    `final_wait_s` to `run_tracked` (how long the end retries unsent MLflow calls)."""
    plan = plan_run(params, root)  # inputs checked, manifest hashed, run named: once
    with run_lock(plan):  # a second process on the same run key is refused
        tracker = open_train_run(params, root, plan)  # the cluster checked first; resumes
        body = functools.partial(run_train, plan=plan, **loop)
        return run_tracked(params, root, "train", tracker, body, final_wait_s=final_wait_s)


def run(params: Params, root: Path, _: argparse.Namespace) -> TrainResult:
    return train(params, root)


def main(argv: list[str] | None = None) -> int:
    return main_for("train", __doc__ or "", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
