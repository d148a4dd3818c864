"""benchmarks.peer at a micro budget, end to end: both sides train, sample and are scored."""

from __future__ import annotations

import math
import re
from pathlib import Path

from benchmarks.peer import OURS, PEER, main


def test_micro_budget_writes_both_sides_ratios_and_fid(tmp_path: Path, local_ray: object) -> None:
    out = tmp_path / "peer.md"
    argv = ["--steps", "2", "--samples", "2", "--sample-stride", "250", "--fid-reference", "8"]
    argv += ["--breakdown-steps", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    assert "a REDUCED budget" in text and "2 samples of 4 reverse steps" in text
    for side in (OURS, PEER):
        row = next(line for line in text.splitlines() if line.startswith(f"| {side} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        steady, session, fid = float(cells[1]), float(cells[2]), float(cells[-1])
        assert steady > 0 and session > 0 and math.isfinite(fid) and fid > 0
    ratios = re.search(r"training ([\d.]+)x \(steady; session [\d.]+x\), sampling ([\d.]+)x", text)
    assert ratios is not None and min(map(float, ratios.groups())) > 0
    parts = [line for line in text.splitlines() if line.startswith(("| this project", "| diff"))]
    assert len(parts) == 4 and all(float(p.rstrip(" |").split("|")[-1]) > 0 for p in parts[2:])
