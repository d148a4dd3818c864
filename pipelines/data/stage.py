"""The shard stage: the configured dataset -> WebDataset shards + manifest (`artifacts.shards`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.data.writer import build_shards, write_resumable

__all__ = ["ShardResult", "build_shards", "run_shard"]


@dataclass(frozen=True)
class ShardResult:
    """The shard set written: where, and its manifest."""

    shards_dir: Path
    manifest: dict[str, Any]

    def summary(self) -> str:
        shape = "x".join(str(d) for d in self.manifest["image_shape"])
        lines = [
            f"{self.shards_dir}: {name}: {split['num_images']} images ({shape}) in "
            f"{len(split['shards'])} shards"
            for name, split in self.manifest["splits"].items()
        ]
        lines.append(
            f"{self.shards_dir}: source {self.manifest['source']}, "
            f"pixel mean {self.manifest['pixel_mean']}"
        )
        return "\n".join(lines)


def run_shard(params: Params, root: Path) -> ShardResult:
    """Shards of `data.source` into `paths.shards`; a failure leaves the previous set untouched.

    Streamed and resumable (`pipelines.data.writer`): a killed run's finished shards are kept.
    """
    out = root / params.paths.shards
    manifest = write_resumable(params.data, params.seed, out, params.ray)
    return ShardResult(out, manifest)
