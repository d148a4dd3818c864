"""DVC stage `evaluate`: FID / IS of the samples, NLL bits/dim and the rate-distortion curve."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import Params
from pipelines.evaluate.stage import EvaluateResult, run_evaluate
from pipelines.infra.lifecycle import open_child_run, run_tracked
from stages.common import main_for


def run(params: Params, root: Path, _: argparse.Namespace) -> EvaluateResult:
    tracker = open_child_run(params, "evaluate", root)
    return run_tracked(params, root, "evaluate", tracker, run_evaluate)


def main(argv: list[str] | None = None) -> int:
    return main_for("evaluate", __doc__ or "", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
