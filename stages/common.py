"""Shared CLI plumbing for the DVC stages: --params, --dry-run, the repository root, the summary.

Every stage CLI is `main_for(stage, description, argv, run)`: parse the arguments, load the
params strictly, find the root once (`repo_root`), call the stage and print its summary; a user
error is one line and exit 2 (`answer_user_errors`, also used by `stages.all` and
`stages.retrain`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pipelines.config import ConfigError, Params, check_paths, load_params, to_dict


class StageResult(Protocol):
    """What a stage returns: a typed record that can say what it made in a few lines."""

    def summary(self) -> str: ...


def repo_root() -> Path:
    """The folder the stage runs in (absolute): where its outputs belong.

    DVC runs every stage in its workspace's root, also in the temporary workspace of
    `dvc exp run --temp/--queue`, where `DVC_ROOT` still names the main workspace: outputs
    written under `DVC_ROOT` would overwrite the workspace's and leave the experiment without
    them. Shared state (MLflow store, Ray storage) resolves against `files.shared_root`.
    """
    return Path.cwd().resolve()


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every stage takes: --params, --dry-run and --verbose."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate params, check the inputs exist, print the resolved config, stop",
    )
    p.add_argument("--verbose", action="store_true", help="on an error, show the Python traceback")
    return p


# Input errors a user can fix (params, missing or damaged inputs, unreachable services): one line
# naming what and why, exit 2; the traceback only with --verbose (as dvc and ray do).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, OSError, ValueError, ConnectionError)
EXIT_USER_ERROR = 2


def answer_user_errors(
    args: argparse.Namespace, argv: list[str] | None, body: Callable[[], int]
) -> int:
    """`body()`; a user error is one line on stderr and exit 2, unless --verbose.

    From the command line (argv None) only; callers passing argv (tests, `stages.all` running
    a stage) get the exception itself, as with --verbose.
    """
    try:
        return body()
    except USER_ERRORS as e:
        if args.verbose or argv is not None:
            raise
        print(f"error: {e} (--verbose for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR


# What each stage reads besides code and params (its dvc.yaml deps; the raw data as data.root),
# and which stage makes each: --dry-run checks they exist, less what an earlier stage of the
# same run makes (tests/test_stage_errors.py compares the table with dvc.yaml).
INPUTS: dict[str, tuple[str, ...]] = {
    "shard": ("data.root",),
    "fid_stats": ("paths.shards",),
    "train": ("paths.shards", "paths.fid_stats"),
    "sample": ("paths.model",),
    "evaluate": ("paths.shards", "paths.model", "paths.samples", "paths.fid_stats"),
    "quality": ("paths.shards", "paths.model", "paths.fid_stats"),
}
MADE_BY = {
    "paths.shards": "shard",
    "paths.fid_stats": "fid_stats",
    "paths.model": "train",
    "paths.samples": "sample",
}


def _reads(params: Params, stage: str) -> list[str]:
    """The inputs `stage` reads with these params (no raw data to find: digits, a download)."""
    keys = list(INPUTS.get(stage, ()))
    if params.data.root is None or params.data.download:
        keys = [k for k in keys if k != "data.root"]
    if stage == "train" and params.train.fid_every == 0:
        keys.remove("paths.fid_stats")  # only the in-training FID reads the statistics
    return keys


def check_inputs(params: Params, stages: Sequence[str], root: Path) -> None:
    """Refuse (ConfigError naming the key) an input of `stages` that does not exist."""
    made: set[str] = set()
    for stage in stages:
        for key in _reads(params, stage):
            section, name = key.split(".")
            value = getattr(getattr(params, section), name)
            if key in made or (root / Path(value).expanduser()).exists():
                continue
            expected = (
                f"the raw data of data.source={params.data.source}"
                if key == "data.root"
                else f"the {MADE_BY[key]} stage's output (dvc repro {MADE_BY[key]})"
            )
            raise ConfigError(f"{key}: {value!r} does not exist; expected {expected}")
        made |= {k for k, maker in MADE_BY.items() if maker == stage}


def print_config(params: Params) -> None:
    print(json.dumps(to_dict(params), indent=2))


def load(args: argparse.Namespace, stages: Sequence[str] = ()) -> Params | None:
    """Load params strictly; with --dry-run check the inputs of `stages`, print the params and
    return None. Otherwise set up INFO logging to stderr and return the params."""
    params = load_params(args.params)
    try:
        check_paths(params.paths, params.data.raw, repo_root())
        if args.dry_run:
            check_inputs(params, stages, repo_root())
    except ConfigError as e:
        raise ConfigError(f"{args.params}: {e}") from None
    if args.dry_run:
        print_config(params)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return params


Run = Callable[[Params, Path, argparse.Namespace], StageResult]


def main_for(
    stage: str,
    description: str,
    argv: list[str] | None,
    run: Run,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """A stage's `main`: `run(params, repo_root(), args)`, then its summary on stdout."""
    p = parser(description.splitlines()[0] if description else "")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)

    def body() -> int:
        params = load(args, [stage])
        if params is not None:  # None: --dry-run printed the resolved config
            print(run(params, repo_root(), args).summary())
        return 0

    return answer_user_errors(args, argv, body)
