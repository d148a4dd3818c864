"""The streaming shard writer: same bytes on 1 or 2 Ray workers, resume after a kill, flat
memory."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.config import DataConfig, Params
from pipelines.data import writer
from pipelines.data.sources import open_source
from pipelines.data.stage import build_shards, run_shard
from pipelines.data.writer import staging_dir, write_shards_into
from tests.fixtures import write_lsun_lmdb, write_png
from tests.helpers import REPO, params_file


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def stats(folder: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    return {n: ((folder / n).stat().st_ino, (folder / n).stat().st_mtime_ns) for n in names}


def test_lsun_lmdb_shards_are_identical_on_1_and_2_ray_workers(
    tmp_path: Path, make_params: Callable[..., Params], local_ray: object
) -> None:
    """40 WebP/JPEG images in an LSUN-layout LMDB, centre-cropped to 8x8, 4 per shard."""
    lmdb_dir = tmp_path / "cat_train_lmdb"
    write_lsun_lmdb(lmdb_dir, 40)
    over: dict[str, Any] = {
        "data.source": "lsun", "data.root": str(lmdb_dir), "data.raw": str(lmdb_dir),
        "data.channels": 3, "data.resize": "center_crop", "data.test_fraction": 0.25,
        "data.shard_size": 4, "data.max_images": None,
    }  # fmt: skip
    outs = {}
    for workers in (1, 2):
        params = make_params({**over, "data.shard_workers": workers, "paths.shards": f"s{workers}"})
        result = run_shard(params, tmp_path)
        outs[workers] = snapshot(result.shards_dir)
        assert result.manifest["splits"]["train"]["num_images"] == 30
        assert result.manifest["classes"] == ["cat_train_lmdb"]
        assert "shard_workers" not in result.manifest["params"]["data"]
    assert len(outs[1]) == 8 + 3 + 1  # 30 train in 8 shards, 10 test in 3, the manifest
    assert outs[1] == outs[2]


def test_a_bad_image_in_a_ray_task_is_named_and_leaves_nothing(
    tmp_path: Path, make_params: Callable[..., Params], local_ray: object
) -> None:
    import lmdb

    lmdb_dir = tmp_path / "church_lmdb"
    keys = write_lsun_lmdb(lmdb_dir, 12)
    with lmdb.open(str(lmdb_dir)) as env, env.begin(write=True) as txn:
        txn.put(keys[5], b"not an image")
    over: dict[str, Any] = {
        "data.source": "lsun", "data.root": str(lmdb_dir), "data.raw": str(lmdb_dir),
        "data.channels": 3, "data.resize": "center_crop", "data.test_fraction": 0.25,
        "data.shard_size": 2, "data.max_images": None, "data.shard_workers": 2,
    }  # fmt: skip
    params = make_params(over)
    with pytest.raises(ValueError, match=rf"church_lmdb:{keys[5].decode()}: cannot read image"):
        run_shard(params, tmp_path)
    out = Path(params.paths.shards)
    assert not out.exists() and not staging_dir(out).exists()


def test_killed_shard_stage_resumes_keeping_its_finished_shards(
    tmp_path: Path, make_params: Callable[..., Params]
) -> None:
    """`python -m stages.shard` (100 + 100 digits, one per shard) is frozen once 5 shards have their
    sidecars, SIGKILLed, and rerun: the finished shards are kept as they are (same inode and
    mtime), the rest written, and the result equals an uninterrupted run byte for byte."""
    params = make_params({"data.max_images": 100, "data.shard_size": 1})
    path = params_file(params, tmp_path / "p.yaml")
    cli = [sys.executable, "-m", "stages.shard", "--params", str(path)]
    out = Path(params.paths.shards)
    staging = staging_dir(out)
    proc = subprocess.Popen(cli, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # bounds the wait only
        while len(list(staging.glob("*.tar.json"))) < 5:
            assert proc.poll() is None and time.monotonic() < deadline, "stage ended unkilled"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen mid-run: it cannot finish before the kill
        assert not out.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = sorted(p.name[: -len(".json")] for p in staging.glob("*.tar.json"))
    assert 5 <= len(finished) < 200
    before = stats(staging, finished)
    rerun = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming: {len(finished)} shards kept" in rerun.stderr
    assert stats(out, finished) == before  # kept, not rewritten
    assert not staging.exists()
    build_shards(params.data, params.seed, tmp_path / "reference")
    assert snapshot(out) == snapshot(tmp_path / "reference")


class Interrupt(KeyboardInterrupt):
    """Ctrl-C after a few shards (a kill keeps the staging folder the same way)."""


def interrupt_after(monkeypatch: pytest.MonkeyPatch, shards: int) -> None:
    update = writer.Progress.update

    def stop(self: writer.Progress, *args: Any) -> None:
        update(self, *args)
        if args[1] >= shards:
            raise Interrupt

    monkeypatch.setattr(writer.Progress, "update", stop)


def test_resume_rewrites_a_changed_shard_and_a_new_plan_discards_the_staging(
    tmp_path: Path,
    make_params: Callable[..., Params],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = make_params()  # digits 8x8, 64 images per split, 16 per shard: 8 shards
    staging = staging_dir(tmp_path / "data" / "shards")
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupt):
        run_shard(params, tmp_path)
    names = ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert sorted(p.name for p in staging.glob("*.tar")) == names
    (staging / names[1]).write_bytes(b"changed")  # its sha256 no longer matches its sidecar
    before = stats(staging, [names[0], names[2]])
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="pipelines.data.writer"):
        result = run_shard(params, tmp_path)
    assert stats(result.shards_dir, [names[0], names[2]]) == before
    build_shards(params.data, params.seed, tmp_path / "reference")
    assert snapshot(result.shards_dir) == snapshot(tmp_path / "reference")
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(lines) == 6 and "128/128 images (8/8 shards)" in lines[-1]  # 2 kept, 6 written
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupt):
        run_shard(params, tmp_path)
    assert len(list(staging.glob("*.tar"))) == 2
    monkeypatch.undo()
    other = make_params({"data.max_images": 48})  # another plan: nothing of the old one is kept
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupt):
        run_shard(other, tmp_path)
    assert len(list(staging.glob("*.tar"))) == 1


def _folder_peak(tmp_path: Path, n: int) -> int:
    """tracemalloc peak (bytes) of streaming `n` random 32x32 RGB PNGs into shards of 16."""
    rng = np.random.default_rng(n)
    folder = tmp_path / f"imgs{n}"
    for i in range(n):
        write_png(folder / f"{i:05d}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cfg = DataConfig(
        source="image_folder", root=str(folder), raw=str(folder), download=False,
        resolution=32, channels=3, resize="resize", max_images=None, shard_size=16,
        test_fraction=0.125, random_flip=False, shard_workers=1, image_column="image",
        label_column="label", downscale="lanczos", bad_images="fail",
    )  # fmt: skip
    source = open_source(cfg, 0)  # the item list (names) is outside the measurement
    out = tmp_path / f"out{n}"
    out.mkdir()
    tracemalloc.start()
    try:
        write_shards_into(source, cfg, 0, out, {}, sidecars=True)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writer_memory_is_flat_in_the_dataset_size(tmp_path: Path) -> None:
    """8x the images (64 -> 512, 16 per shard) adds < 10% of the larger set's decoded size to
    the peak of traced allocations: one shard's images and bytes are held at a time."""
    small, large = _folder_peak(tmp_path, 64), _folder_peak(tmp_path, 512)
    decoded = 512 * 3 * 32 * 32
    assert large - small < 0.1 * decoded, (small, large, decoded)
