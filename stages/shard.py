"""DVC stage `shard`: the configured dataset -> WebDataset shards + manifest.json."""

from __future__ import annotations

from pipelines.data.stage import run_shard
from stages.common import main_for


def main(argv: list[str] | None = None) -> int:
    return main_for("shard", __doc__ or "", argv, lambda params, root, _: run_shard(params, root))


if __name__ == "__main__":
    raise SystemExit(main())
