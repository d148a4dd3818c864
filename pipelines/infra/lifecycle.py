"""The lifecycle of a tracked stage: its MLflow run opened, the body run in it, the run ended.

`run_tracked` is how every tracked stage runs: the stage's body in its MLflow run, its metrics
file written and logged, the run ended FINISHED (and handed on in `runs/<stage>.json`,
`infra.run_files`) or FAILED. While it runs the stage holds a claim on its run's outbox
(`<paths.ray_storage>/mlflow_outbox/<run id>.claim`, an `flock`ed JSON note: stage, tracking
store, whether the run was ended). A claim outlives its stage only when calls were left unsent
(the server was down at the end) or the process died; the next run of the same stage takes every
such claim whose holder is gone (`replay_unfinished`), sends its outbox (a killed run is ended
FAILED) and deletes it, so an outage is caught up without a hand-run replay.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol, TypeVar

from pipelines.config import Params
from pipelines.infra.files import shared_root, write_json
from pipelines.infra.run_files import read_run_file, split_metrics, write_run_file
from pipelines.infra.tracking import Tracker, open_run, redact_uri, tracking_uri

log = logging.getLogger(__name__)

FINAL_WAIT_S = 30.0  # how long a stage's end retries unsent calls before reporting them
CLAIM = ".claim"  # <outbox root>/<run id>.claim, beside the run's outbox folder


def open_child_run(params: Params, stage: str, root: Path, parent_stage: str = "train") -> Tracker:
    """A run for `stage`, a child of the upstream stage's run when its run file exists."""
    upstream = read_run_file(params, parent_stage, root)
    here = redact_uri(tracking_uri(params.mlflow, root))
    if upstream is not None and upstream.get("uri") != here:
        log.warning("upstream run %s is in another tracking store; not nesting", upstream)
        upstream = None
    parent = upstream["run_id"] if upstream else None
    return open_run(params, stage, root, parent_run_id=parent)


class TrackedResult(Protocol):
    """What a tracked stage returns: the name of its metrics file and the metrics in it."""

    metrics_file: ClassVar[str]

    def metrics(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=TrackedResult)


def run_tracked(
    params: Params,
    root: Path,
    stage: str,
    tracker: Tracker,
    run: Callable[[Params, Path, Tracker], R],
    *,
    final_wait_s: float = FINAL_WAIT_S,
) -> R:
    """`run(params, root, tracker)` inside the MLflow run `tracker`, the one place that writes
    a stage's metrics file (`<paths.metrics>/<result.metrics_file>`, also logged to the run).

    The metrics file holds the record's numbers; its texts, hashes and timings (`split_metrics`)
    go with the run id into `runs/<stage>.json`. The run ends FINISHED and that file hands it
    on, or FAILED if anything raises. A tracking server that is down does not fail the stage:
    calls it could not take within `final_wait_s` are counted in `details.mlflow_unsent` and
    kept in the run's outbox, which the next run of the stage sends first (`replay_unfinished`).
    """
    with claim(tracker, stage) as mark_ended:
        replay_unfinished(tracker, stage)
        try:
            result = run(params, root, tracker)
            numbers, details = split_metrics(result.metrics())
            path = write_json(root / params.paths.metrics / result.metrics_file, numbers)
            tracker.log_artifact(path, stage)
        except BaseException:
            tracker.finish("FAILED")
            mark_ended()
            report_unsent(tracker, final_wait_s)
            raise
        tracker.finish("FINISHED")
        mark_ended()
        unsent = report_unsent(tracker, final_wait_s)
        if unsent:
            outbox = portable_outbox(tracker, root)
            details = {**details, "mlflow_unsent": unsent, "mlflow_outbox": outbox}
        write_run_file(params, stage, tracker, root, details)
        return result


def portable_outbox(tracker: Tracker, root: Path) -> str | None:
    """The run's outbox folder as `runs/<stage>.json` (tracked by git) may hold it: relative to
    the shared root (`files.shared_root`), else `<paths.ray_storage>/mlflow_outbox/<run id>`."""
    if tracker.outbox_dir is None:
        return None
    folder, base = Path(tracker.outbox_dir), shared_root(root).resolve()
    if folder.is_relative_to(base):
        return str(folder.relative_to(base))
    return f"<paths.ray_storage>/{folder.parent.name}/{folder.name}"


def report_unsent(tracker: Tracker, wait_s: float = FINAL_WAIT_S) -> int:
    """Retry the run's unsent tracking calls for up to `wait_s`; warn about what is left."""
    unsent = tracker.pending(wait_s)
    if unsent:
        log.warning(
            "MLflow run %s: %d tracking calls (metrics, artifacts, run status) not sent, the "
            "server is unreachable; kept in %s and sent by the next run of the stage",
            tracker.run_id, unsent, tracker.outbox_dir or "memory (lost at exit)",
        )  # fmt: skip
    return unsent


# ----------------------------------------------------------------------------------------------
# Claims on outboxes


def claim_path(tracker: Tracker) -> Path | None:
    """`<outbox root>/<run id>.claim`; None for a tracker without an outbox folder."""
    if tracker.outbox_dir is None:
        return None
    folder = Path(tracker.outbox_dir)
    return folder.with_name(folder.name + CLAIM)


def _write_note(f: IO[str], note: dict[str, Any]) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps(note) + "\n")
    f.flush()


@contextlib.contextmanager
def claim(tracker: Tracker, stage: str) -> Iterator[Callable[[], None]]:
    """Hold the claim on `tracker`'s outbox while the stage runs; yields `mark_ended` (call it
    once the run's end is submitted). The claim is deleted when nothing is left unsent."""
    path = claim_path(tracker)
    if path is None:
        yield lambda: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    note = {"stage": stage, "store": redact_uri(tracker.uri), "ended": False}
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # ours: a same-run rerun waits for nobody else
        _write_note(f, note)
        try:
            yield lambda: _write_note(f, {**note, "ended": True})
        finally:
            if not Path(tracker.outbox_dir or "").exists():  # everything was sent
                path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def replay_unfinished(tracker: Tracker, stage: str) -> int:
    """Send the outboxes that earlier runs of `stage` in the same store left behind.

    A claim is taken only when no live process holds it (`flock`); a run that never submitted
    its end (its process died) is ended FAILED. Returns how many earlier runs were replayed.
    """
    own = claim_path(tracker)
    if own is None:
        return 0
    replayed = 0
    for path in sorted(own.parent.glob(f"*{CLAIM}")):
        if path != own and _replay(path, tracker, stage):
            replayed += 1
    return replayed


def _replay(path: Path, current: Tracker, stage: str) -> bool:
    """Replay one claim if it is `stage`'s, in `current`'s store, and its holder is gone."""
    try:
        f = path.open("r+")
    except FileNotFoundError:  # replayed meanwhile by another process
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its stage is still running
            return False
        if not path.exists() or os.fstat(f.fileno()).st_ino != path.stat().st_ino:
            return False  # deleted (replayed) between our open and our lock
        try:
            note = json.loads(f.read())
        except json.JSONDecodeError:  # cut short by a crash as it was written
            note = {}
        if note.get("stage") != stage or note.get("store") != redact_uri(current.uri):
            return False
        run_id = path.name.removesuffix(CLAIM)
        earlier = Tracker(current.uri, run_id, str(path.with_name(run_id)))
        log.warning("MLflow run %s of an earlier %s run: sending its unsent calls", run_id, stage)
        if not note.get("ended"):
            earlier.finish("FAILED")  # its process died mid-stage
            _write_note(f, {**note, "ended": True})
        if earlier.pending() == 0:
            path.unlink()
            return True
        return False
