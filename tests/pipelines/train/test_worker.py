"""The worker loop's cadences without Ray: on which steps it logs, samples, scores, checkpoints."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.config import Params
from pipelines.train.worker import Cadence


def test_cadences_fall_on_their_multiples_and_log_and_checkpoint_at_the_last_step(
    make_params: Callable[..., Params],
) -> None:
    cfg = make_params(
        {
            "train.steps": 10,
            "train.log_every": 4,
            "train.sample_every": 3,
            "train.fid_every": 5,
            "train.checkpoint_every": 6,
        }
    ).train
    due, steps = Cadence.of(cfg), range(1, 11)
    assert [s for s in steps if due.log(s)] == [4, 8, 10]
    assert [s for s in steps if due.grid(s)] == [3, 6, 9]
    assert [s for s in steps if due.fid(s)] == [5, 10]
    assert [s for s in steps if due.checkpoint(s)] == [6, 10]
    assert due.final_grid()  # step 10 logged no grid
    off = Cadence.of(make_params({"train.sample_every": 0, "train.fid_every": 0}).train)
    assert not any(off.grid(s) or off.fid(s) for s in range(1, 2 * off.steps))
    assert off.final_grid()  # the end-of-training grid still comes
    assert not Cadence(10, 1, 5, 0, 1).final_grid()  # step 10 already logged one
