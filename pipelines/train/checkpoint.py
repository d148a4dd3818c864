"""Atomic weight files (safetensors + str metadata) and training-state files (torch.save)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

# A model folder (the train stage's output): EMA weights + the resolved params they were made with.
WEIGHTS_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"

logger = logging.getLogger(__name__)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call write(tmp) for a temporary file next to `path`, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def save_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
) -> Path:
    """Write `state_dict` (tensors, moved to CPU) and str->str `metadata` to a safetensors file."""
    bad = {
        k: type(v).__name__
        for k, v in metadata.items()
        if not isinstance(k, str) or not isinstance(v, str)
    }
    if bad:
        raise ValueError(f"metadata: values must be str, got {bad}")
    not_tensor = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensor:
        raise ValueError(f"state_dict: keys {not_tensor} are not tensors")
    # clone: safetensors refuses tensors that share storage (views, tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    out = _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata)))
    logger.info("saved %d tensors to %s", len(tensors), out)
    return out


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a `save_weights` file -> (state_dict on CPU, metadata).

    FileNotFoundError when missing, ValueError naming the file when it is not valid safetensors.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"weights file not found: {source}")
    try:
        with safe_open(str(source), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"weights file {source}: not a readable safetensors file ({err})") from err
    return tensors, metadata


def save_training_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """torch.save a resume state (model, EMA, optimizer, step, RNG states...) atomically.

    Keep values to tensors, numbers, strings and nested dicts/lists so `load_training_state`
    can read them with `weights_only=True`.
    """
    out = _atomic_write(path, lambda tmp: torch.save(dict(state), tmp))
    logger.info("saved training state (%s) to %s", ", ".join(map(str, state)), out)
    return out


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
