"""Atomic file outputs and file hashes: the one writer and the one hasher of the pipeline.

`atomic_path` yields a temporary sibling path; on success it replaces the final file or folder,
so a failure (or a kill) leaves the previous output exactly as it was, never a half-written one.
Every output of every stage (shards, weights, checkpoints, samples, statistics, metrics, plots,
figures) is written through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_PREFIX = "."  # temporaries are hidden siblings: `.<name>.<random>/<name>`


def shared_root(root: Path) -> Path:
    """Where state shared by every run of this repository lives: the MLflow store, Ray storage.

    `root` is the folder DVC runs the stage in, where its outputs belong. `dvc exp run --temp`
    and `--queue` run stages in a temporary copy (`.dvc/tmp/exps/...`) and set `DVC_ROOT` to the
    main workspace: relative `mlflow.db`, `mlartifacts/` and `paths.ray_storage` resolve there, so
    every experiment's runs land in one store and a retried queued run resumes from its
    checkpoints. Outside DVC it is `root`.
    """
    dvc_root = os.environ.get("DVC_ROOT")
    return Path(dvc_root).resolve() if dvc_root else root


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path with `final`'s name; on success it replaces `final` (file or folder).

    The temporary lives in a fresh hidden folder next to `final` (same file system, so the
    rename is atomic; unique, so concurrent writers of the same file never collide). On error
    it is removed and `final` is left exactly as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{final.name}.", dir=final.parent))
    tmp = folder / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f"{TEMP_PREFIX}{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_temporaries(folder: Path, name_glob: str = "*") -> None:
    """Delete what killed `atomic_path` writers left in `folder` for names matching the glob."""
    for leftover in folder.glob(f"{TEMP_PREFIX}{name_glob}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) atomically; returns the path."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON with sorted keys (stable bytes for DVC) atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks (`hashlib.file_digest`)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def bytes_digest(data: bytes, algorithm: str = "sha256") -> str:
    """Hex digest of `data`: the same value `file_digest` gives for a file holding it."""
    return hashlib.new(algorithm, data).hexdigest()
