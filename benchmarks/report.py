"""Shared by the benchmarks: the load average for a table header and the results writer."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.infra.files import write_text


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. '0.4 0.8 1.2' (CPUs shared with other jobs)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_result(path: Path, text: str) -> None:
    """Write a results table atomically (`pipelines.infra.files`)."""
    write_text(path, text)
