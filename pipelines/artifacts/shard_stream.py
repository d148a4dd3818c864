"""The training workers' batch stream over the shards of `artifacts.shards`, read as a stream.

One global, resumable order on INDICES, split across the ranks (docs/streaming.md):

- epoch e's order: the split's shards in a permutation drawn from (seed, e), their images
  concatenated in stored order, passed through a seeded shuffle buffer of `shuffle_buffer`
  images (the classic buffer: keep b images, emit a random one, refill from the stream; flush
  the rest in random order) simulated on the integers, so no pixel is touched to know it;
- global batch k is positions k*G .. k*G+G-1 of the endless sequence of epochs (G = per-rank
  batch x world size) and rank r takes its r-th slice: every image is drawn once per epoch
  over all ranks whatever their number, the union of the ranks' batch k does not depend on
  the world size, and batch k depends only on (seed, rank, world size, k);
- resuming at step k is integer work on the manifest's per-shard image counts: only the
  images of batches >= k are ever decoded.

Each rank reads only the images of its own slices, by random access into the shard tars (the
member offsets come from one scan of the 512-byte tar headers per shard; each shard's sha256 is
checked against the manifest, streamed, the first time a process opens it), through an LRU of
open shards bounded by count (`open_bound`: those the shuffle buffer's reach spans). Decoding
runs in `loader_workers` DataLoader processes: worker w makes batches w, w+W, ... and the
DataLoader's in-order round robin yields 0, 1, 2, ... exactly as one process does. A split
whose decoded size fits in `cache_bytes` is decoded once into memory and indexed in the same
order (the same batches).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ddpm_core.rng import SeedPurpose, mix_seed, seeded_generator
from ddpm_core.sampling import from_uint8
from pipelines.artifacts.shards import (
    image_shape,
    read_entries,
    read_manifest,
    shard_entries,
    verified_path,
)
from pipelines.artifacts.tars import decode_png

logger = logging.getLogger(__name__)

MAX_OPEN = 8  # the fewest open shards (tar index + file handle) kept per process
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's default threshold, kept from rising


def pin_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold at its default 128 KiB (as `MALLOC_MMAP_THRESHOLD_=131072`).

    Without it glibc raises the threshold after the first free of a batch-sized block, later
    batches land on the heap, and the heap grows with the number of shards opened although the
    input holds nothing more (docs/streaming.md, "The RSS caveat"). Only the loader workers pin
    it: in a process that also trains on the CPU every activation would become an mmap/munmap
    pair (a CPU training step ran at half speed). True when it took effect; False off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------
# The order, on integers only


def shuffle_buffer(seq: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`seq` (n,) through a shuffle buffer of `size` items: (n,), a permutation of `seq`.

    The buffer takes the first `size` items; then for each further item it emits the item at
    a uniform slot and puts the new one there; at the end it emits what is left in a random
    order. With size >= n this is a uniform shuffle.
    """
    n, b = len(seq), min(size, len(seq))
    buf = seq[:b].tolist()
    picks = rng.integers(0, b, size=n - b).tolist() if b else []
    out = np.empty(n, dtype=np.int64)
    incoming = seq[b:].tolist()
    for t, (j, item) in enumerate(zip(picks, incoming, strict=True)):
        out[t] = buf[j]
        buf[j] = item
    out[n - b :] = np.asarray(buf, dtype=np.int64)[rng.permutation(b)]
    return out


def epoch_order(counts: np.ndarray, seed: int, epoch: int, buffer: int) -> np.ndarray:
    """The global order (n,) of epoch `epoch`: flat indices (shard offset + member) of a split
    with `counts[s]` images in shard s, over a permutation of the shards, through the buffer."""
    rng = np.random.default_rng(mix_seed(seed, epoch, SeedPurpose.EPOCH_ORDER))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    shards = rng.permutation(len(counts))
    seq = np.concatenate([np.arange(offsets[s], offsets[s] + counts[s]) for s in shards])
    return shuffle_buffer(seq.astype(np.int64), buffer, rng)


@dataclass
class Order:
    """The endless order of a split: `indices(step, ...)` with the current epochs cached."""

    counts: np.ndarray  # (S,) images per shard, manifest order
    seed: int
    buffer: int

    def __post_init__(self) -> None:
        self.n = int(self.counts.sum())
        self.cache: dict[int, np.ndarray] = {}

    def indices(self, step: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
        """Flat indices (B,) of rank `rank`'s batch `step`: positions s*G + r*B .. + B - 1
        (G = B * world_size) of the epochs' orders laid end to end (a batch may straddle)."""
        first = step * batch_size * world_size + rank * batch_size
        pos = np.arange(first, first + batch_size, dtype=np.int64)
        epochs, within = pos // self.n, pos % self.n
        for old in [e for e in self.cache if e < int(epochs[0])]:
            del self.cache[old]
        out = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs).tolist():
            if e not in self.cache:
                self.cache[e] = epoch_order(self.counts, self.seed, e, self.buffer)
            sel = epochs == e
            out[sel] = self.cache[e][within[sel]]
        return out


def flips(batch_size: int, step: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """Whether each image of rank `rank`'s batch `step` is flipped (B,) bool: drawn for the
    whole global batch, so a position's flip does not depend on the worker count."""
    g = seeded_generator(seed, step, SeedPurpose.FLIPS)
    flipped = torch.rand(batch_size * world_size, generator=g) < 0.5
    return flipped[rank * batch_size : (rank + 1) * batch_size]


# ----------------------------------------------------------------------------------------------
# Random access into verified shards


@dataclass
class OpenShard:
    """One shard opened for random access: its file and the (offset, size) of each `.png`."""

    handle: IO[bytes]
    png: np.ndarray  # (n, 2) int64: data offset and size of member i's .png, stored order


def index_tar(path: Path, handle: IO[bytes]) -> np.ndarray:
    """(n, 2) data offset and size of every sample's `.png`, one pass over the tar headers.

    Reads only the 512-byte headers (plain ustar members, as `artifacts.tars` writes them) and
    seeks past the data; any other member type (pax or GNU long-name headers) falls back to
    `tarfile`, which reads the same offsets more slowly.
    """
    rows: list[tuple[int, int]] = []
    pos = 0
    while True:
        handle.seek(pos)
        header = handle.read(512)
        if len(header) < 512 or header.count(0) == 512:  # end of archive (two zero blocks)
            break
        if header[156:157] not in (b"0", b"\0"):
            return index_tar_slow(path, handle)
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ValueError(f"{path}: corrupt or unreadable tar shard at byte {pos}") from None
        name = header[:100].rstrip(b"\0").decode()
        if name.partition(".")[2] == "png":
            rows.append((pos + 512, size))
        pos += 512 + -(-size // 512) * 512
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def index_tar_slow(path: Path, handle: IO[bytes]) -> np.ndarray:
    """`index_tar` through `tarfile` (any member type)."""
    rows: list[tuple[int, int]] = []
    handle.seek(0)
    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:  # seeks past data: headers only
            rows = [
                (i.offset_data, i.size) for i in iter(tar.next, None) if i.name.endswith(".png")
            ]
    except tarfile.TarError as e:
        raise ValueError(f"{path}: corrupt or unreadable tar shard: {e}") from None
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def open_bound(counts: np.ndarray, buffer: int) -> int:
    """Shards kept open for a buffer of `buffer` images: those its last 8 buffer-lengths of
    input span (an image stays in the buffer past 8b arrivals with p = e^-8 < 0.04%), >= 8."""
    per_shard = max(1, int(np.median(counts[counts > 0]))) if (counts > 0).any() else 1
    return max(MAX_OPEN, 8 * -(-buffer // per_shard) + 2)


class ShardReader:
    """Images by flat index from a split's verified shards, at most `max_open` open at once.

    Counters (for tests and the benchmark): `decoded` images, `opened` shard opens, `peak_open`
    the most shards open at one time, `verified` the shards hashed in this process.
    """

    def __init__(
        self,
        shards_dir: Path,
        entries: list[dict[str, Any]],
        shape: tuple[int, int, int],
        max_open: int = MAX_OPEN,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open: got {max_open}, expected an int >= 1")
        self.dir, self.entries, self.shape, self.max_open = shards_dir, entries, shape, max_open
        counts = np.asarray([e["num_images"] for e in entries], dtype=np.int64)
        self.ends = np.cumsum(counts)  # (S,) flat index one past each shard
        self.open: OrderedDict[int, OpenShard] = OrderedDict()
        self.verified: set[int] = set()
        self.decoded = self.opened = self.peak_open = 0

    def shard(self, s: int) -> OpenShard:
        """Shard `s` opened (LRU): hashed the first time in this process, then indexed."""
        if s in self.open:
            self.open.move_to_end(s)
            return self.open[s]
        entry = self.entries[s]
        if s in self.verified:
            path = self.dir / entry["file"]
        else:
            path = verified_path(self.dir, entry)  # streamed sha256 against the manifest
            self.verified.add(s)
        while len(self.open) >= self.max_open:
            _, old = self.open.popitem(last=False)
            old.handle.close()
        handle = path.open("rb")
        png = index_tar(path, handle)
        if len(png) != entry["num_images"]:
            handle.close()
            raise ValueError(
                f"{path}: {len(png)} samples, {self.dir / 'manifest.json'} says "
                f"{entry['num_images']}"
            )
        self.open[s] = OpenShard(handle, png)
        self.opened += 1
        self.peak_open = max(self.peak_open, len(self.open))
        return self.open[s]

    def read(self, flat: np.ndarray) -> torch.Tensor:
        """Images (B, C, H, W) uint8 at flat indices `flat` (B,), read shard by shard."""
        out = np.empty((len(flat), *self.shape), dtype=np.uint8)
        shard_of = np.searchsorted(self.ends, flat, side="right")
        for s in np.unique(shard_of).tolist():
            sel = np.flatnonzero(shard_of == s)
            opened = self.shard(s)
            first = int(self.ends[s] - len(opened.png))
            for i in sel[np.argsort(flat[sel], kind="stable")].tolist():  # file order
                out[i] = self.decode(s, opened, int(flat[i]) - first)
        return torch.from_numpy(out)

    def decode(self, s: int, opened: OpenShard, member: int) -> np.ndarray:
        offset, size = (int(v) for v in opened.png[member])
        opened.handle.seek(offset)
        try:
            arr = decode_png(opened.handle.read(size))
        except Exception as e:  # PIL raises many types on corrupt bytes
            raise ValueError(f"{self.where(s, member)}: cannot decode: {e}") from None
        if arr.shape != self.shape:
            raise ValueError(f"{self.where(s, member)}: shape {arr.shape}, expected {self.shape}")
        self.decoded += 1
        return arr

    def where(self, s: int, member: int) -> str:
        return f"{self.dir / self.entries[s]['file']}: sample {member} (.png)"

    def close(self) -> None:
        for opened in self.open.values():
            opened.handle.close()
        self.open.clear()


# ----------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class StreamSpec:
    """What a rank's stream is: small, picklable (it is all a loader worker receives)."""

    shards_dir: str
    split: str
    batch_size: int  # per rank
    rank: int
    world_size: int
    seed: int
    random_flip: bool
    shuffle_buffer: int
    max_open: int | None = None  # None: open_bound(counts, shuffle_buffer)


def flipped(x: torch.Tensor, spec: StreamSpec, step: int) -> torch.Tensor:
    """The paper's random horizontal flip (Appendix B) of batch `step` (B, C, H, W)."""
    if not spec.random_flip:
        return x
    flip = flips(spec.batch_size, step, spec.seed, spec.rank, spec.world_size)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)  # flip W


class BatchSource(IterableDataset[torch.Tensor]):
    """uint8 batches (B, C, H, W) of `spec` from `start_step`; DataLoader worker w of W makes
    steps start+w, start+w+W, ... (so the in-order round robin gives start, start+1, ...)."""

    def __init__(
        self,
        spec: StreamSpec,
        entries: list[dict[str, Any]],
        shape: tuple[int, int, int],
        start_step: int = 0,
    ) -> None:
        self.spec, self.entries, self.shape, self.start_step = spec, entries, shape, start_step
        self.reader: ShardReader | None = None  # the reader of the last in-process iteration

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        spec = self.spec
        counts = np.asarray([e["num_images"] for e in self.entries], dtype=np.int64)
        order = Order(counts, spec.seed, spec.shuffle_buffer)
        bound = spec.max_open or open_bound(counts, spec.shuffle_buffer)
        reader = ShardReader(Path(spec.shards_dir), self.entries, self.shape, bound)
        self.reader = reader
        try:
            for step in itertools.count(self.start_step + w, workers):
                flat = order.indices(step, spec.batch_size, spec.rank, spec.world_size)
                yield flipped(reader.read(flat), spec, step)
        finally:
            reader.close()


def cached_batches(
    spec: StreamSpec, images: torch.Tensor, counts: np.ndarray, start_step: int
) -> Iterator[torch.Tensor]:
    """The same batches as `BatchSource`, indexed in a decoded split (N, C, H, W) uint8."""
    order = Order(counts, spec.seed, spec.shuffle_buffer)
    for step in itertools.count(start_step):
        flat = order.indices(step, spec.batch_size, spec.rank, spec.world_size)
        yield flipped(images[torch.from_numpy(flat)], spec, step)


def init_loader_worker(_: int) -> None:
    """A decode process runs no model: pin its mmap threshold, so its memory stays flat."""
    pin_mmap_threshold()


def loader_batches(
    source: BatchSource, loader_workers: int, prefetch: int
) -> Iterator[torch.Tensor]:
    """`source`'s batches, decoded in `loader_workers` processes (0: in this one)."""
    if loader_workers == 0:
        yield from source
        return
    loader = DataLoader(
        source,
        batch_size=None,  # the source yields whole batches
        num_workers=loader_workers,
        prefetch_factor=prefetch,  # batches in flight per worker: the memory bound
        persistent_workers=True,
        multiprocessing_context="fork",  # this process holds no images: nothing big to copy
        in_order=True,
        worker_init_fn=init_loader_worker,
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        del it  # shuts the workers down


def train_batches(
    shards_dir: str | Path,
    split: str,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    random_flip: bool,
    start_step: int = 0,
    *,
    shuffle_buffer: int = 1024,
    loader_workers: int = 0,
    prefetch: int = 2,
    cache_bytes: int = 0,
    max_open: int | None = None,
) -> Iterator[torch.Tensor]:
    """Endless per-rank batches x_0 (B, C, H, W) float32 in [-1, 1], from step `start_step`.

    `batch_size` is per rank. Batch k depends only on (seed, rank, world_size, k) and the
    `shuffle_buffer` size, every rank yields forever (no DDP hang), and a run resumed at k
    decodes nothing before batch k. The paper's random horizontal flip (Ho et al. 2020,
    Appendix B, CIFAR-10) flips each image with p = 1/2 when `random_flip`. The split is decoded
    into memory once when its decoded size is at most `cache_bytes` (same batches).
    """
    check_args(batch_size, rank, world_size, shuffle_buffer, loader_workers, prefetch, cache_bytes)
    root = Path(shards_dir)
    manifest = read_manifest(root)
    entries = shard_entries(manifest, split, root)
    shape = image_shape(manifest)
    counts = np.asarray([e["num_images"] for e in entries], dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise ValueError(f"{root}: split {split!r} has no images")
    spec = StreamSpec(
        str(root), split, batch_size, rank, world_size, seed, random_flip, shuffle_buffer, max_open
    )
    decoded_bytes = n * int(np.prod(shape))
    if decoded_bytes <= cache_bytes:
        logger.info("rank %d/%d: %d images cached (%d bytes)", rank, world_size, n, decoded_bytes)
        images, _ = read_entries(root, entries, shape)
        batches = cached_batches(spec, torch.from_numpy(images), counts, start_step)
    else:
        logger.info("rank %d/%d: streaming %d images, %d shards", rank, world_size, n, len(counts))
        source = BatchSource(spec, entries, shape, start_step)
        batches = loader_batches(source, loader_workers, prefetch)
    for x in batches:
        yield from_uint8(x)  # [0, 255] -> [-1, 1]


def check_args(
    batch_size: int,
    rank: int,
    world_size: int,
    shuffle_buffer: int,
    loader_workers: int,
    prefetch: int,
    cache_bytes: int,
) -> None:
    """Clear errors for arguments out of range (the config checks its keys the same way)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, expected an int >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size={world_size})")
    for name, value, low in (
        ("shuffle_buffer", shuffle_buffer, 1),
        ("loader_workers", loader_workers, 0),
        ("prefetch", prefetch, 1),
        ("cache_bytes", cache_bytes, 0),
    ):
        if value < low:
            raise ValueError(f"{name}: got {value}, expected an int >= {low}")
