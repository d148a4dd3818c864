"""DVC stage `fid_stats`: Inception statistics of the real data, computed once per shard set.

Its output folder is a DVC output, so `evaluate` reruns (new samples, new model) reuse it.
"""

from __future__ import annotations

from pipelines.evaluate.fid import compute_reference_stats
from pipelines.infra.ray import init_ray
from pipelines.infra.tracking import repo_root
from stages.common import parser, start


def main(argv: list[str] | None = None) -> int:
    started = start(parser(__doc__ or ""), argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, _ = started
    init_ray(params.ray)
    for split, (_, meta) in compute_reference_stats(params, repo_root()).items():
        state = "reused" if meta["cached"] else "computed"
        print(f"{meta['path']}: {split} split, {meta['count']} images, {meta['weights']} ({state})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
