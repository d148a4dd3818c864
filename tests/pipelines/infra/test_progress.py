"""One duration format for the ETAs of training and sampling."""

from __future__ import annotations

import pytest

from pipelines.infra.progress import format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0m00s"), (59.6, "1m00s"), (123.0, "2m03s"), (3723.0, "1h02m03s"),
     (90061.0, "25h01m01s"), (-3.0, "0m00s"), (float("nan"), "?"), (float("inf"), "?")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
