"""DVC stage `fid_stats`: Inception statistics of the real data, computed once per shard set.

Its output folder is a DVC output, so `evaluate` reruns (new samples, new model) reuse it.
"""

from __future__ import annotations

import logging

from pipelines.fid import compute_reference_stats
from pipelines.ray_utils import init_ray
from pipelines.tracking import repo_root
from stages.common import load_params, parser, print_config


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__ or "").parse_args(argv)
    params = load_params(args.params)
    if args.dry_run:
        print_config(params)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    init_ray(params.ray)
    for split, (_, meta) in compute_reference_stats(params, repo_root()).items():
        state = "reused" if meta["cached"] else "computed"
        print(f"{meta['path']}: {split} split, {meta['count']} images, {meta['weights']} ({state})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
