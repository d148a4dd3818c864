"""benchmarks.peer at a micro budget, end to end: both sides train, sample and are scored."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from benchmarks.peer import (
    OURS,
    PEER,
    Budget,
    Outcome,
    SampleRun,
    TrainRun,
    bench_params,
    main,
    side_name,
    to_markdown,
)


def test_micro_budget_writes_both_sides_ratios_and_fid(tmp_path: Path, local_ray: object) -> None:
    out = tmp_path / "peer.md"
    argv = ["--steps", "2", "--samples", "2", "--sample-stride", "250", "--fid-reference", "8"]
    argv += ["--breakdown-steps", "1", "--ours", "profile"]
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


def test_a_named_execution_gets_its_own_outputs_row_ratios_and_loss_gap(tmp_path: Path) -> None:
    """`--ours profile bf16`: bf16 runs from the same shards into its own folders, and the table
    gives its row, its ratios and its loss curve's largest gap from the profile's."""
    budget = Budget(4, 2, 250, 1, 8, 1, ("profile", "bf16"))
    prof, bf16 = (bench_params(tmp_path, budget, 0, e) for e in budget.ours)
    assert prof.paths.shards == bf16.paths.shards and prof.paths.model != bf16.paths.model
    assert (prof.train.precision, bf16.train.precision, bf16.sample.precision) == (
        "fp32",
        "bf16",
        "bf16",
    )
    named = side_name("bf16")
    out = Outcome(
        train=[
            TrainRun(OURS, 100.0, 90.0, 1.0, (0.5, 0.4), "0 0 0", 0.0),
            TrainRun(named, 150.0, 140.0, 1.0, (0.5, 0.41), "0 0 0", 0.0),
            TrainRun(PEER, 120.0, 110.0, 1.0, (0.6, 0.5), "0 0 0", 0.0),
        ],
        sample=[
            SampleRun(s, r, 1.0, "0 0 0", 0.0) for s, r in ((OURS, 1.0), (named, 1.3), (PEER, 1.0))
        ],
        fid={OURS: 300.0, named: 301.0, PEER: 200.0},
        parts={OURS: {"all": 1.0}, PEER: {"all": 1.0}},
    )
    args = argparse.Namespace(
        steps=4, samples=2, sample_stride=250, repeats=1, fid_reference=8, breakdown_steps=1,
        ours=["profile", "bf16"],
    )  # fmt: skip
    text = to_markdown(out, args, "0 0 0")
    assert f"| {named} | 150.0 |" in text and "--ours profile bf16" in text
    assert "Ratio ours (`profile`) / peer: training 0.83x" in text
    assert "Ratio ours (`bf16`) / peer: training 1.25x" in text and "sampling 1.30x" in text
    assert "training met, sampling met" in text
    assert "`bf16` differs from the profile's by at most 2.50% at a log point" in text
