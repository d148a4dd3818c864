"""The streaming, Ray-parallel, resumable shard writer of the shard stage.

A source is listed lazily (`sources.open_source`); each shard is one job: decode and preprocess
only its images, encode the tar (`artifacts.shards.encode_shard`), and hand back the bytes plus
exact integer pixel sums. Jobs run in this process (`data.shard_workers: 1`) or as Ray tasks
(N > 1, at most N in flight); the driver writes each tar as it arrives, so the output is the same
bytes for any N and memory holds at most N shards, whatever the dataset size.

Resume (`infra.staging`, the protocol the sample stage shares): shards are written into
`.<name>.staging/` next to the output, with `plan.json` (what decides the bytes: the params in
the manifest and a digest of every split's item list) and, after each tar, a sidecar
`<tar>.json` (its sha256, image count and pixel sums). A rerun with the same plan keeps every tar
whose sha256 matches its sidecar and writes only the rest; a different plan drops the shards.
Last, `manifest.json` is written, the plan and sidecars removed, and the folder renamed into
place. A kill (or Ctrl-C) keeps the staging folder; an error (bad data) removes it, leaving the
previous output as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from pipelines.artifacts.shards import (
    FORMAT,
    MANIFEST,
    ShardInfo,
    build_manifest,
    encode_shard,
    shard_file,
    shard_ranges,
)
from pipelines.config import DataConfig, RayConfig, to_dict
from pipelines.data.base import LazySource, LazySplit
from pipelines.data.preprocess import first_size, preprocess_kept
from pipelines.data.sources import open_source
from pipelines.infra import staging as staged
from pipelines.infra.files import bytes_digest, file_digest, recover, write_bytes, write_json
from pipelines.infra.progress import format_duration
from pipelines.infra.ray import init_ray

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"  # `<split>-<k>.tar.json`, written after the tar
PARTS = ("*.tar", f"*.tar{SIDECAR_SUFFIX}")  # the staged parts: tars and their sidecars


@dataclass(frozen=True)
class ShardJob:
    """Shard `shard` of `split`: samples start.. of `part` (one shard's item refs: picklable)."""

    split: str
    shard: int
    start: int
    part: LazySplit
    cfg: DataConfig
    size: tuple[int, int] | None  # data.resize=pad: the split's common image size

    @property
    def file(self) -> str:
        return shard_file(self.split, self.shard)


def run_job(job: ShardJob) -> tuple[bytes, ShardInfo]:
    """Decode, preprocess and encode one shard: (tar bytes, info). Runs in a Ray task or here."""
    skip = job.cfg.bad_images == "skip"
    images, kept, skipped = preprocess_kept(job.part.items, job.cfg, job.size, skip)  # (k, C, R, R)
    labels = job.part.labels[kept]
    return encode_shard(job.split, job.shard, job.start, images, labels, kept, tuple(skipped))


def manifest_params(cfg: DataConfig, seed: int) -> dict[str, Any]:
    """The params recorded in the manifest: those that decide the bytes (not shard_workers)."""
    data = to_dict(cfg)
    data.pop("shard_workers")
    return {"data": data, "seed": seed}


def shard_plan(source: LazySource, cfg: DataConfig, seed: int) -> dict[str, Any]:
    """What decides the bytes of every shard: params + each split's items and labels."""
    items = {
        name: bytes_digest(
            split.items.identity().encode() + np.ascontiguousarray(split.labels).tobytes()
        )
        for name, split in source.splits.items()
    }
    return {
        "format": FORMAT,
        "params": manifest_params(cfg, seed),
        "description": source.description,
        "classes": source.classes,
        "items": items,
    }


def staging_dir(out: Path) -> Path:
    return staged.staging_path(out, "staging")


def prepare_staging(staging: Path, plan: dict[str, Any]) -> dict[str, ShardInfo]:
    """Make `staging` hold `plan`; returns the verified finished shards it keeps, by file name."""
    existed = staging.exists()
    if not staged.prepare(staging, plan, PARTS, derived=(MANIFEST,)) and existed:
        logger.info("%s: a different plan (or none): its shards were dropped", staging)
    kept: dict[str, ShardInfo] = {}
    for sidecar in sorted(staging.glob(PARTS[1])):
        try:
            info = ShardInfo.from_json(json.loads(sidecar.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: the shard is written again
        tar = staging / info.file
        if tar.is_file() and file_digest(tar) == info.sha256:
            kept[info.file] = info
    return kept


class Progress:
    """One log line per finished shard: done/total images, rate and ETA of this run."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()

    def update(self, info: ShardInfo, shards_done: int, shards_total: int) -> None:
        self.done += info.num_images
        elapsed = time.monotonic() - self.t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        logger.info(
            "shard %s: %d/%d images (%d/%d shards), %.0f images/s, ETA %s",
            info.file,
            self.done,
            self.total,
            shards_done,
            shards_total,
            rate,
            format_duration(eta),
        )


Spec = tuple[str, int, int, int]  # (split, shard, start, stop)


def _pending(source: LazySource, cfg: DataConfig, skip: dict[str, ShardInfo]) -> list[Spec]:
    """Every shard of every split still to write, in output order."""
    specs = []
    for name, split in source.splits.items():
        for k, (start, stop) in enumerate(shard_ranges(len(split), cfg.shard_size)):
            kept = skip.get(shard_file(name, k))
            if kept is None or kept.num_images + len(kept.skipped) != stop - start:
                specs.append((name, k, start, stop))
    return specs


def _jobs(source: LazySource, cfg: DataConfig, specs: list[Spec]) -> Iterator[ShardJob]:
    """The jobs of `specs`, made as they are submitted: each holds only its shard's item refs
    (names or keys), so the driver holds one list of every item (`source`'s), not two."""
    sizes = {name: first_size(split, cfg) for name, split in source.splits.items()}
    for name, k, start, stop in specs:
        part = source.splits[name].take(range(start, stop))
        yield ShardJob(name, k, start, part, cfg, sizes[name])


def _results(jobs: Iterator[ShardJob], workers: int) -> Iterator[tuple[bytes, ShardInfo]]:
    """(tar bytes, info) of every job, here (workers 1) or by <= `workers` Ray tasks in flight."""
    if workers == 1:
        yield from map(run_job, jobs)
        return
    task = ray.remote(num_cpus=1)(run_job)
    in_flight: list[Any] = []
    while True:
        while len(in_flight) < workers and (nxt := next(jobs, None)) is not None:
            in_flight.append(task.remote(nxt))
        if not in_flight:
            return
        done, in_flight = ray.wait(in_flight, num_returns=1)
        try:
            yield ray.get(done[0])
        except ray.exceptions.RayTaskError as e:  # the task's own error (bad data), unwrapped
            for ref in in_flight:
                ray.cancel(ref)
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, Exception) else e) from None


def _shard_count(source: LazySource, shard_size: int) -> int:
    return sum(len(shard_ranges(len(s), shard_size)) for s in source.splits.values())


def write_shards_into(
    source: LazySource,
    cfg: DataConfig,
    seed: int,
    work: Path,
    kept: dict[str, ShardInfo],
    sidecars: bool,
) -> dict[str, Any]:
    """Write the shards of `source` missing from `kept` into `work`, then `manifest.json`."""
    infos = dict(kept)
    specs = _pending(source, cfg, kept)
    total = sum(len(s) for s in source.splits.values())
    n_shards = _shard_count(source, cfg.shard_size)
    progress = Progress(total, total - sum(stop - start for _, _, start, stop in specs))
    if kept:
        logger.info("%s: resuming: %d shards kept, %d to write", work, len(kept), len(specs))
    for data, info in _results(_jobs(source, cfg, specs), cfg.shard_workers):
        write_bytes(work / info.file, data)
        if sidecars:  # after the tar: a sidecar names a complete tar
            write_json(work / f"{info.file}{SIDECAR_SUFFIX}", info.to_json())
        infos[info.file] = info
        progress.update(info, len(infos), n_shards)
    splits = {
        name: [infos[shard_file(name, k)] for k in range(len(shard_ranges(len(s), cfg.shard_size)))]
        for name, s in source.splits.items()
    }
    manifest = build_manifest(
        source=cfg.source,
        description=source.description,
        classes=source.classes,
        image_shape=cfg.image_shape,
        params=manifest_params(cfg, seed),
        splits=splits,
    )
    write_json(work / MANIFEST, manifest)
    for name, shards in splits.items():
        logger.info("%s: %d images in %d shards", name, len(source.splits[name]), len(shards))
    if manifest["skipped_images"]:
        logger.warning(
            "data.bad_images=skip: %d images skipped (listed in %s under skipped_images)",
            len(manifest["skipped_images"]),
            work / MANIFEST,
        )
    return manifest


def build_shards(cfg: DataConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """Stream `cfg.source` into the new, empty folder `out_dir` (no staging, no resume)."""
    source = open_source(cfg, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: expected a new empty folder for the shards")
    return write_shards_into(source, cfg, seed, out_dir, {}, sidecars=False)


def write_resumable(cfg: DataConfig, seed: int, out: Path, ray_cfg: RayConfig) -> dict[str, Any]:
    """The shard set of `cfg` at `out`, resuming the staging folder of an interrupted run.

    On success `out` is replaced in one rename; on an error the staging folder is removed and
    `out` left as it was; a kill keeps the staging folder for the next run.
    """
    recover(out)
    source = open_source(cfg, seed)
    if cfg.shard_workers > 1:
        init_ray(ray_cfg)
    staging = staging_dir(out)
    kept = prepare_staging(staging, shard_plan(source, cfg, seed))
    try:
        manifest = write_shards_into(source, cfg, seed, staging, kept, sidecars=True)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staged.publish(staging, out, drop=(staged.PLAN, PARTS[1]))  # the output keeps no bookkeeping
    return manifest
