"""The sample stage's output: one tar of lossless PNGs per fixed index range, and a manifest.

A shard `samples-{b:06d}.tar` holds images [start, stop) as samples `{i:08d}` with one `.png`
member each (`artifacts.tars`, the data shards' format), written byte-stably and atomically, so
a shard either exists completely or not at all. `plan.json` records what the pixels depend on
(seed, weights, stride, batch size...); `manifest.json`, written last, lists every shard with
its sha256 and an `ordered_hash` over those hashes, which equals across runs with any number of
workers. `load_samples` is the verified reader.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_core.samplers.registry import is_paper
from pipelines.artifacts.tars import ShardError, decode_png, encode_png, read_tar, tar_bytes
from pipelines.config import Params, to_dict
from pipelines.infra import staging as staged
from pipelines.infra.accel import InferenceOptions
from pipelines.infra.files import bytes_digest, file_digest, listed_file, write_bytes, write_json
from pipelines.infra.model_runner import sample_options
from pipelines.infra.sampler_params import sampler_of, sampler_record

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_GLOB = "samples-*.tar"
OWNER = ""  # the tar member owner (empty, as when the format was fixed)


@dataclass(frozen=True)
class ShardSpec:
    """Work unit b: images [start, stop) written to `samples-{b:06d}.tar`."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"samples-{self.index:06d}.tar"

    @property
    def count(self) -> int:
        return self.stop - self.start

    def keys(self) -> list[str]:
        return [f"{i:08d}" for i in range(self.start, self.stop)]


def plan_shards(num_images: int, batch_size: int) -> list[ShardSpec]:
    """Fixed index ranges [b*B, min((b+1)*B, N)); independent of the number of workers."""
    if num_images < 1 or batch_size < 1:
        raise ValueError(
            f"plan_shards: need num_images, batch_size >= 1, got {num_images}, {batch_size}"
        )
    return [
        ShardSpec(b, start, min(start + batch_size, num_images))
        for b, start in enumerate(range(0, num_images, batch_size))
    ]


# ----------------------------------------------------------------------------------------------
# Shards


def shard_bytes(images: np.ndarray, spec: ShardSpec) -> bytes:
    """The exact shard bytes for `images`: (n, C, H, W) uint8 with n = spec.count."""
    if images.shape[0] != spec.count:
        raise ValueError(
            f"{spec.name}: {images.shape[0]} images for range [{spec.start}, {spec.stop})"
        )
    samples = (
        (key, {"png": encode_png(image)}) for key, image in zip(spec.keys(), images, strict=True)
    )
    return tar_bytes(samples, OWNER)


def write_shard(images: torch.Tensor, spec: ShardSpec, out_dir: Path) -> str:
    """Write shard `spec` atomically; returns its sha256.

    Args:
        images: (n, C, H, W) uint8, image k is index spec.start + k.
    """
    data = shard_bytes(images.cpu().numpy(), spec)
    write_bytes(out_dir / spec.name, data)
    return bytes_digest(data)


def read_shard_images(data: bytes, spec: ShardSpec, where: str) -> np.ndarray:
    """Decode a shard's bytes into (n, C, H, W) uint8; ShardError if samples are not the range."""
    samples = read_tar(data, where)
    keys = [key for key, _ in samples]
    if keys != spec.keys():
        raise ShardError(
            f"{where}: samples {keys[:3]}... (n={len(keys)}), expected "
            f"{spec.count} images {spec.keys()[:1]}.."
        )
    images = []
    for key, members in samples:
        if set(members) != {"png"}:
            raise ShardError(f"{where}: sample {key} has members {sorted(members)}, expected png")
        try:
            images.append(decode_png(members["png"]))
        except (OSError, ValueError) as e:
            raise ShardError(f"{where}: sample {key}: cannot decode ({e})") from e
    return np.stack(images)


def verify_shard(path: Path, spec: ShardSpec, shape: tuple[int, int, int]) -> str | None:
    """sha256 of `path` if it is exactly the shard `write_shard` makes for its pixels, else None.

    Decodes every PNG, checks the (C, H, W) shape and re-encodes: truncated, partial, corrupt or
    foreign files are all rejected (and will be redone), never counted as complete.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        images = read_shard_images(data, spec, str(path))
        if images.shape[1:] != shape:
            raise ShardError(f"{path}: image shape {images.shape[1:]}, expected {shape}")
        if shard_bytes(images, spec) != data:
            raise ShardError(f"{path}: bytes differ from a clean re-encoding")
    except ShardError as e:
        log.warning("redoing shard: %s", e)
        return None
    return bytes_digest(data)


# ----------------------------------------------------------------------------------------------
# Plan and manifest


def ordered_hash(shard_hashes: list[str]) -> str:
    """sha256 over the per-shard sha256 hex strings in index order (one per line)."""
    return bytes_digest("".join(h + "\n" for h in shard_hashes).encode())


def sampling_plan(params: Params, weights: Path) -> dict[str, Any]:
    """What the shards depend on: their pixels (seed, stride, shape, diffusion, weights, sampler,
    the network's execution options) and their layout (`batch_size`: one shard a batch). A change
    invalidates existing shards."""
    plan: dict[str, Any] = {
        "seed": params.seed,
        "batch_size": params.sample.batch_size,
        "stride": params.sample.stride,
        "image_shape": list(params.data.image_shape),
        "diffusion": to_dict(params.diffusion),
        "weights_sha256": file_digest(weights),
    }
    if not is_paper(sampler_of(params)):  # the paper's sampler keeps the plan it always had
        plan |= sampler_record(params)
    execution = execution_options(params)
    if execution != DEFAULT_EXECUTION:  # eager fp32 keeps the plan it always had
        plan["execution"] = execution
    return plan


# How the network runs when sampling: bf16 autocast, channels_last and compiled kernels each round
# differently from the eager fp32 network, so they change pixels (not the images' distribution).
DEFAULT_EXECUTION: dict[str, Any] = asdict(InferenceOptions())


def execution_options(params: Params) -> dict[str, Any]:
    """The sample.* options that change how the network computes (`InferenceOptions`)."""
    return asdict(sample_options(params))


def work_dir(out_dir: Path, plan: dict[str, Any]) -> Path:
    """Where shards of `plan` are written: `out_dir` itself, or a staging sibling.

    When `out_dir` holds a complete set (a manifest) of a different plan, the new set is written
    to `.<name>.plan-<hash>/` beside it and only moved into place once complete (`publish`), so
    a failed or killed resample leaves the old samples and manifest as they were; rerunning the
    same plan resumes in the same staging folder.
    """
    if staged.read_plan(out_dir) == plan or not (out_dir / MANIFEST).is_file():
        return out_dir
    key = bytes_digest(json.dumps(plan, sort_keys=True).encode())[:12]
    return staged.staging_path(out_dir, f"plan-{key}")


def publish(work: Path, out_dir: Path) -> None:
    """Move a complete staging folder (`work_dir`) onto `out_dir`; nothing when they are one."""
    staged.publish(work, out_dir)


def prepare_dir(out_dir: Path, plan: dict[str, Any], specs: list[ShardSpec]) -> None:
    """Make `out_dir` ready for (re)sampling under `plan` (`infra.staging.prepare`).

    Removes temporaries of dead writers (a live writer's are kept), tars from a different plan
    (seed, weights, stride, batch size...), tars outside the current ranges and the manifest
    (rewritten only when every shard is done); keeps the rest for verification (`verify_shard`).
    Refuses a folder holding other files.
    """
    wanted = {s.name for s in specs}
    staged.prepare(out_dir, plan, (SHARD_GLOB,), (MANIFEST,), wanted.__contains__)


def write_manifest(
    out_dir: Path, plan: dict[str, Any], specs: list[ShardSpec], hashes: list[str]
) -> dict[str, Any]:
    """`manifest.json` (byte-stable: no timings) once every shard is written; returns it.

    The driver re-checks each shard against the hash its actor reported before listing it.
    """
    for spec, digest in zip(specs, hashes, strict=True):
        if file_digest(out_dir / spec.name) != digest:
            raise RuntimeError(f"{out_dir / spec.name}: changed after its actor reported it")
    shards = [
        {"index": s.index, "file": s.name, "start": s.start, "stop": s.stop, "sha256": h}
        for s, h in zip(specs, hashes, strict=True)
    ]
    manifest = {
        **{k: plan[k] for k in ("seed", "batch_size", "stride", "image_shape", "weights_sha256")},
        "num_images": specs[-1].stop,
        "shards": shards,
        "ordered_hash": ordered_hash(hashes),
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_manifest(samples_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`<samples_dir>/manifest.json`; FileNotFoundError naming the sample stage when missing."""
    path = Path(samples_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sample manifest (run the sample stage first)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def check_current(samples_dir: Path, params: Params, weights: Path) -> None:
    """ValueError naming the stale setting when the samples were not drawn by `params` from
    `weights` (the manifest's record and `plan.json` against the current plan).

    The manifest is written after `plan.json` and removed before a new plan is, so together
    they say what the listed pixels were drawn with: seed, stride, batch size, image shape,
    the diffusion (T, betas, variance) and the weights' sha256.
    """
    manifest, recorded = read_manifest(samples_dir), staged.read_plan(samples_dir) or {}
    recorded |= {k: v for k, v in manifest.items() if k in recorded or k == "weights_sha256"}
    for key, want in sampling_plan(params, weights).items():
        have = recorded.get(key, "<not recorded>")
        if have != want:
            what = f"weights {weights}" if key == "weights_sha256" else "params"
            raise ValueError(
                f"{samples_dir / MANIFEST}: stale samples: drawn with {key}={have!r}, but the "
                f"current {what} give {want!r}; rerun the sample stage (dvc repro sample)"
            )


def load_samples(
    samples_dir: str | os.PathLike[str], max_images: int | None = None
) -> torch.Tensor:
    """Generated images in index order, each shard checked against the manifest's sha256.

    Returns:
        (N, C, H, W) uint8 with N = min(max_images, manifest num_images).
    """
    root = Path(samples_dir)
    manifest = read_manifest(root)
    n = manifest["num_images"] if max_images is None else min(max_images, manifest["num_images"])
    chunks: list[np.ndarray] = []
    for entry in manifest["shards"]:
        if sum(len(c) for c in chunks) >= n:
            break
        path = listed_file(root, entry["file"], root / MANIFEST)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {root / MANIFEST} but missing")
        data = path.read_bytes()
        if bytes_digest(data) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from {root / MANIFEST}")
        spec = ShardSpec(int(entry["index"]), int(entry["start"]), int(entry["stop"]))
        chunks.append(read_shard_images(data, spec, str(path)))
    if not chunks:
        raise ValueError(f"load_samples: {root / MANIFEST} lists no shards")
    return torch.from_numpy(np.concatenate(chunks)[:n])
