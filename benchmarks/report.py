"""Shared by the benchmarks: the load average for a table header and the atomic write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. '0.4 0.8 1.2' (CPUs shared with other jobs)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_result(path: Path, text: str) -> None:
    """Write a results table atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
