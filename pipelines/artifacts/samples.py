"""Sample shards on disk: one tar of lossless PNGs per fixed index range, verified on reuse.

A shard `samples-{b:06d}.tar` holds images [start, stop) as members `{i:08d}.png` (WebDataset
layout: key `{i:08d}`, extension `png`). Tars are written byte-stably (mtime 0, fixed owner and
mode, members in index order) to a temporary file that is renamed into place, so a shard either
exists completely or not at all. `manifest.json` lists every shard with its sha256 and an
`ordered_hash` over those hashes, which equals across runs with any number of workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.infra.files import write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PLAN = "plan.json"
SHARD_GLOB = "samples-*.tar"


class ShardError(ValueError):
    """A shard file that is not exactly what `write_shard` produces for its index range."""


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

    def member_names(self) -> list[str]:
        return [f"{i:08d}.png" for i in range(self.start, self.stop)]


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
# PNG and tar encoding


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) uint8 with C in {1, 3} -> lossless PNG bytes (L or RGB)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"encode_png: expected (C,H,W) uint8, C in 1|3, got {image.dtype} {image.shape}"
        )
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))  # (H, W, C)
    buf = io.BytesIO()
    Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (L or RGB) -> (C, H, W) uint8."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "RGB"):
            raise ValueError(f"decode_png: expected an L or RGB PNG, got mode {img.mode}")
        arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def tar_bytes(images: np.ndarray, spec: ShardSpec) -> bytes:
    """The exact shard bytes for `images`: (n, C, H, W) uint8 with n = spec.count."""
    if images.shape[0] != spec.count:
        raise ValueError(
            f"{spec.name}: {images.shape[0]} images for range [{spec.start}, {spec.stop})"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, image in zip(spec.member_names(), images, strict=True):
            data = encode_png(image)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444  # mtime 0: byte-stable shards
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_shard(images: torch.Tensor, spec: ShardSpec, out_dir: Path) -> str:
    """Write shard `spec` atomically (temp file + os.replace); returns its sha256.

    Args:
        images: (n, C, H, W) uint8, image k is index spec.start + k.
    """
    data = tar_bytes(images.cpu().numpy(), spec)
    final = out_dir / spec.name
    tmp = out_dir / f".{spec.name}.{uuid.uuid4().hex[:8]}.tmp"  # unique: retries may overlap
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return sha256(data)


def read_tar_images(data: bytes, spec: ShardSpec, where: str) -> np.ndarray:
    """Decode a shard's bytes into (n, C, H, W) uint8; ShardError if members are not the range."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            if names != spec.member_names():
                raise ShardError(
                    f"{where}: members {names[:3]}... (n={len(names)}), expected "
                    f"{spec.count} images {spec.member_names()[:1]}.."
                )
            images = []
            for m in members:
                f = tar.extractfile(m)
                if f is None:
                    raise ShardError(f"{where}: member {m.name} is not a file")
                images.append(decode_png(f.read()))
    except (tarfile.TarError, OSError, ValueError) as e:
        if isinstance(e, ShardError):
            raise
        raise ShardError(f"{where}: unreadable shard ({e})") from e
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
        images = read_tar_images(data, spec, str(path))
        if images.shape[1:] != shape:
            raise ShardError(f"{path}: image shape {images.shape[1:]}, expected {shape}")
        if tar_bytes(images, spec) != data:
            raise ShardError(f"{path}: bytes differ from a clean re-encoding")
    except ShardError as e:
        log.warning("redoing shard: %s", e)
        return None
    return sha256(data)


# ----------------------------------------------------------------------------------------------
# Manifest and plan


def ordered_hash(shard_hashes: list[str]) -> str:
    """sha256 over the per-shard sha256 hex strings in index order (one per line)."""
    return sha256("".join(h + "\n" for h in shard_hashes).encode())


def read_manifest(samples_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(samples_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sample manifest (run the sample stage first)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def prepare_dir(out_dir: Path, plan: dict[str, Any], specs: list[ShardSpec]) -> None:
    """Make `out_dir` ready for (re)sampling under `plan`.

    Removes temp files of crashed writers, tars from a different plan (seed, weights, stride,
    batch size...) and tars outside the current ranges; keeps the rest for verification.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in out_dir.glob(".samples-*.tmp"):
        tmp.unlink(missing_ok=True)
    plan_path = out_dir / PLAN
    old = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    wanted = {s.name for s in specs}
    for tar in out_dir.glob(SHARD_GLOB):
        if old != plan or tar.name not in wanted:
            tar.unlink()
    (out_dir / MANIFEST).unlink(missing_ok=True)  # rewritten only when every shard is done
    write_json(plan_path, plan)


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
        path = root / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {root / MANIFEST} but missing")
        data = path.read_bytes()
        if sha256(data) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from {root / MANIFEST}")
        spec = ShardSpec(int(entry["index"]), int(entry["start"]), int(entry["stop"]))
        chunks.append(read_tar_images(data, spec, str(path)))
    if not chunks:
        raise ValueError(f"load_samples: {root / MANIFEST} lists no shards")
    return torch.from_numpy(np.concatenate(chunks)[:n])
