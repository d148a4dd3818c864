"""DVC stage `sample`: EMA model -> N images (Algorithm 2 on a Ray actor pool), figures, metrics.

Rerunning after a crash resumes: shards already complete and verified are kept, under `dvc repro`
too (the samples folder is `persist: true` in dvc.yaml; docs/stages.md, Sampling).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import Params
from pipelines.infra.lifecycle import open_child_run, run_tracked
from pipelines.sample.stage import SampleResult, run_sample
from stages.common import main_for


def run(params: Params, root: Path, _: argparse.Namespace) -> SampleResult:
    tracker = open_child_run(params, "sample", root)
    return run_tracked(params, root, "sample", tracker, run_sample)


def main(argv: list[str] | None = None) -> int:
    return main_for("sample", __doc__ or "", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
