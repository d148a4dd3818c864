"""DVC stage `fid_stats`: Inception statistics of the real data, computed once per shard set.

Its output folder is a DVC output, so `evaluate` reruns (new samples, new model) reuse it.
"""

from __future__ import annotations

from pipelines.fid.stage import run_fid_stats
from stages.common import main_for


def main(argv: list[str] | None = None) -> int:
    return main_for(
        "fid_stats", __doc__ or "", argv, lambda params, root, _: run_fid_stats(params, root)
    )


if __name__ == "__main__":
    raise SystemExit(main())
