"""Staged output folders: the one resumable-folder protocol (shard writer, sample stage).

An output folder is written part by part under a plan: `plan.json`, what decides the bytes of
every part (params, inputs' digests). The protocol:

- write each part through `files.write_bytes` (a temporary sibling renamed into place: a part
  exists completely or not at all); `prepare` removes the temporaries dead writers left;
- record the plan (`prepare` writes `plan.json`; `read_plan` reads it back);
- on resume, keep the parts of the same plan and drop those of another plan (or of none);
  whether a kept part is finished is its format's call (the shard writer's sidecar sha256,
  the sample shards' decode and re-encode), and a finished part is not written again;
- refuse a folder that holds anything but the plan, parts, derived files (the manifest, written
  last) and temporaries: a wrong path never loses another folder's files;
- move the complete folder onto the output in one rename (`publish`; `files.replace`, which
  `files.recover` undoes if a kill falls between its two renames).

The work folder is the output itself or a hidden sibling (`staging_path`), on the same file
system so that publishing is a rename.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.infra.files import TEMP_PREFIX, recover, remove_temporaries, replace, write_json

PLAN = "plan.json"


def read_plan(folder: Path) -> dict[str, Any] | None:
    """The plan `folder` records (its `plan.json`), None when it has none."""
    path = folder / PLAN
    plan: dict[str, Any] | None = json.loads(path.read_text()) if path.is_file() else None
    return plan


def staging_path(out: Path, tag: str) -> Path:
    """`.<name>.<tag>` beside `out`: a hidden work folder that `publish` renames onto `out`."""
    return out.with_name(f"{TEMP_PREFIX}{out.name}.{tag}")


def foreign_files(work: Path, parts: tuple[str, ...], derived: tuple[str, ...]) -> list[str]:
    """Names in `work` that are not the plan, a part (`parts` globs), derived or a temporary."""

    def ours(name: str) -> bool:
        return (
            name == PLAN
            or name in derived
            or name.startswith(TEMP_PREFIX)
            or any(fnmatch.fnmatchcase(name, g) for g in parts)
        )

    return sorted(p.name for p in work.iterdir() if not ours(p.name))


def prepare(
    work: Path,
    plan: dict[str, Any],
    parts: tuple[str, ...],
    derived: tuple[str, ...] = (),
    wanted: Callable[[str], bool] | None = None,
) -> bool:
    """Make `work` ready for the parts of `plan`; returns whether its parts are `plan`'s (resume).

    Creates `work`; refuses one holding other files (FileExistsError naming them, nothing
    removed); removes the temporaries of dead writers, the `derived` files (rewritten once every
    part is done), the parts of another plan (or of none) and parts not `wanted` (by name);
    records `plan`. The parts kept are verified by their format before they are skipped.
    """
    work.mkdir(parents=True, exist_ok=True)
    foreign = foreign_files(work, parts, derived)
    if foreign:
        raise FileExistsError(
            f"{work}: holds {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, which are not "
            f"parts of this output ({', '.join(parts)}, {PLAN}); expected a folder of its own: "
            "move those files away or point the output elsewhere"
        )
    remove_temporaries(work)
    same = read_plan(work) == plan
    for glob in parts:
        for path in work.glob(glob):
            if not same or (wanted is not None and not wanted(path.name)):
                path.unlink()
    for name in derived:
        (work / name).unlink(missing_ok=True)
    if not same:
        write_json(work / PLAN, plan)
    return same


def publish(work: Path, out: Path, drop: tuple[str, ...] = ()) -> None:
    """Move the complete `work` folder onto `out` (nothing when they are one), first deleting
    the files matching the `drop` globs (the plan and bookkeeping the output does not keep)."""
    for glob in drop:
        for path in work.glob(glob):
            path.unlink()
    if work != out:
        recover(out)
        replace(work, out)
