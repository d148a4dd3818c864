"""Atomic file outputs and file hashes: the one writer and the one hasher of the pipeline.

`atomic_path` yields a temporary sibling path; on success it replaces the final file or folder,
so a failure (or a kill) leaves the previous output exactly as it was, never a half-written one.
Every output of every stage (shards, weights, checkpoints, samples, statistics, metrics, plots,
figures) is written through it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEMP_PREFIX = "."  # temporaries are hidden siblings: `.<name>.tmp-<host>-<pid>-<random>/<name>`
OLD_SUFFIX = ".old"  # `.<name>.old`: the previous folder while it is being replaced


def _owner_tag() -> str:
    return f"tmp-{socket.gethostname()}-{os.getpid()}-"


def _writer_is_dead(temp: Path) -> bool:
    """Whether the `atomic_path` writer that made `temp` is gone: same host, pid not running.

    Temporaries of other hosts (a shared file system) or of live processes are never judged dead.
    """
    parts = temp.name.rsplit(".tmp-", 1)
    if len(parts) != 2:
        return False
    host_pid = parts[1].rsplit("-", 1)[0]  # `<host>-<pid>`; host names may contain '-'
    host, _, pid = host_pid.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def recover(final: str | os.PathLike[str]) -> Path:
    """Undo what a kill inside `atomic_path` left behind for `final`; returns `final`.

    A kill between the two renames of a folder replacement leaves `.<name>.old` and no `final`:
    the old copy is renamed back. A leftover `.<name>.old` beside a complete `final` is deleted,
    and so are temporaries of dead writers on this host (`remove_temporaries`).
    """
    final = Path(final)
    old = final.with_name(f"{TEMP_PREFIX}{final.name}{OLD_SUFFIX}")
    if old.exists() and not final.exists():
        logger.warning(
            "%s: recovering the previous copy from %s (a replacement was killed)", final, old.name
        )
        old.rename(final)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)
    if final.parent.is_dir():
        remove_temporaries(final.parent, glob.escape(final.name))
    return final


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
    rename is atomic; unique and tagged with host and pid, so concurrent writers of the same
    file never collide and a later writer can tell a dead writer's leftovers). On error it is
    removed and `final` is left exactly as it was. A folder is replaced by two renames
    (`final` -> `.<name>.old`, temporary -> `final`); a kill between them is undone by the next
    `atomic_path` (or `recover`) on the same name, which renames the old copy back.
    """
    final = recover(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(
        tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{final.name}.{_owner_tag()}", dir=final.parent)
    )
    tmp = folder / final.name
    try:
        yield tmp
        replace(tmp, final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replace(src: Path, final: Path) -> None:
    """Move the complete file or folder `src` onto `final` (same file system).

    A folder `final` goes by two renames (`final` -> `.<name>.old`, `src` -> `final`); a kill
    between them is undone by `recover(final)`, which every `atomic_path` runs first.
    """
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f"{TEMP_PREFIX}{final.name}{OLD_SUFFIX}")
        final.rename(old)
        os.replace(src, final)
        shutil.rmtree(old)
    else:
        os.replace(src, final)


def remove_temporaries(folder: Path, name_glob: str = "*") -> None:
    """Delete the temporaries that dead `atomic_path` writers (this host) left in `folder` for
    names matching the glob; a live writer's temporaries are left alone."""
    for leftover in folder.glob(f"{TEMP_PREFIX}{name_glob}.tmp-*"):
        if not _writer_is_dead(leftover):
            continue
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


def read_json(path: str | os.PathLike[str], what: str = "a JSON file") -> Any:
    """The JSON in `path`; a damaged file is a ValueError naming it and what was expected."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected {what}") from None


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
