"""The training stream: one global order split across ranks, exact resume, epochs, flips;
streamed from the shards by random access (bounded, verified), in loader workers or cached."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_core.rng import SeedPurpose, mix_seed
from pipelines.artifacts.shard_stream import (
    BatchSource,
    Order,
    StreamSpec,
    epoch_order,
    index_tar,
    index_tar_slow,
    train_batches,
)
from pipelines.artifacts.shards import (
    SourceData,
    Split,
    image_shape,
    read_manifest,
    shard_entries,
    write_shards,
)
from pipelines.infra.files import file_digest
from tests.helpers import REPO, W, write_ids


def ids_of(batch: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Sample ids and whether each image is flipped, from a [-1, 1] batch (B, 1, 4, W)."""
    row = torch.round((batch[:, 0, 0] + 1) * 127.5).to(torch.int64)  # (B, W) back to 0..255
    flipped = (row[:, 0] == 255).tolist()
    ids = [int(r[-1] if f else r[0]) for r, f in zip(row, flipped, strict=True)]
    return ids, flipped


def take(it: object, k: int) -> list[torch.Tensor]:
    return list(itertools.islice(it, k))  # type: ignore[call-overload]


def take_from(src: BatchSource, it: object, k: int) -> list[torch.Tensor]:
    """The next `k` batches (B, C, H, W) uint8 of an in-process source, copied out of its ring."""
    return [src.ring[w, s].clone() for w, s in itertools.islice(it, k)]  # type: ignore[call-overload]


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


@pytest.mark.parametrize("buffer", [3, 64])  # a real shuffle buffer, and one >= the split
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_image_drawn_equally_often_whatever_the_worker_count(
    tmp_path: Path, world: int, buffer: int
) -> None:
    # 1,797 digits on 4 workers used to give whole shards 512/512/512/81: rank 3's images were
    # drawn 6.3x as often. Here: 3 shards of 8, 8, 4 images (uneven), global batch 12.
    write_ids(tmp_path, 20, 8)
    per_rank, steps = 12 // world, 10  # 10 global batches of 12 = 120 = 6 epochs of 20
    streams = [
        train_batches(tmp_path, "train", per_rank, r, world, 3, False, shuffle_buffer=buffer)
        for r in range(world)
    ]
    by_step = [[ids_of(next(s))[0] for s in streams] for _ in range(steps)]
    counts = torch.bincount(torch.tensor([i for st in by_step for b in st for i in b]))
    assert counts.tolist() == [6] * 20  # every image exactly once per epoch
    single = take(
        train_batches(tmp_path, "train", 12, 0, 1, 3, False, shuffle_buffer=buffer), steps
    )
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


def source(root: Path, batch: int, start: int = 0, buffer: int = 8, **kw: object) -> BatchSource:
    """The in-process batch source of rank 0 of 1 (its `reader` counts decodes and opens)."""
    manifest = read_manifest(root)
    spec = StreamSpec(str(root), "train", batch, 0, 1, 0, False, buffer, **kw)  # type: ignore[arg-type]
    return BatchSource(spec, shard_entries(manifest, "train", root), image_shape(manifest), start)


def test_resume_decodes_only_the_batches_from_step_k(tmp_path: Path) -> None:
    write_ids(tmp_path, 40, 4)  # 10 shards
    src = source(tmp_path, 6)
    full = take_from(src, iter(src), 9)  # 54 positions: batch 6 straddles epochs 0/1
    resumed = source(tmp_path, 6, start=6)
    it = iter(resumed)
    again = take_from(resumed, it, 3)
    for a, b in zip(full[6:], again, strict=True):
        assert torch.equal(a, b)
    assert resumed.reader is not None and resumed.reader.decoded == 3 * 6  # nothing before k


def test_the_shuffle_buffer_is_a_bounded_window_over_permuted_shards() -> None:
    """Output position t holds an image read at most buffer - 1 + t positions into the epoch's
    shard sequence (a buffer, not a full permutation), and epochs and seeds differ."""
    counts = np.full(50, 4)
    order = epoch_order(counts, 0, 0, 8)
    assert sorted(order.tolist()) == list(range(200))
    perm = np.random.default_rng(mix_seed(0, 0, SeedPurpose.EPOCH_ORDER)).permutation(50)
    assert not np.array_equal(perm, np.arange(50))  # the shards are permuted
    read_at = np.argsort(perm)[order // 4] * 4 + order % 4  # position in the shard sequence
    assert (read_at[:192] <= np.arange(192) + 7).all()  # never ahead of the 8-image buffer
    assert not np.array_equal(order, epoch_order(counts, 0, 1, 8))
    assert not np.array_equal(order, epoch_order(counts, 1, 0, 8))
    assert np.array_equal(order, epoch_order(counts, 0, 0, 8))


def test_memory_is_bounded_by_the_open_shards_not_the_split(tmp_path: Path) -> None:
    """200 images in 50 shards through an 8-image buffer: at most `max_open` shards open, two
    epochs' orders of integers held, each image decoded once per draw (none kept)."""
    write_ids(tmp_path, 200, 4)
    src = source(tmp_path, 8, buffer=8, max_open=3)
    it = iter(src)
    batches = take_from(src, it, 50)  # 400 draws = 2 epochs
    reader = src.reader
    assert reader is not None and reader.peak_open <= 3 and len(reader.open) <= 3
    assert reader.decoded == 400 and reader.opened >= 50  # shards reopened: the LRU evicts
    assert len(reader.verified) == 50  # hashed once each, however often reopened
    ids = [i for b in batches for i in ids_of(from_uint8_batch(b))[0]]
    assert sorted(ids[:200]) == sorted(ids[200:]) == list(range(200))


def from_uint8_batch(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 127.5 - 1.0


def test_loader_workers_give_the_same_batches(tmp_path: Path) -> None:
    write_ids(tmp_path, 30, 4)
    kw = {"shuffle_buffer": 5, "prefetch": 2}
    plain = take(train_batches(tmp_path, "train", 4, 1, 2, 7, True, **kw), 9)  # type: ignore[arg-type]
    for workers in (2, 3):
        got = take(
            train_batches(tmp_path, "train", 4, 1, 2, 7, True, loader_workers=workers, **kw),  # type: ignore[arg-type]
            9,
        )
        for a, b in zip(plain, got, strict=True):
            assert torch.equal(a, b)
    resumed = take(train_batches(tmp_path, "train", 4, 1, 2, 7, True, 4, loader_workers=2, **kw), 5)  # type: ignore[arg-type]
    for a, b in zip(plain[4:], resumed, strict=True):
        assert torch.equal(a, b)


def test_cached_and_streamed_batches_are_the_same(tmp_path: Path) -> None:
    write_ids(tmp_path, 30, 4)
    decoded = 30 * 1 * 4 * W
    for start in (0, 3):
        streamed = take(
            train_batches(tmp_path, "train", 4, 0, 2, 1, True, start, shuffle_buffer=5), 6
        )
        cached = take(
            train_batches(
                tmp_path, "train", 4, 0, 2, 1, True, start, shuffle_buffer=5, cache_bytes=decoded
            ),
            6,
        )
        for a, b in zip(streamed, cached, strict=True):
            assert torch.equal(a, b)


def test_a_damaged_shard_fails_naming_the_file(tmp_path: Path) -> None:
    write_ids(tmp_path, 12, 4)
    shard = tmp_path / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # a byte of the first member's data
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train-000001.tar: sha256 .* does not match"):
        take(train_batches(tmp_path, "train", 12, 0, 1, 0, False), 1)


def test_each_shard_is_hashed_once_per_node_in_the_read_that_indexes_it(tmp_path: Path) -> None:
    """The first reader hashes every shard while scanning it (the same digest as a separate
    pass, the same offsets); a second reader (another rank or loader worker on this node) reads
    only the headers; a shard changed after that is hashed again and named."""
    write_ids(tmp_path, 12, 4)
    path = tmp_path / "train-000001.tar"
    with path.open("rb") as handle:
        sha = hashlib.sha256()
        assert np.array_equal(index_tar(path, handle, sha), index_tar(path, handle))
    assert sha.hexdigest() == file_digest(path)
    first, second = source(tmp_path, 12), source(tmp_path, 12)
    take(iter(first), 1)
    take(iter(second), 1)
    assert first.reader is not None and len(first.reader.verified) == 3
    assert second.reader is not None and len(second.reader.verified) == 0
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1, 1))  # a changed file: its mtime differs from the marker's
    with pytest.raises(ValueError, match="train-000001.tar: sha256 .* does not match"):
        take(iter(source(tmp_path, 12)), 1)


@pytest.mark.parametrize(
    ("key", "value"),
    [("shuffle_buffer", 0), ("loader_workers", -1), ("prefetch", 0), ("cache_bytes", -1)],
)
def test_arguments_out_of_range(tmp_path: Path, key: str, value: int) -> None:
    write_ids(tmp_path, 4, 4)
    with pytest.raises(ValueError, match=f"{key}: got {value}"):
        next(train_batches(tmp_path, "train", 2, 0, 1, 0, False, **{key: value}))  # type: ignore[arg-type]


def test_the_header_scan_reads_the_offsets_tarfile_reads(tmp_path: Path) -> None:
    write_ids(tmp_path, 10, 10)
    path = tmp_path / "train-000000.tar"
    with path.open("rb") as handle:
        fast = index_tar(path, handle)
        slow = index_tar_slow(path, handle)
    assert fast.shape == (10, 2) and np.array_equal(fast, slow)
    with path.open("rb") as handle:  # each offset holds a PNG
        for offset, _ in fast.tolist():
            handle.seek(offset)
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


RSS_PROBE = """
import itertools, sys
from pathlib import Path
import torch
from pipelines.artifacts.shard_stream import train_batches

def status(key):
    return next(int(v.split()[1]) for v in Path("/proc/self/status").read_text().splitlines()
                if v.startswith(key))

torch.set_num_threads(1)
if sys.argv[3] == "workers":  # the training and inference workers' heap thresholds
    from pipelines.infra.device import configure_backends
    configure_backends(torch.device("cpu"))
torch.zeros(1) + 1  # torch's lazy start-up, outside the measurement
base = status("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
stream = train_batches(sys.argv[1], "train", 128, 0, 1, 0, True, shuffle_buffer=256,
                       cache_bytes=int(sys.argv[2]))
for _ in itertools.islice(stream, 40):  # 5,120 draws for either split size
    pass
print(status("VmHWM:") - base)
"""
RSS_SIZES = (300, 3000)  # images of 3 x 32 x 32 in shards of 100


def rss_growth(tmp_path: Path, cache_bytes: int, allocator: str = "defaults") -> float:
    """Peak RSS (KiB) over the streaming of a fresh process at the large split minus at the
    small one, as a fraction of the decoded bytes the large split adds; `allocator`: glibc's
    "defaults" or the "workers"' thresholds (`configure_backends`)."""
    probe = tmp_path / "probe.py"
    probe.write_text(RSS_PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc defaults
    env["PYTHONPATH"] = str(REPO)
    peaks = []
    for n in RSS_SIZES:
        root = tmp_path / f"split{n}"
        if not root.exists():
            rng = np.random.default_rng(n)
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            split = Split(images, np.zeros(n, dtype=np.int64))
            write_shards(SourceData({"train": split}, ["x"], "random"), root, 100, {}, "random")
        out = subprocess.run(
            [sys.executable, str(probe), str(root), str(cache_bytes), allocator],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks.append(int(out.stdout.split()[-1]))
    added = (RSS_SIZES[1] - RSS_SIZES[0]) * 3 * 32 * 32 / 1024
    return (peaks[1] - peaks[0]) / added


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
@pytest.mark.parametrize("allocator", ["defaults", "workers"])
def test_a_rank_streaming_in_process_keeps_its_memory_flat_in_the_split_size(
    tmp_path: Path, allocator: str
) -> None:
    """Under glibc's default settings (no MALLOC_* tuning, loader_workers 0), and under the
    heap thresholds the training workers set (`infra.device.keep_freed_memory`), a rank's peak
    RSS drawing the same 5,120 images does not grow with the split (300 vs 3,000 images):
    batches are decoded into one reused buffer and each float batch lives in its own mapping.
    (With the split held in memory, `cache_bytes` >= split, the same measurement gives ~1.5:
    it fails.)"""
    assert rss_growth(tmp_path, 0, allocator) < 0.25  # measured: ~0.02 (the old input: 0.4 to 4)


def test_the_order_costs_the_buffer_not_the_split() -> None:
    """The first and a resumed batch of a 2M-image split through a 1,024-image buffer: the
    order's allocations stay O(buffer + shards + chunk), far below the split's 16 MB of int64
    (an order materialised per epoch peaks at ~10x that)."""
    counts = np.full(2000, 1000)
    for step in (0, 200):  # positions 192.. and 102,592..: a resumed run simulates up to it
        tracemalloc.start()
        order = Order(counts, 0, 1024)
        flat = order.indices(step, 64, 3, 8)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1_000_000, peak  # measured: ~0.3 MB
        assert len(set(flat.tolist())) == 64
    whole = epoch_order(np.full(20, 50), 4, 0, 64)  # the cursor's order, read in pieces
    resumed = Order(np.full(20, 50), 4, 64)
    assert np.array_equal(resumed.indices(1 * 10 + 7, 5, 0, 1), whole[85:90])
