"""Training-state files of the Ray Train checkpoints (torch.save), written atomically."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipelines.infra.files import atomic_path

logger = logging.getLogger(__name__)


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
        raise ValueError(f"training state file {source}: cannot be loaded ({err})") from err
    if not isinstance(state, dict):
        raise ValueError(
            f"training state file {source}: got {type(state).__name__}, expected a dict"
        )
    return state
