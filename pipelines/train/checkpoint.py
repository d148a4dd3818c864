"""Training-state files of the Ray Train checkpoints (torch.save), written atomically, and the
order in which a resume tries the checkpoint folders of a run."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipelines.infra.files import atomic_path

logger = logging.getLogger(__name__)


class UnloadableStateError(ValueError):
    """A training-state file exists but cannot be read back (truncated, corrupt, not a dict)."""


def save_training_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """torch.save a resume state (model, EMA, optimizer, step, RNG states...) atomically.

    Keep values to tensors, numbers, strings and nested dicts/lists so `load_training_state`
    can read them with `weights_only=True`.
    """
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    logger.info("saved training state (%s) to %s", ", ".join(map(str, state)), path)
    return Path(path)


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """torch.load(weights_only=True, map_location="cpu") of a `save_training_state` file."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"training state file not found: {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        message = f"training state file {source}: cannot be loaded ({err})"
        raise UnloadableStateError(message) from err
    if not isinstance(state, dict):
        raise UnloadableStateError(
            f"training state file {source}: got {type(state).__name__}, expected a dict"
        )
    return state


CHECKPOINT_DIR = re.compile(r"step_(\d+)(-redo)*")  # step_00000004, step_00000004-redo, ...


def checkpoint_dir_name(step: int, unusable: frozenset[str] = frozenset()) -> str:
    """`step_<step:08d>`, suffixed `-redo` while that name is one of the `unusable` folders.

    A step redone after falling back past an unloadable checkpoint must not reuse its folder:
    Ray Train still lists the old checkpoint and deletes its folder when it rotates it out.
    """
    name = f"step_{step:08d}"
    while name in unusable:
        name += "-redo"
    return name


def resume_candidates(latest: Path) -> list[Path]:
    """`latest` (Ray Train's latest committed checkpoint), then the run's other checkpoint
    folders of earlier steps, newest first: where a resume falls back when one cannot be loaded.

    Folders of later steps are left out: a report the controller never committed (a worker
    died within its poll interval) may leave one behind.
    """
    match = CHECKPOINT_DIR.fullmatch(latest.name)
    if match is None:
        return [latest]
    step = int(match.group(1))
    earlier = []
    for path in latest.parent.iterdir():
        m = CHECKPOINT_DIR.fullmatch(path.name)
        if m is not None and path.is_dir() and int(m.group(1)) < step:
            earlier.append((int(m.group(1)), path.name, path))
    return [latest, *(p for _, _, p in sorted(earlier, reverse=True))]
