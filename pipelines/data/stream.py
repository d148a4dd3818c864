"""Readers of the shard stage's output: manifest, verified shards, training batch streams.

Shards are WebDataset tars (`<split>-<index:08d>.png` + `.cls` members). `load_split` reads a
whole split in-process (tests, evaluation). `train_batches` is the training workers' reader:
each rank reads its disjoint share of shards once into memory (uint8; CIFAR-10 train is 150 MB)
and then streams an infinite, exactly resumable sequence of shuffled batches.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(shards_dir: str | Path) -> dict[str, Any]:
    """`<shards_dir>/manifest.json` as a dict; a clear error when missing or malformed."""
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run the shard stage first (python -m stages.shard --params ...)"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON manifest: {e}") from None
    for key in ("splits", "image_shape"):
        if key not in manifest:
            raise ValueError(f"{path}: missing key {key!r}; rerun the shard stage")
    return manifest


def shard_entries(manifest: dict[str, Any], split: str, where: Path) -> list[dict[str, Any]]:
    """The manifest's shard list for `split` ([{file, num_images, sha256}, ...])."""
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"{where / MANIFEST}: no split {split!r}; available: {sorted(splits)}")
    entries: list[dict[str, Any]] = splits[split]["shards"]
    return entries


def verified_path(shards_dir: Path, entry: dict[str, Any]) -> Path:
    """The shard file of a manifest entry, after checking it exists and its sha256 matches."""
    path: Path = shards_dir / str(entry["file"])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard listed in {MANIFEST} is missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest[:12]}... does not match {MANIFEST} "
            f"({entry['sha256'][:12]}...); the shard changed after the shard stage wrote it "
            "(rerun the shard stage)"
        )
    return path


def read_shard(path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All samples of one tar in stored order: images (n, C, H, W) uint8, labels (n,) int64."""
    members: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info)
                assert data is not None  # regular files always have a payload
                members.setdefault(key, {})[ext] = data.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{path}: corrupt or unreadable tar shard: {e}") from None
    images = np.zeros((len(members), *shape), dtype=np.uint8)
    labels = np.zeros(len(members), dtype=np.int64)
    for i, (key, sample) in enumerate(members.items()):
        images[i], labels[i] = _decode_sample(path, key, sample, shape)
    return images, labels


def _decode_sample(
    path: Path, key: str, sample: dict[str, bytes], shape: tuple[int, int, int]
) -> tuple[np.ndarray, int]:
    where = f"{path}: member {key}"
    if "png" not in sample or "cls" not in sample:
        raise ValueError(f"{where}: expected .png and .cls members, found {sorted(sample)}")
    try:
        with Image.open(io.BytesIO(sample["png"])) as img:
            arr = np.asarray(img, dtype=np.uint8)
        label = int(sample["cls"].decode())
    except Exception as e:  # PIL/int raise many types on corrupt bytes
        raise ValueError(f"{where}: cannot decode: {e}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (H,W[,C]) -> (C,H,W)
    if arr.shape != shape:
        raise ValueError(f"{where}.png: shape {arr.shape}, manifest says {shape}")
    return arr, label


def _read_entries(
    shards_dir: Path, entries: list[dict[str, Any]], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_shard(verified_path(shards_dir, e), shape) for e in entries]
    for entry, (images, _) in zip(entries, parts, strict=True):
        if len(images) != entry["num_images"]:
            raise ValueError(
                f"{shards_dir / entry['file']}: {len(images)} samples, manifest says "
                f"{entry['num_images']}"
            )
    if not parts:
        return np.zeros((0, *shape), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_split(
    shards_dir: str | Path, split: str, max_images: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in stored order: images (N, C, H, W) uint8 and labels (N,) int64.

    Every shard's sha256 is checked against the manifest before it is read. With `max_images`
    only the first shards needed are read and the result is cut to `max_images`.
    """
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    shape: tuple[int, int, int] = tuple(manifest["image_shape"])
    entries = shard_entries(manifest, split, shards_dir)
    if max_images is not None:
        counts = np.cumsum([e["num_images"] for e in entries])
        entries = entries[: int(np.searchsorted(counts, max_images)) + 1]
    images, labels = _read_entries(shards_dir, entries, shape)
    if max_images is not None:
        images, labels = images[:max_images], labels[:max_images]
    return torch.from_numpy(images), torch.from_numpy(labels)


# ----------------------------------------------------------------------------------------------
# Training stream


def _generator(*ints: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (e.g. (seed, rank, epoch)), well mixed."""
    state = np.random.SeedSequence([abs(i) for i in ints]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]) % 2**63)


def rank_share(
    shards_dir: Path, split: str, rank: int, world_size: int
) -> tuple[np.ndarray, list[str]]:
    """The images (n, C, H, W) uint8 this rank trains on, and the shard files it read.

    shards >= world_size: shards rank, rank + world_size, ... (disjoint files per rank);
    otherwise every rank reads all shards and keeps samples rank, rank + world_size, ...
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size={world_size})")
    manifest = read_manifest(shards_dir)
    shape: tuple[int, int, int] = tuple(manifest["image_shape"])
    entries = shard_entries(manifest, split, shards_dir)
    by_shard = len(entries) >= world_size
    mine = entries[rank::world_size] if by_shard else entries
    images, _ = _read_entries(shards_dir, mine, shape)
    images = images if by_shard else images[rank::world_size]
    if len(images) == 0:
        raise ValueError(
            f"{shards_dir}: split {split!r} has too few images for rank {rank} of {world_size}"
        )
    return images, [e["file"] for e in mine]


def epoch_permutation(n: int, seed: int, rank: int, epoch: int) -> torch.Tensor:
    """The order (n,) in which a rank visits its samples in `epoch`, seeded (seed, rank, epoch)."""
    return torch.randperm(n, generator=_generator(seed, rank, epoch))


def batch_indices(
    n: int, batch_size: int, step: int, seed: int, rank: int, cache: dict[int, torch.Tensor]
) -> torch.Tensor:
    """Indices (B,) of batch `step`: positions step*B .. step*B+B-1 of the endless sequence
    epoch_permutation(0), epoch_permutation(1), ...; a batch may straddle two epochs.

    `cache` keeps the permutations of the current epochs between calls (older ones are dropped).
    """
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = pos // n, pos % n
    for old in [e for e in cache if e < int(epochs[0])]:
        del cache[old]
    out = torch.empty(batch_size, dtype=torch.int64)
    for e in torch.unique(epochs).tolist():
        if e not in cache:
            cache[e] = epoch_permutation(n, seed, rank, e)
        sel = epochs == e
        out[sel] = cache[e][offsets[sel]]
    return out


def train_batches(
    shards_dir: str | Path,
    split: str,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    random_flip: bool,
    start_step: int = 0,
) -> Iterator[torch.Tensor]:
    """Endless per-rank batches x_0 (B, C, H, W) float32 in [-1, 1], from step `start_step`.

    `batch_size` is per rank. Batch k depends only on (seed, rank, world_size, k), so a run
    resumed at step k continues the same data order, and every rank yields forever (no DDP
    hang on uneven shard splits). The shuffle is a full per-epoch permutation of the rank's
    samples (a shuffle buffer as large as the share). The paper's random horizontal flip
    (Ho et al. 2020, Appendix B, CIFAR-10) flips each image with p = 1/2 when `random_flip`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, expected an int >= 1")
    images, files = rank_share(Path(shards_dir), split, rank, world_size)
    logger.info("rank %d/%d: %d images from %s", rank, world_size, len(images), files)
    x_uint8 = torch.from_numpy(images)  # (n, C, H, W)
    cache: dict[int, torch.Tensor] = {}
    for step in itertools.count(start_step):
        x0 = x_uint8[batch_indices(len(x_uint8), batch_size, step, seed, rank, cache)]
        if random_flip:
            flip = torch.rand(batch_size, generator=_generator(seed, rank, step, 7)) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)  # flip W
        yield x0.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
