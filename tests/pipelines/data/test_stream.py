"""The per-rank training stream: disjoint shares, exact resume, epochs, flips."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from pipelines.data.stream import rank_share, train_batches
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


@pytest.mark.parametrize(("n", "shard_size"), [(30, 8), (10, 16)])  # 4 shards; 1 shard
def test_ranks_are_disjoint_and_never_run_dry(tmp_path: Path, n: int, shard_size: int) -> None:
    write_ids(tmp_path, n, shard_size)
    seen = []
    for rank in range(2):
        share, _ = rank_share(tmp_path, "train", rank, 2)
        seen.append(set(share[:, 0, 0, 0].tolist()))
        batches = take(train_batches(tmp_path, "train", 4, rank, 2, 0, False), 20)  # > 1 epoch
        assert {i for b in batches for i in ids_of(b)[0]} == seen[rank]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))


def test_uneven_shards_and_too_few_images(tmp_path: Path) -> None:
    write_ids(tmp_path, 20, 8)  # 3 shards (8, 8, 4) over 2 ranks: rank 0: shards 0, 2; rank 1: 1
    assert [len(rank_share(tmp_path, "train", r, 2)[0]) for r in (0, 1)] == [12, 8]
    assert len(take(train_batches(tmp_path, "train", 8, 1, 2, 0, False), 10)) == 10
    with pytest.raises(ValueError, match="too few images for rank 3 of 4"):
        rank_share(write_ids(tmp_path / "tiny", 3, 8), "train", 3, 4)
    with pytest.raises(ValueError, match="rank 2 outside"):
        rank_share(tmp_path, "train", 2, 2)


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
