"""The one atomic writer and the one file hasher."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipelines.infra.files import (
    atomic_path,
    bytes_digest,
    file_digest,
    remove_temporaries,
    write_json,
    write_text,
)


def test_atomic_file_replaces_on_success_and_keeps_the_old_one_on_error(tmp_path: Path) -> None:
    path = write_text(tmp_path / "sub" / "a.txt", "one")
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("two, half written")
        raise RuntimeError("killed")
    assert path.read_text() == "one"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temporary left


def test_atomic_folder_replaces_a_whole_folder(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    for content in ("old", "new"):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / f"{content}.txt").write_text(content)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_temporaries_of_killed_writers_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".x-1.tar.abc").mkdir()  # what a killed `atomic_path` leaves behind
    (tmp_path / ".y.tar.abc").mkdir()
    (tmp_path / "x-1.tar").write_bytes(b"complete")
    remove_temporaries(tmp_path, "x-*")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.tar.abc", "x-1.tar"]


def test_json_is_stable_and_hashes_agree(tmp_path: Path) -> None:
    path = write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    data = path.read_bytes()
    assert file_digest(path) == bytes_digest(data) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "sha1") == hashlib.sha1(data).hexdigest()
