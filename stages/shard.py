"""DVC stage `shard`: the configured dataset -> WebDataset shards + manifest.json."""

from __future__ import annotations

from pathlib import Path

from pipelines.artifacts.shards import build_shards
from pipelines.infra.files import atomic_path
from stages.common import parser, start


def main(argv: list[str] | None = None) -> int:
    started = start(parser(__doc__ or ""), argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, _ = started
    out = Path(params.paths.shards)
    with atomic_path(out) as tmp:  # a failure leaves the previous shard set untouched
        manifest = build_shards(params.data, params.seed, tmp)
    shape = "x".join(str(d) for d in manifest["image_shape"])
    for name, split in manifest["splits"].items():
        n, k = split["num_images"], len(split["shards"])
        print(f"{out}: {name}: {n} images ({shape}) in {k} shards")
    print(f"{out}: source {manifest['source']}, pixel mean {manifest['pixel_mean']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
