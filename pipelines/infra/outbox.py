"""Tracking calls that wait for the server: buffered, retried with backoff, kept on disk.

An `Outbox` sends each call (an `Op`, a small JSON-able dict) at once; when the server cannot be
reached it queues the call instead of raising, warns once per outage, retries with exponential
backoff on later calls (never more than one attempt per call while waiting, so a training loop
is not held up) and sends the queue in order once the server answers again.

With a `folder`, a queued call is also appended to `<folder>/journal.jsonl` (and a file it
uploads copied into `<folder>/files/`, since callers log temporary files): a process that dies or
ends during an outage leaves its unsent calls there, and the next `Outbox` on that folder sends
them first. The journal is deleted once everything in it has been sent. Re-sending a call that
had reached the server is harmless when the call is idempotent (MLflow metrics with the same key,
step, timestamp and value are stored once; an artifact upload overwrites the same path).
"""

from __future__ import annotations

import collections
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Op = dict[str, Any]  # {"op": <kind>, ...}: what `send` understands; "file" is a local path

MAX_OPS = 100_000  # queued calls held in memory; older ones stay only in the journal
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
JOURNAL = "journal.jsonl"


class PermanentError(Exception):
    """`send` raises this for a call the server refused for good (retrying cannot help)."""


class Outbox:
    """Ordered, bounded, optionally durable queue of calls to a server that may be down."""

    def __init__(
        self,
        send: Callable[[Op], None],
        folder: Path | None = None,
        what: str = "tracking server",
        max_ops: int = MAX_OPS,
    ) -> None:
        self.send, self.folder, self.what, self.max_ops = send, folder, what, max_ops
        self.ops: collections.deque[Op] = collections.deque()
        self.dropped = 0  # fell out of memory (still in the journal when there is one)
        self.down_since: float | None = None
        self.delay = RETRY_FIRST_S
        self.next_try = 0.0
        self.seq = 0
        if folder is not None and (folder / JOURNAL).is_file():
            self.ops.extend(read_journal(folder / JOURNAL))
            self.seq = len(self.ops)
            log.warning(
                "%s: %d unsent calls of an earlier run, sending them first", folder, len(self)
            )

    def __len__(self) -> int:
        return len(self.ops) + self.dropped

    def submit(self, op: Op) -> None:
        """Send `op` now, or queue it (journaled) while the server is down or others wait."""
        if not self.ops and self.down_since is None and self._try(op):
            return
        self._queue(op)
        self.flush()

    def flush(self, wait_s: float = 0.0) -> bool:
        """Send queued calls in order; keep retrying (backoff) for up to `wait_s` seconds.

        Returns True when nothing is left unsent.
        """
        deadline = time.monotonic() + wait_s
        while True:
            now = time.monotonic()
            if now >= self.next_try:
                while self.ops and self._try(self.ops[0]):
                    self.ops.popleft()
                if not self.ops:
                    self._drained()
                    return self.dropped == 0
            if now >= deadline:
                return False
            time.sleep(max(0.05, min(self.next_try, deadline) - now))

    # ------------------------------------------------------------------------------------------

    def _try(self, op: Op) -> bool:
        """One attempt: True when sent (or refused for good, which is logged), False if down."""
        try:
            self.send(op)
        except PermanentError as e:
            log.error("%s refused %s for good, dropped: %s", self.what, json.dumps(op)[:200], e)
            return True
        except Exception as e:  # connection refused, timeouts, 5xx: the server is down
            self._failed(e)
            return False
        if self.down_since is not None:
            log.warning(
                "%s reachable again after %.0f s; sending %d buffered calls",
                self.what, time.monotonic() - self.down_since, len(self.ops),
            )  # fmt: skip
            self.down_since, self.delay = None, RETRY_FIRST_S
        return True

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            where = f" (kept in {self.folder})" if self.folder else ""
            log.warning(
                "%s unreachable, buffering tracking calls%s and retrying: %s",
                self.what, where, first_line(error),
            )  # fmt: skip
        else:
            self.delay = min(self.delay * 2, RETRY_MAX_S)
        self.next_try = now + self.delay

    def _queue(self, op: Op) -> None:
        if self.folder is not None:
            op = self._keep_file(op)
            with (self.folder / JOURNAL).open("a") as f:
                f.write(json.dumps(op) + "\n")
        self.ops.append(op)
        if len(self.ops) > self.max_ops:
            self.ops.popleft()
            if not self.dropped:
                log.error(
                    "%s: more than %d calls buffered, dropping the oldest", self.what, self.max_ops
                )
            self.dropped += 1

    def _keep_file(self, op: Op) -> Op:
        """A copy of the file `op` uploads, under the folder: the caller's may be temporary."""
        self.folder.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        if "file" not in op:
            return op
        source = Path(op["file"])
        files = self.folder / "files"  # type: ignore[operator]
        if source.parent == files:
            return op
        self.seq += 1
        copy = files / f"{self.seq:08d}" / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        return {**op, "file": str(copy)}

    def _drained(self) -> None:
        """Everything sent: the journal and its files are no longer needed."""
        if self.folder is not None and self.dropped == 0 and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


def read_journal(path: Path) -> list[Op]:
    """The calls in a journal; a line cut short by a crash is skipped."""
    ops = []
    for line in path.read_text().splitlines():
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping a truncated line", path)
    return ops


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (MLflow and Ray append pages of context)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
