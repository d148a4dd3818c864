"""Progress lines: one duration format for every stage's ETA."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """`1h02m03s`, `2m03s`, or `?` when the duration is unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(max(seconds, 0.0))), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
