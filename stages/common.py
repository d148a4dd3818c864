"""Shared CLI plumbing for the DVC stages: --params, --dry-run, logging."""

from __future__ import annotations

import argparse
import json
import logging

from pipelines.config import Params, load_params, to_dict


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every stage takes: --params and --dry-run."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate params, print the resolved config, stop"
    )
    return p


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
    if args.dry_run:
        print_config(params)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return params, args
