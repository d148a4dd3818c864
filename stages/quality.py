"""DVC stage `quality`: FID vs sampler steps (DDIM, strided ancestral) and over the reverse process.

Off by default (header-only plot files); see docs/paper-fidelity.md, "Sample quality beyond one
number".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import Params
from pipelines.infra.lifecycle import open_child_run, run_tracked
from pipelines.quality.stage import QualityResult, run_quality
from stages.common import main_for


def run(params: Params, root: Path, _: argparse.Namespace) -> QualityResult:
    tracker = open_child_run(params, "quality", root)
    return run_tracked(params, root, "quality", tracker, run_quality)


def main(argv: list[str] | None = None) -> int:
    return main_for("quality", __doc__ or "", argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
