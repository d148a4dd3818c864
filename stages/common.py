"""Shared CLI plumbing for the DVC stages: --params, --dry-run, the repository root, the summary.

Every stage CLI is `main_for(description, argv, run)`: parse the arguments, load the params
strictly, find the root once (`repo_root`), call the stage and print its summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
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
    """The arguments every stage takes: --params and --dry-run."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate params, print the resolved config, stop"
    )
    p.add_argument("--verbose", action="store_true", help="on an error, show the Python traceback")
    return p


# Input errors a user can fix (params, missing or damaged inputs, unreachable services): one line
# naming what and why, exit 2; the traceback only with --verbose (as dvc and ray do).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, OSError, ValueError, ConnectionError)


def print_config(params: Params) -> None:
    print(json.dumps(to_dict(params), indent=2))


def start(
    p: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[Params, argparse.Namespace] | None:
    """Parse the arguments and load params strictly; with --dry-run print them and return None.

    Otherwise set up INFO logging to stderr and return (params, the parsed arguments).
    """
    args = p.parse_args(argv)
    params = load_params(args.params)
    try:
        check_paths(params.paths, params.data.raw, repo_root())
    except ConfigError as e:
        raise ConfigError(f"{args.params}: {e}") from None
    if args.dry_run:
        print_config(params)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return params, args


Run = Callable[[Params, Path, argparse.Namespace], StageResult]


def main_for(
    description: str,
    argv: list[str] | None,
    run: Run,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """A stage's `main`: `run(params, repo_root(), args)`, then its summary on stdout."""
    p = parser(description.splitlines()[0] if description else "")
    if add_arguments is not None:
        add_arguments(p)
    # From the command line (argv None) a user error is one line; callers passing argv (tests,
    # stages.all) get the exception itself, as with --verbose.
    verbose = argv is not None or "--verbose" in sys.argv[1:]
    try:
        started = start(p, argv)
        if started is None:
            return 0  # --dry-run printed the resolved config
        params, args = started
        print(run(params, repo_root(), args).summary())
    except USER_ERRORS as e:
        if verbose:
            raise
        print(f"error: {e} (--verbose for the traceback)", file=sys.stderr)
        return 2
    return 0
