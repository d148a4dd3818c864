"""The training checkpoint of a Ray Train checkpoint folder: `TrainingCheckpoint`, the one record
that knows the layout of its file (`STATE_FILE`, torch.save'd, written atomically, read back
verified), and the order in which a resume tries the checkpoint folders of a run."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.infra.files import atomic_path
from pipelines.train.selection import FidCurve

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"  # in every checkpoint folder of a run
StateDict = dict[str, torch.Tensor]
Rows = tuple[tuple[int, float], ...]  # (step, value) points in step order


class UnloadableStateError(ValueError):
    """A training-state file exists but cannot be read back (truncated, corrupt, not a dict, a
    key missing or of the wrong type)."""


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


# ----------------------------------------------------------------------------------------------
# The record and its layout


@dataclass(frozen=True)
class TrainingCheckpoint:
    """What rank 0 writes at a checkpoint: everything a resume restores and the export reads.

    `write` / `read` own the file: `STATE_FILE` in the checkpoint folder, a dict with one key per
    field (history and FID points as (N, 2) float64 tensors, no best EMA as `{}`) plus
    `data_position`, the step (`artifacts.shard_stream.train_batches(start_step=step)` continues
    the exact batch sequence). `train.step` builds the record from a `TrainState` and applies it.
    """

    model: StateDict  # the bare U-Net's state dict
    ema: dict[str, Any]  # `EMA.state_dict()`: decay, num_updates, shadow (the EMA weights)
    optimizer: dict[str, Any]  # Adam's state dict
    step: int  # updates applied so far
    rng: list[dict[str, torch.Tensor]]  # every rank's random streams, in rank order
    history: Rows  # (step, mean loss of the logging window)
    fid_points: Rows  # (step, in-training FID); empty when train.fid_every is 0
    best_ema: StateDict | None  # CPU copy of the EMA weights at the min-FID step, if kept

    @property
    def fid_curve(self) -> FidCurve:
        """A fresh `FidCurve` of the points (the caller may record more)."""
        return FidCurve(list(self.fid_points))

    @property
    def final_ema(self) -> StateDict:
        """The EMA weights at `step`."""
        shadow: StateDict = self.ema["shadow"]
        return shadow

    def ema_weights(self, best: bool) -> StateDict:
        """The EMA weights to export: the min-FID copy (`{}` when none was kept) or the final."""
        return (self.best_ema or {}) if best else self.final_ema

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write `folder/STATE_FILE` atomically; returns its path."""
        return save_training_state(Path(folder) / STATE_FILE, self._layout())

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> TrainingCheckpoint:
        """Read `folder/STATE_FILE` (`weights_only=True`), verified key by key.

        FileNotFoundError without the file; UnloadableStateError naming the file (and the key)
        when it cannot be loaded, a key is missing or holds the wrong type.
        """
        path = Path(folder) / STATE_FILE
        state = load_training_state(path)
        for key, (valid, expected) in LAYOUT.items():
            if key not in state:
                raise UnloadableStateError(f"training state file {path}: key {key!r} missing")
            if not valid(state[key]):
                got = type(state[key]).__name__
                raise UnloadableStateError(
                    f"training state file {path}: key {key!r} holds a {got}, expected {expected}"
                )
        return cls(
            model=state["model"],
            ema=state["ema"],
            optimizer=state["optimizer"],
            step=state["step"],
            rng=state["rng"],
            history=_points(state["history"]),
            fid_points=_points(state["fid_curve"]),
            best_ema=state["best_ema"] or None,
        )

    def _layout(self) -> dict[str, Any]:
        """The dict on disk, in `LAYOUT`'s key order."""
        return {
            "model": self.model,
            "ema": self.ema,
            "optimizer": self.optimizer,
            "step": self.step,
            "data_position": self.step,
            "rng": self.rng,
            "history": _rows(self.history),
            "fid_curve": _rows(self.fid_points),
            "best_ema": self.best_ema or {},
        }


def _rows(points: Rows) -> torch.Tensor:
    """(N, 2) float64 (step, value): `weights_only`-loadable."""
    return torch.tensor(points, dtype=torch.float64).reshape(-1, 2)


def _points(rows: torch.Tensor) -> Rows:
    """`_rows` read back: ((step, value), ...)."""
    return tuple((int(s), float(v)) for s, v in rows.tolist())


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_rows(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == 2


def _is_ema(value: object) -> bool:
    if not (isinstance(value, dict) and {"decay", "num_updates", "shadow"} <= value.keys()):
        return False
    decay = value["decay"]
    number = isinstance(decay, (int, float)) and not isinstance(decay, bool)
    return number and _is_count(value["num_updates"]) and _is_state_dict(value["shadow"])


def _is_optimizer(value: object) -> bool:
    return isinstance(value, dict) and {"state", "param_groups"} <= value.keys()


def _is_rng_states(value: object) -> bool:
    """Every rank's streams: `train.step.rng_state` dicts (t_noise, torch, cuda when used)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(_is_state_dict(r) and {"t_noise", "torch"} <= r.keys() for r in value)
    )


# key on disk -> (check, what it must hold): the file's whole layout, in writing order
LAYOUT: dict[str, tuple[Callable[[object], bool], str]] = {
    "model": (_is_state_dict, "a state dict (str -> tensor)"),
    "ema": (_is_ema, "an EMA state dict (decay, num_updates, shadow)"),
    "optimizer": (_is_optimizer, "an optimizer state dict ('state', 'param_groups')"),
    "step": (_is_count, "an int >= 0"),
    "data_position": (_is_count, "an int >= 0"),
    "rng": (_is_rng_states, "a non-empty list of per-rank dicts of tensors (t_noise, torch)"),
    "history": (_is_rows, "an (N, 2) tensor of (step, loss) rows"),
    "fid_curve": (_is_rows, "an (N, 2) tensor of (step, FID) rows"),
    "best_ema": (_is_state_dict, "a state dict (empty when none was kept)"),
}


# ----------------------------------------------------------------------------------------------
# Checkpoint folders of a run


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
