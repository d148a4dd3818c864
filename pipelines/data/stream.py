"""The training workers' batch stream: one global, resumable order split across the ranks.

Every rank reads the whole verified split (`artifacts.shards`) once into memory (uint8; CIFAR-10
train is 150 MB) and walks the same endless sequence of global per-epoch permutations of all
images; global batch k is positions k*G .. k*G+G-1 of that sequence (G = per-rank batch x world
size) and rank r takes its r-th slice. So every image is drawn equally often whatever the
number of workers (no rank cycles a smaller share faster), the union of the ranks' batches k
is the same for 1, 2 or 8 workers at one global batch size, and batch k depends only on
(seed, rank, world size, k): a resumed run continues the same order.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ddpm_core.rng import SeedPurpose, seeded_generator
from ddpm_core.sampling import from_uint8
from pipelines.artifacts.shards import image_shape, read_entries, read_manifest, shard_entries

logger = logging.getLogger(__name__)


def split_images(shards_dir: Path, split: str) -> tuple[np.ndarray, list[str]]:
    """All images (n, C, H, W) uint8 of `split`, each shard verified, and the files read."""
    manifest = read_manifest(shards_dir)
    entries = shard_entries(manifest, split, shards_dir)
    images, _ = read_entries(shards_dir, entries, image_shape(manifest))
    if len(images) == 0:
        raise ValueError(f"{shards_dir}: split {split!r} has no images")
    return images, [e["file"] for e in entries]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The global order (n,) in which all ranks together visit the images in `epoch`."""
    return torch.randperm(n, generator=seeded_generator(seed, epoch))


def batch_indices(
    n: int,
    batch_size: int,
    step: int,
    seed: int,
    rank: int,
    world_size: int,
    cache: dict[int, torch.Tensor],
) -> torch.Tensor:
    """Indices (B,) of rank `rank`'s batch `step`: positions s*G + r*B .. s*G + r*B + B - 1
    (G = B * world_size) of the endless sequence epoch_permutation(0), (1), ...; a batch may
    straddle epochs.

    `cache` keeps the permutations of the current epochs between calls (older ones are dropped).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size={world_size})")
    first = step * batch_size * world_size + rank * batch_size
    pos = torch.arange(first, first + batch_size)
    epochs, offsets = pos // n, pos % n
    for old in [e for e in cache if e < int(epochs[0])]:
        del cache[old]
    out = torch.empty(batch_size, dtype=torch.int64)
    for e in torch.unique(epochs).tolist():
        if e not in cache:
            cache[e] = epoch_permutation(n, seed, e)
        sel = epochs == e
        out[sel] = cache[e][offsets[sel]]
    return out


def flips(batch_size: int, step: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """Whether each image of rank `rank`'s batch `step` is flipped (B,) bool: drawn for the
    whole global batch, so a position's flip does not depend on the worker count."""
    g = seeded_generator(seed, step, SeedPurpose.FLIPS)
    flipped = torch.rand(batch_size * world_size, generator=g) < 0.5
    return flipped[rank * batch_size : (rank + 1) * batch_size]


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
    hang). The shuffle is one full permutation of the split per epoch, shared by all ranks. The
    paper's random horizontal flip (Ho et al. 2020, Appendix B, CIFAR-10) flips each image with
    p = 1/2 when `random_flip`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, expected an int >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size={world_size})")
    images, files = split_images(Path(shards_dir), split)
    logger.info("rank %d/%d: %d images from %s", rank, world_size, len(images), files)
    x_uint8 = torch.from_numpy(images)  # (n, C, H, W)
    cache: dict[int, torch.Tensor] = {}
    for step in itertools.count(start_step):
        x0 = x_uint8[batch_indices(len(x_uint8), batch_size, step, seed, rank, world_size, cache)]
        if random_flip:
            flip = flips(batch_size, step, seed, rank, world_size)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)  # flip W
        yield from_uint8(x0)  # [0, 255] -> [-1, 1]
