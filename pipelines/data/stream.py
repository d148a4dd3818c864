"""The training workers' batch stream: each rank's share of the shards, in a resumable order.

Each rank reads its disjoint share of the verified shards (`artifacts.shards`) once into memory
(uint8; CIFAR-10 train is 150 MB) and then streams an infinite, exactly resumable sequence of
shuffled batches: batch k depends only on (seed, rank, world size, k).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ddpm_core.rng import seeded_generator
from ddpm_core.sampling import from_uint8
from pipelines.artifacts.shards import image_shape, read_entries, read_manifest, shard_entries

logger = logging.getLogger(__name__)


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
    entries = shard_entries(manifest, split, shards_dir)
    by_shard = len(entries) >= world_size
    mine = entries[rank::world_size] if by_shard else entries
    images, _ = read_entries(shards_dir, mine, image_shape(manifest))
    images = images if by_shard else images[rank::world_size]
    if len(images) == 0:
        raise ValueError(
            f"{shards_dir}: split {split!r} has too few images for rank {rank} of {world_size}"
        )
    return images, [e["file"] for e in mine]


def epoch_permutation(n: int, seed: int, rank: int, epoch: int) -> torch.Tensor:
    """The order (n,) in which a rank visits its samples in `epoch`, seeded (seed, rank, epoch)."""
    return torch.randperm(n, generator=seeded_generator(seed, rank, epoch))


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
            flip = torch.rand(batch_size, generator=seeded_generator(seed, rank, step, 7)) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)  # flip W
        yield from_uint8(x0)  # [0, 255] -> [-1, 1]
