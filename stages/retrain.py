"""Scheduled retraining: if DVC says inputs changed, submit the pipeline as a Ray job.

Idempotent: the submission id is `retrain-<hash of the params files, dvc.lock, the code and the
raw data under data.root>`, so a repeated
tick with the same inputs submits nothing while that job is pending, running or succeeded (a
failed one is retried as `<id>-2`, ...). Exit code 0 when up to date, submitted, or
already submitted (and, with --wait, when the job succeeded); 1 when the job failed.
Example (cron, or a Kubernetes CronJob; see deploy/):
    python -m stages.retrain --address http://ray-head:8265 --params params.yaml --wait
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex

from pipelines.config import load_params
from pipelines.infra.jobs import TERMINAL, decide, submit, wait
from stages.common import repo_root


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
    p.add_argument("--dry-run", action="store_true", help="print the decision, submit nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    root = repo_root()
    load_params(root / args.params)  # a broken params file fails here, not on the cluster
    decision = decide(root, args.params, args.force)
    print(f"retrain: {decision.reason}; job id {decision.submission_id}")
    if not decision.changed or args.dry_run:
        return 0
    if not args.address:
        raise SystemExit("retrain: no Ray address: pass --address or set RAY_API_SERVER_ADDRESS")
    entrypoint = f"python -m stages.all --params {shlex.quote(args.params)}"
    client, sid, new = submit(
        args.address, entrypoint, decision.submission_id, root, {"DDPM_TRIGGER": "schedule"}
    )
    print(f"retrain: {'submitted' if new else 'already submitted'} {sid}")
    if not args.wait:
        return 0
    status = wait(client, sid, args.timeout)
    print(f"retrain: job {sid} ended {status.value}")
    return 0 if status.value == "SUCCEEDED" else 1 if status in TERMINAL else 2


if __name__ == "__main__":
    raise SystemExit(main())
