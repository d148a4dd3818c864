"""The shard stage: the configured dataset -> WebDataset shards + manifest (`artifacts.shards`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts.shards import write_shards
from pipelines.config import DataConfig, Params, to_dict
from pipelines.data.sources import load_source
from pipelines.infra.files import atomic_path


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


def build_shards(cfg: DataConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """Read `cfg.source` and write its shards + manifest into the new folder `out_dir`."""
    data = load_source(cfg, seed)
    return write_shards(
        data, out_dir, cfg.shard_size, {"data": to_dict(cfg), "seed": seed}, cfg.source
    )


def run_shard(params: Params, root: Path) -> ShardResult:
    """Shards of `data.source` into `paths.shards`; a failure leaves the previous set untouched."""
    out = root / params.paths.shards
    with atomic_path(out) as tmp:
        manifest = build_shards(params.data, params.seed, tmp)
    return ShardResult(out, manifest)
