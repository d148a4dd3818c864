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
checked against the manifest in that same read the first time a process on the node opens it),
through an LRU of open shards bounded by count (`open_bound`: those the shuffle buffer's reach
spans). Batches are decoded into a ring allocated once (`batch_ring`), in this process or in
`loader_workers` DataLoader processes: worker w makes batches w, w+W, ... and the DataLoader's
in-order round robin yields 0, 1, 2, ... exactly as one process does. A split
whose decoded size fits in `cache_bytes` is decoded once into memory and indexed in the same
order (the same batches).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import os
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ddpm_core.rng import SeedPurpose, mix_seed, seeded_generator
from pipelines.artifacts.shards import (
    check_digest,
    image_shape,
    listed_shard,
    read_entries,
    read_manifest,
    shard_entries,
)
from pipelines.artifacts.tars import decode_png
from pipelines.infra.files import write_text

logger = logging.getLogger(__name__)

MAX_OPEN = 8  # the fewest open shards (tar index + file handle) kept per process
HASH_BLOCK = 1 << 16  # bytes read at a time while hashing a shard


# ----------------------------------------------------------------------------------------------
# The order, on integers only


ORDER_CHUNK = 4096  # positions of an epoch's order computed at a time (the draws' grouping)


class EpochCursor:
    """Epoch `epoch`'s order read forward, computed on the fly in O(buffer + shards) memory.

    The order: the split's shards in a permutation drawn from (seed, epoch), their images
    concatenated in stored order (the "sequence"), passed through a shuffle buffer of `buffer`
    images: the buffer takes the first b; then for each further image it emits the image at a
    uniform slot and puts the new one there; at the end it emits what is left in a random order
    (b >= n: a uniform shuffle). The slots are drawn ORDER_CHUNK at a time from the epoch's start,
    so position p is the same however the epoch is read; reading backwards restarts the epoch.
    """

    def __init__(self, counts: np.ndarray, seed: int, epoch: int, buffer: int) -> None:
        self.rng = np.random.default_rng(mix_seed(seed, epoch, SeedPurpose.EPOCH_ORDER))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        shards = self.rng.permutation(len(counts))
        self.first = offsets[shards]  # (S,) flat index of each sequence shard's first image
        self.seq_ends = np.cumsum(counts[shards]).astype(np.int64)  # (S,) one past each
        self.seq_starts = self.seq_ends - counts[shards]  # (S,) sequence position of each
        self.n = int(self.seq_ends[-1]) if len(counts) else 0
        self.b = min(buffer, self.n)
        self.buf: list[int] = self.sequence(0, self.b).tolist()
        self.emitted = 0  # positions computed so far
        self.chunk = np.empty(0, dtype=np.int64)  # positions emitted - len(chunk) .. emitted - 1

    def sequence(self, a: int, b: int) -> np.ndarray:
        """Flat indices (b - a,) at positions a..b-1 of the shard sequence."""
        q = np.arange(a, b, dtype=np.int64)
        k = np.searchsorted(self.seq_ends, q, side="right")
        return self.first[k] + (q - self.seq_starts[k])

    def advance(self) -> None:
        """Compute the next chunk of the order: ORDER_CHUNK buffer steps, or the final flush."""
        n, b, t = self.n, self.b, self.emitted
        if t < n - b:
            m = min(ORDER_CHUNK, n - b - t)
            picks = self.rng.integers(0, b, size=m).tolist()
            incoming = self.sequence(b + t, b + t + m).tolist()
            out, buf = [0] * m, self.buf
            for i, (j, item) in enumerate(zip(picks, incoming, strict=True)):
                out[i], buf[j] = buf[j], item
            self.chunk = np.asarray(out, dtype=np.int64)
        else:  # the flush: what is left, in a random order
            self.chunk = np.asarray(self.buf, dtype=np.int64)[self.rng.permutation(b)]
            self.buf = []
        self.emitted += len(self.chunk)

    def take(self, start: int, count: int) -> np.ndarray:
        """Flat indices (count,) at positions start..start+count-1 of this epoch's order."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            p = start + done
            while self.emitted <= p:
                self.advance()
            lo = self.emitted - len(self.chunk)
            if p < lo:
                raise ValueError(f"position {p} is behind the cursor ({lo}); restart the epoch")
            k = min(count - done, self.emitted - p)
            out[done : done + k] = self.chunk[p - lo : p - lo + k]
            done += k
        return out


def epoch_order(counts: np.ndarray, seed: int, epoch: int, buffer: int) -> np.ndarray:
    """The whole order (n,) of epoch `epoch` (`EpochCursor`; O(n): for tests and tools)."""
    cursor = EpochCursor(counts, seed, epoch, buffer)
    return cursor.take(0, cursor.n)


@dataclass
class Order:
    """The endless order of a split: `indices(step, ...)`, the current epochs' cursors held.

    Memory O(shuffle buffer + shards) per process, whatever the split size; the batches are
    requested in increasing steps (a step behind a cursor restarts its epoch: integer work).
    """

    counts: np.ndarray  # (S,) images per shard, manifest order
    seed: int
    buffer: int

    def __post_init__(self) -> None:
        self.n = int(self.counts.sum())
        self.cursors: dict[int, EpochCursor] = {}

    def cursor(self, epoch: int, start: int) -> EpochCursor:
        cur = self.cursors.get(epoch)
        if cur is None or start < cur.emitted - len(cur.chunk):
            cur = self.cursors[epoch] = EpochCursor(self.counts, self.seed, epoch, self.buffer)
        return cur

    def indices(self, step: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
        """Flat indices (B,) of rank `rank`'s batch `step`: positions s*G + r*B .. + B - 1
        (G = B * world_size) of the epochs' orders laid end to end (a batch may straddle)."""
        first = step * batch_size * world_size + rank * batch_size
        out = np.empty(batch_size, dtype=np.int64)
        done = 0
        while done < batch_size:
            epoch, within = divmod(first + done, self.n)
            k = min(batch_size - done, self.n - within)
            out[done : done + k] = self.cursor(epoch, within).take(within, k)
            done += k
        for old in [e for e in self.cursors if e < (first // self.n)]:
            del self.cursors[old]
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


def index_tar(path: Path, handle: IO[bytes], sha256: hashlib._Hash | None = None) -> np.ndarray:
    """(n, 2) data offset and size of every sample's `.png`, one pass over the tar.

    Without `sha256` it reads only the 512-byte headers and seeks past the data; with it, every
    byte is read once, in order, and fed to the hash (the verification and the index in one
    read). Plain ustar members, as `artifacts.tars` writes them; any other member type (pax or
    GNU long-name headers) falls back to `tarfile`, which reads the same offsets more slowly.
    """
    rows: list[tuple[int, int]] = []
    pos, block = 0, memoryview(bytearray(HASH_BLOCK))
    handle.seek(0)
    while True:
        header = handle.read(512)
        if sha256 is not None:
            sha256.update(header)
        if len(header) < 512 or header.count(0) == 512:  # end of archive (two zero blocks)
            break
        if header[156:157] not in (b"0", b"\0"):
            hash_rest(handle, sha256, block)
            return index_tar_slow(path, handle)
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ValueError(f"{path}: corrupt or unreadable tar shard at byte {pos}") from None
        name = header[:100].rstrip(b"\0").decode()
        if name.partition(".")[2] == "png":
            rows.append((pos + 512, size))
        pos += 512 + -(-size // 512) * 512
        if sha256 is None:
            handle.seek(pos)
        else:
            hash_upto(handle, sha256, block, pos)
    hash_rest(handle, sha256, block)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def hash_upto(handle: IO[bytes], sha256: hashlib._Hash, block: memoryview, end: int) -> None:
    """Feed the bytes from the handle's position up to `end` to `sha256` (a reused buffer)."""
    while (left := end - handle.tell()) > 0:
        k = handle.readinto(block[: min(left, len(block))])  # type: ignore[attr-defined]
        if not k:
            return  # truncated: the digest will not match
        sha256.update(block[:k])


def hash_rest(handle: IO[bytes], sha256: hashlib._Hash | None, block: memoryview) -> None:
    """Feed the rest of the file (the end-of-archive blocks and padding) to `sha256`."""
    while sha256 is not None and (k := handle.readinto(block)):  # type: ignore[attr-defined]
        sha256.update(block[:k])


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


def verified_marker(path: Path, entry: dict[str, Any]) -> Path:
    """This node's record that shard `path` matched `entry`'s sha256 (in the temp folder, which
    is node-local): the first process to hash a shard writes it, the others (ranks, loader
    workers) read only its headers. Named by the path and the expected digest."""
    key = hashlib.sha256(f"{path.resolve()}\0{entry['sha256']}".encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"ddpm-verified-{os.getuid()}" / key


def marker_text(path: Path) -> str:
    """What must not have changed since the hash: the file's device, inode, size and mtime."""
    st = path.stat()
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}\n"


class ShardReader:
    """Images by flat index from a split's verified shards, at most `max_open` open at once.

    Counters (for tests and the benchmark): `decoded` images, `opened` shard opens, `peak_open`
    the most shards open at one time, `verified` the shards hashed in this process (the others
    were hashed before on this node).
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
        """Shard `s` opened (LRU) and indexed; hashed in the same read the first time on this
        node (`verified_marker`), else only its headers are read."""
        if s in self.open:
            self.open.move_to_end(s)
            return self.open[s]
        entry = self.entries[s]
        path = listed_shard(self.dir, entry)
        while len(self.open) >= self.max_open:
            _, old = self.open.popitem(last=False)
            old.handle.close()
        handle = path.open("rb")
        marker, stamp = verified_marker(path, entry), marker_text(path)
        if s in self.verified or marker.is_file() and marker.read_text() == stamp:
            png = index_tar(path, handle)  # verified before: in this process or on this node
        else:
            sha256 = hashlib.sha256()
            try:
                png = index_tar(path, handle, sha256)  # hashed as it is read, checked at the end
                check_digest(path, sha256.hexdigest(), entry)
            except ValueError:
                handle.close()
                raise
            self.verified.add(s)
            write_text(marker, stamp)
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

    def read(self, flat: np.ndarray, out: np.ndarray, flip: np.ndarray) -> None:
        """Decode the images at flat indices `flat` (B,) into `out` (B, C, H, W) uint8, image i
        mirrored (W reversed) where `flip[i]`; read shard by shard, each in file order."""
        shard_of = np.searchsorted(self.ends, flat, side="right")
        for s in np.unique(shard_of).tolist():
            sel = np.flatnonzero(shard_of == s)
            opened = self.shard(s)
            first = int(self.ends[s] - len(opened.png))
            for i in sel[np.argsort(flat[sel], kind="stable")].tolist():  # file order
                arr = self.decode(s, opened, int(flat[i]) - first)  # (C, H, W)
                out[i] = arr[..., ::-1] if flip[i] else arr

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


Slot = tuple[int, int]  # (worker, slot): where in the ring a decoded batch lies


def batch_ring(
    workers: int, slots: int, batch_size: int, shape: tuple[int, ...], shared: bool
) -> torch.Tensor:
    """(workers, slots, B, C, H, W) uint8: the batches being decoded and read, allocated once.

    Worker w writes its j-th batch into slot j % slots and sends only (w, slot) to the reader.
    With loader workers the ring is in shared memory (mapped before the fork, so the workers
    write where the training process reads: no per-batch copy, pickling or new mapping).
    """
    ring = torch.empty((workers, slots, batch_size, *shape), dtype=torch.uint8)
    return ring.share_memory_() if shared else ring


class BatchSource(IterableDataset[Slot]):
    """Batches of `spec` from `start_step`, decoded into `ring` (`batch_ring`); yields where
    each lies. DataLoader worker w of W makes steps start+w, start+w+W, ... (so the in-order
    round robin gives start, start+1, ...); without workers, one slot is reused.
    """

    def __init__(
        self,
        spec: StreamSpec,
        entries: list[dict[str, Any]],
        shape: tuple[int, int, int],
        start_step: int = 0,
        ring: torch.Tensor | None = None,
    ) -> None:
        self.spec, self.entries, self.shape, self.start_step = spec, entries, shape, start_step
        self.ring = batch_ring(1, 1, spec.batch_size, shape, False) if ring is None else ring
        self.reader: ShardReader | None = None  # the reader of the last in-process iteration

    def __iter__(self) -> Iterator[Slot]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        spec = self.spec
        counts = np.asarray([e["num_images"] for e in self.entries], dtype=np.int64)
        order = Order(counts, spec.seed, spec.shuffle_buffer)
        bound = spec.max_open or open_bound(counts, spec.shuffle_buffer)
        reader = ShardReader(Path(spec.shards_dir), self.entries, self.shape, bound)
        self.reader = reader
        slots = self.ring[w].numpy()  # (K, B, C, H, W) views of this worker's slots
        no_flip = np.zeros(spec.batch_size, dtype=bool)
        try:
            for j, step in enumerate(itertools.count(self.start_step + w, workers)):
                flat = order.indices(step, spec.batch_size, spec.rank, spec.world_size)
                flip = (
                    flips(spec.batch_size, step, spec.seed, spec.rank, spec.world_size).numpy()
                    if spec.random_flip
                    else no_flip
                )
                reader.read(flat, slots[j % len(slots)], flip)
                yield w, j % len(slots)
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


def loader_batches(source: BatchSource, loader_workers: int, prefetch: int) -> Iterator[Slot]:
    """Where `source`'s batches lie in its ring, decoded in `loader_workers` processes (0: in
    this one). A slot is rewritten only after the batch `prefetch + 1` before it was taken
    (`source.ring` holds prefetch + 1 slots per worker): the DataLoader asks worker w for its
    batch j + prefetch when it hands out batch j, and for j + prefetch + 1 only on the next call,
    after the caller is done with batch j."""
    if loader_workers == 0:
        yield from source
        return
    loader = DataLoader(
        source,
        batch_size=None,  # the source yields whole batches (their slots)
        num_workers=loader_workers,
        prefetch_factor=prefetch,  # batches in flight per worker: the memory bound
        persistent_workers=True,
        multiprocessing_context="fork",  # the ring is inherited; nothing big to copy
        in_order=True,
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        del it  # shuts the workers down


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 x / 127.5 - 1 in [-1, 1] (`ddpm_core.sampling.from_uint8`,
    the same values), in a new anonymous mapping of its own: returned to the OS when the batch
    is freed whatever the allocator's thresholds, so a rank's memory stays flat."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    out = torch.frombuffer(mmap.mmap(-1, x.numel() * 4, flags), dtype=torch.float32)
    out = out.view(x.shape)  # MAP_POPULATE: its pages faulted in one call (Linux), ~2x faster
    out.copy_(x)  # the cast in place: torch.div(x, ..., out=) would cast x into a heap temporary
    return out.div_(127.5).sub_(1.0)


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
        for x in cached_batches(spec, torch.from_numpy(images), counts, start_step):
            yield unit_range(x)
        return
    logger.info("rank %d/%d: streaming %d images, %d shards", rank, world_size, n, len(counts))
    slots = prefetch + 1 if loader_workers else 1
    ring = batch_ring(max(loader_workers, 1), slots, batch_size, shape, loader_workers > 0)
    source = BatchSource(spec, entries, shape, start_step, ring)
    for w, k in loader_batches(source, loader_workers, prefetch):
        yield unit_range(ring[w, k])  # [0, 255] -> [-1, 1], before slot k is reused


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
