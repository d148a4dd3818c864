"""benchmarks.gpu_profile in smoke mode (tiny U-Net on CPU): every row is measured."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.gpu_profile import main


def test_smoke_profile_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_profile.md"
    assert main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    assert "smoke (tiny U-Net, not a measurement)" in text and "failed" not in text
    for section in ("## Training", "## Sampling", "## NLL", "## Checks"):
        assert section in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 4 + 2 + 1  # smoke plan: training, sampling, NLL rows
    noise = float(re.search(r"max \|device - float64 CPU\|: ([\d.e+-]+)", text).group(1))  # type: ignore[union-attr]
    assert 0 < noise < 1e-5  # float32 Box-Muller against a float64 recomputation
    error = float(re.search(r"relative L2 error \(max over t\): ([\d.]+)", text).group(1))  # type: ignore[union-attr]
    assert 0 < error < 0.02
