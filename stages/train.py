"""DVC stage `train`: Algorithm 1 on Ray Train -> EMA weights, resolved config, metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import Params
from pipelines.infra.lifecycle import run_tracked
from pipelines.train.run import open_train_run, run_lock
from pipelines.train.stage import TrainResult, run_train
from stages.common import main_for


def run(params: Params, root: Path, _: argparse.Namespace) -> TrainResult:
    with run_lock(params, root):  # a second process on the same run key is refused
        tracker = open_train_run(params, root)  # inputs and cluster checked first; resumes
        return run_tracked(params, root, "train", tracker, run_train)


def main(argv: list[str] | None = None) -> int:
    return main_for(__doc__ or "", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
