"""The training stream: one global order split across ranks, exact resume, epochs, flips."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from pipelines.artifacts.shard_stream import train_batches
from tests.helpers import W, write_ids


def ids_of(batch: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Sample ids and whether each image is flipped, from a [-1, 1] batch (B, 1, 4, W)."""
    row = torch.round((batch[:, 0, 0] + 1) * 127.5).to(torch.int64)  # (B, W) back to 0..255
    flipped = (row[:, 0] == 255).tolist()
    ids = [int(r[-1] if f else r[0]) for r, f in zip(row, flipped, strict=True)]
    return ids, flipped


def take(it: object, k: int) -> list[torch.Tensor]:
    return list(itertools.islice(it, k))  # type: ignore[call-overload]


def test_batches_scale_cover_an_epoch_and_resume_exactly(tmp_path: Path) -> None:
    write_ids(tmp_path, 24, 8)
    stream = train_batches(tmp_path, "train", 6, 0, 1, seed=5, random_flip=False)
    batches = take(stream, 8)
    assert batches[0].shape == (6, 1, 4, W) and batches[0].dtype == torch.float32
    assert batches[0].max() == 1.0  # the 255 markers
    assert torch.allclose(batches[0][:, :, 1:], torch.tensor(100 / 127.5 - 1.0))
    epoch0 = sum((ids_of(b)[0] for b in batches[:4]), [])
    epoch1 = sum((ids_of(b)[0] for b in batches[4:]), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(24)) and epoch0 != epoch1
    resumed = take(train_batches(tmp_path, "train", 6, 0, 1, 5, False, start_step=3), 5)
    for a, b in zip(batches[3:], resumed, strict=True):
        assert torch.equal(a, b)
    other_seed = take(train_batches(tmp_path, "train", 6, 0, 1, 6, False), 1)
    assert not torch.equal(other_seed[0], batches[0])


def test_batch_straddling_epochs_and_larger_than_share(tmp_path: Path) -> None:
    write_ids(tmp_path, 5, 8)
    ids = sum(
        (ids_of(b)[0] for b in take(train_batches(tmp_path, "train", 7, 0, 1, 0, False), 5)), []
    )
    for e in range(7):  # 35 positions = 7 epochs of 5, each a permutation
        assert sorted(ids[5 * e : 5 * e + 5]) == list(range(5))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_image_drawn_equally_often_whatever_the_worker_count(
    tmp_path: Path, world: int
) -> None:
    # 1,797 digits on 4 workers used to give whole shards 512/512/512/81: rank 3's images were
    # drawn 6.3x as often. Here: 3 shards of 8, 8, 4 images (uneven), global batch 12.
    write_ids(tmp_path, 20, 8)
    per_rank, steps = 12 // world, 10  # 10 global batches of 12 = 120 = 6 epochs of 20
    streams = [train_batches(tmp_path, "train", per_rank, r, world, 3, False) for r in range(world)]
    by_step = [[ids_of(next(s))[0] for s in streams] for _ in range(steps)]
    counts = torch.bincount(torch.tensor([i for st in by_step for b in st for i in b]))
    assert counts.tolist() == [6] * 20  # every image exactly once per epoch
    single = take(train_batches(tmp_path, "train", 12, 0, 1, 3, False), steps)
    for k, batches in enumerate(by_step):  # the union of the ranks' batch k: world-independent
        assert sum(batches, []) == ids_of(single[k])[0]


def test_ranks_never_run_dry_and_rank_out_of_range(tmp_path: Path) -> None:
    write_ids(tmp_path, 3, 8)  # fewer images than 4 ranks x batch 2: the epochs just wrap
    for rank in range(4):
        assert len(take(train_batches(tmp_path, "train", 2, rank, 4, 0, False), 10)) == 10
    with pytest.raises(ValueError, match="rank 2 outside"):
        next(train_batches(tmp_path, "train", 2, 2, 2, 0, False))


def test_random_flip(tmp_path: Path) -> None:
    write_ids(tmp_path, 24, 8)
    plain = take(train_batches(tmp_path, "train", 12, 0, 1, 0, random_flip=False), 4)
    flipped = take(train_batches(tmp_path, "train", 12, 0, 1, 0, random_flip=True), 4)
    flags = [f for b in flipped for f in ids_of(b)[1]]
    assert not any(f for b in plain for f in ids_of(b)[1])
    assert 8 < sum(flags) < 40  # about half of 48
    for a, b in zip(plain, flipped, strict=True):
        assert ids_of(a)[0] == ids_of(b)[0]  # same order, only flips differ
        f = torch.tensor(ids_of(b)[1])
        assert torch.equal(a[f].flip(-1), b[f]) and torch.equal(a[~f], b[~f])
    again = take(train_batches(tmp_path, "train", 12, 0, 1, 0, random_flip=True, start_step=2), 2)
    assert torch.equal(again[0], flipped[2]) and torch.equal(again[1], flipped[3])
