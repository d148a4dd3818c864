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


def listed_file(folder: Path, name: object, manifest: Path) -> Path:
    """`folder / name` for a manifest's `file` entry: a plain file name, never a path.

    ValueError naming the manifest and the entry for an absolute path, `..`, a separator or a
    symlink, so a manifest cannot make a reader open files outside its folder.
    """
    text = str(name)
    path = folder / text
    if (
        not isinstance(name, str)
        or text in ("", ".", "..")
        or "/" in text
        or "\\" in text
        or Path(text).is_absolute()
        or path.is_symlink()
    ):
        raise ValueError(
            f"{manifest}: file entry {name!r} refused; expected a plain file name inside {folder} "
            "(no absolute path, '..', separator or symlink)"
        )
    return path
