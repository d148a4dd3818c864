"""Min-FID checkpoint selection (Ho et al. 2020, Sec. 4 / App. B: FID at the best checkpoint).

Pure bookkeeping, no Ray or I/O: the in-training FID curve, the step of its minimum, and which
EMA weights the train stage exports (`train.export`). The curve's points live in the training
checkpoint (`train.checkpoint.TrainingCheckpoint.fid_points`), so a resumed run keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipelines.config import Export


@dataclass
class FidCurve:
    """(step, FID) points of the EMA weights in step order and the argmin so far."""

    points: list[tuple[int, float]] = field(default_factory=list)

    def record(self, step: int, fid: float) -> bool:
        """Add a point; True when it is the new minimum (ties keep the earlier step)."""
        if self.points and step <= self.points[-1][0]:
            raise ValueError(f"step {step}: FID points must come in increasing step order")
        best = self.best
        self.points.append((step, fid))
        return math.isfinite(fid) and (best is None or fid < best[1])

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, FID) of the lowest finite FID, the earliest on ties; None without one."""
        finite = [p for p in self.points if math.isfinite(p[1])]
        return min(finite, key=lambda p: (p[1], p[0])) if finite else None


@dataclass(frozen=True)
class ExportChoice:
    """Which EMA weights the train stage writes, and why (for `runs/train.json`)."""

    step: int
    best: bool  # True: the saved min-FID weights; False: the final EMA weights
    reason: str


def choose_export(export: Export, curve: FidCurve, final_step: int) -> ExportChoice:
    """`train.export: last` -> the final step; `best_fid` -> the step of the curve's minimum."""
    if export == "last":
        return ExportChoice(final_step, False, f"train.export=last: the EMA at step {final_step}")
    best = curve.best
    if best is None:
        raise ValueError(
            "train.export=best_fid: no finite in-training FID was recorded (train.fid_every "
            f"steps never reached, or every FID was NaN/inf; final step {final_step})"
        )
    step, value = best
    return ExportChoice(
        step,
        True,
        f"train.export=best_fid: the EMA at step {step}, the lowest in-training FID "
        f"({value:.4g}) of {len(curve.points)} points",
    )
