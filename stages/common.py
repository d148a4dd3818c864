"""Shared CLI plumbing for the DVC stages: strict params loading, paths, atomic writes."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import yaml

from ddpm_core.config import ConfigError, Params, from_dict, to_dict


def load_params(path: str | os.PathLike[str]) -> Params:
    """Read `params.yaml` strictly into `Params`; errors name the file and the dotted key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return from_dict(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


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
