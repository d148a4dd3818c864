"""The one atomic writer and the one file hasher."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.infra.files import (
    atomic_path,
    bytes_digest,
    file_digest,
    recover,
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


def _writer(out: Path, body: str) -> subprocess.Popen[bytes]:
    """A real process that replaces folder `out` through `atomic_path`, running `body` inside."""
    code = f"""
import os, signal, sys, time
from pathlib import Path
from pipelines.infra.files import atomic_path
with atomic_path(Path({str(out)!r})) as tmp:
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
{textwrap.indent(textwrap.dedent(body), "    ")}
"""
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ})


def _folder_with(out: Path, content: str) -> None:
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / f"{content}.txt").write_text(content)


def test_kill_between_the_two_renames_recovers_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _folder_with(out, "old")
    # SIGKILL the writer at the second rename: only `.shards.old` is left on disk
    proc = _writer(
        out,
        """
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
""",
    )
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not out.exists() and (tmp_path / ".shards.old").is_dir()
    assert recover(out) == out
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the old copy, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # dead writer's temp gone
    _folder_with(out, "new")  # and the next replacement works
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_temporaries_of_killed_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    killed = _writer(out, "os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert [p.name for p in tmp_path.glob(".samples.tmp-*")] != []  # the killed writer's
    live = _writer(out, "time.sleep(60)")  # its own `atomic_path` removes the dead temporary
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(f".samples.tmp-*-{live.pid}-*")):
            assert time.monotonic() < deadline and live.poll() is None
            time.sleep(0.1)
        _folder_with(out, "mine")
        left = [p.name for p in tmp_path.glob(".samples.tmp-*")]
        assert left == [p for p in left if f"-{live.pid}-" in p] and len(left) == 1
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    finally:
        live.kill()
        live.wait()
    (tmp_path / ".other.tmp-somehost-1-abc").mkdir()  # another host's: never judged dead
    remove_temporaries(tmp_path)
    assert (tmp_path / ".other.tmp-somehost-1-abc").is_dir()


def test_json_is_stable_and_hashes_agree(tmp_path: Path) -> None:
    path = write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    data = path.read_bytes()
    assert file_digest(path) == bytes_digest(data) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "sha1") == hashlib.sha1(data).hexdigest()
