"""The staged-output protocol (`pipelines/infra/staging.py`) and its two users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.artifacts.samples import plan_shards, prepare_dir
from pipelines.data.writer import prepare_staging
from pipelines.infra import staging


def test_prepare_keeps_parts_of_the_same_plan_and_drops_the_rest(tmp_path: Path) -> None:
    work = tmp_path / "out"
    assert not staging.prepare(work, {"seed": 0}, ("*.tar",), ("manifest.json",))  # new
    for name in ("a.tar", "b.tar", "manifest.json"):
        (work / name).write_bytes(b"x")
    same = staging.prepare(work, {"seed": 0}, ("*.tar",), ("manifest.json",), "a.tar".__eq__)
    assert same and sorted(p.name for p in work.iterdir()) == ["a.tar", "plan.json"]
    assert not staging.prepare(work, {"seed": 1}, ("*.tar",))  # another plan: its parts go
    assert [p.name for p in work.iterdir()] == ["plan.json"]
    assert staging.read_plan(work) == {"seed": 1}


def test_a_folder_holding_other_data_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Both users refuse a folder with files that are not theirs, before removing anything."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"mine")
    (folder / "samples-000000.tar").write_bytes(b"?")
    (folder / "plan.json").write_text(json.dumps({"seed": 7}))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(FileExistsError, match=r"photos: holds \['holiday.jpg'\]"):
        prepare_dir(folder, {"seed": 0}, plan_shards(4, 4))
    with pytest.raises(FileExistsError, match=r"photos: holds \['holiday.jpg'\], which are not"):
        prepare_staging(folder, {"seed": 0})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_publish_drops_bookkeeping_and_renames_onto_the_output(tmp_path: Path) -> None:
    out, work = tmp_path / "out", staging.staging_path(tmp_path / "out", "staging")
    assert work == tmp_path / ".out.staging"
    out.mkdir()
    (out / "old.tar").write_bytes(b"old")
    staging.prepare(work, {"seed": 0}, ("*.tar", "*.tar.json"))
    (work / "new.tar").write_bytes(b"new")
    (work / "new.tar.json").write_text("{}")
    staging.publish(work, out, drop=(staging.PLAN, "*.tar.json"))
    assert not work.exists() and [p.name for p in out.iterdir()] == ["new.tar"]
    staging.publish(out, out)  # the output itself: nothing moves
    assert [p.name for p in out.iterdir()] == ["new.tar"]
