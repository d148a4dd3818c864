"""Scheduled retraining: if DVC says inputs changed, submit the pipeline as a Ray job.

Idempotent: the submission id is `retrain-<hash of the params files, dvc.lock, the code and the
raw data under data.root>`, so a repeated
tick with the same inputs submits nothing while that job is pending, running or succeeded (a
failed one is retried as `<id>-2`, ...). Exit code 0 when up to date, submitted, or
already submitted (and, with --wait, when the job succeeded); 1 when the job failed; 2 on bad
input (a params file the loader refuses, no address; one line, as every stage CLI); 3 when the
cluster was lost or unreachable (one line says so, the next tick submits again); 4 when --timeout
passed first. Each tick's outcome is recorded in `.retrain/<job id>.json`.
Example (cron, or a Kubernetes CronJob; see deploy/):
    python -m stages.retrain --address http://ray-head:8265 --params params.yaml --wait
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
from pathlib import Path

from ray.job_submission import JobStatus

from pipelines.config import ConfigError, load_params
from pipelines.infra.files import write_json
from pipelines.infra.jobs import LOST_AFTER_S, TERMINAL, ClusterLost, decide, submit, wait
from stages.common import answer_user_errors, repo_root

EXIT_FAILED, EXIT_LOST, EXIT_TIMEOUT = 1, 3, 4  # 2: bad input (stages.common)
STATE_DIR = ".retrain"  # one JSON file per job id: the latest tick's outcome


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--params",
        default="params.yaml",
        help="the params file the job runs with (default params.yaml); on a cluster, a copy whose "
        "paths point at shared storage. DVC decides on the repository's params.yaml and dvc.lock",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="Ray dashboard/job address, e.g. http://127.0.0.1:8265 "
        "(default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)",
    )
    p.add_argument("--force", action="store_true", help="submit even if DVC reports no change")
    p.add_argument("--wait", action="store_true", help="block until the job ends")
    p.add_argument("--timeout", type=float, default=24 * 3600.0, help="--wait limit in seconds")
    p.add_argument(
        "--lost-after",
        type=float,
        default=LOST_AFTER_S,
        help=f"--wait: seconds polls must keep failing before the job counts as lost "
        f"(default {LOST_AFTER_S:g}: a blip is not a loss)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the decision, submit nothing")
    p.add_argument("--verbose", action="store_true", help="on an error, show the Python traceback")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return answer_user_errors(args, argv, lambda: tick(args))


def tick(args: argparse.Namespace) -> int:
    """One scheduled tick: decide, then submit (and wait) unless up to date or --dry-run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    root = repo_root()
    load_params(root / args.params)  # a broken params file fails here, not on the cluster
    decision = decide(root, args.params, args.force)
    print(f"retrain: {decision.reason}; job id {decision.submission_id}")
    if not decision.changed or args.dry_run:
        return 0
    if not args.address:
        raise ConfigError(
            "--address: none given; expected the Ray dashboard address "
            "(--address or $RAY_API_SERVER_ADDRESS)"
        )
    entrypoint = f"python -m stages.all --params {shlex.quote(args.params)}"
    timeout = args.timeout if args.wait else None
    sid = decision.submission_id
    return submit_and_wait(root, args.address, entrypoint, sid, timeout, args.lost_after)


def submit_and_wait(
    root: Path,
    address: str,
    entrypoint: str,
    base_id: str,
    timeout_s: float | None,
    lost_after_s: float = LOST_AFTER_S,
) -> int:
    """Submit (unless the job exists), wait up to `timeout_s` (None: do not wait), record the
    outcome in `<root>/.retrain/<base_id>.json`; returns the CLI's exit code."""
    sid = base_id
    try:
        client, sid, new = submit(address, entrypoint, base_id, root, {"DDPM_TRIGGER": "schedule"})
        print(f"retrain: {'submitted' if new else 'already submitted'} {sid}")
        record(root, base_id, sid, address, "SUBMITTED" if new else "EXISTS")
        if timeout_s is None:
            return 0
        status = wait(client, sid, timeout_s, lost_after_s)
    except ClusterLost as e:
        print(f"retrain: {e}; the next tick submits again")
        record(root, base_id, sid, address, "LOST", str(e))
        return EXIT_LOST
    print(f"retrain: job {sid} ended {status.value}")
    record(root, base_id, sid, address, status.value)
    if status == JobStatus.SUCCEEDED:
        return 0
    return EXIT_FAILED if status in TERMINAL else EXIT_TIMEOUT


def record(root: Path, base_id: str, sid: str, address: str, status: str, note: str = "") -> None:
    """The tick's outcome, for whoever looks after the schedule (not read by the next tick)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    state = {"submission_id": sid, "address": address, "status": status, "time": now}
    write_json(root / STATE_DIR / f"{base_id}.json", {**state, **({"note": note} if note else {})})


if __name__ == "__main__":
    raise SystemExit(main())
