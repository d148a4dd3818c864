"""Sample shards: byte-stable tars, detection of partial/corrupt shards, the verified reader."""

from __future__ import annotations

import json
import os
import socket
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipelines.artifacts.samples import (
    MANIFEST,
    ShardError,
    ShardSpec,
    load_samples,
    ordered_hash,
    plan_shards,
    prepare_dir,
    publish,
    read_manifest,
    sampling_plan,
    verify_shard,
    work_dir,
    write_manifest,
    write_shard,
)
from pipelines.config import Params
from pipelines.infra.files import file_digest
from tests.helpers import dead_pid

SHAPE = (3, 4, 4)
PLAN_KEYS = {"batch_size": 4, "stride": 1, "image_shape": list(SHAPE), "weights_sha256": "w"}


def _images(n: int, seed: int = 0, c: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, 4, 4), generator=g, dtype=torch.uint8)


def test_plan_shards_fixed_ranges() -> None:
    specs = plan_shards(10, 4)
    assert [(s.index, s.start, s.stop) for s in specs] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert specs[2].name == "samples-000002.tar"
    assert specs[2].keys() == ["00000008", "00000009"]
    with pytest.raises(ValueError, match="num_images"):
        plan_shards(0, 4)


@pytest.mark.parametrize("channels", [1, 3])
def test_write_shard_is_byte_stable_lossless_webdataset_layout(
    tmp_path: Path, channels: int
) -> None:
    spec = ShardSpec(1, 4, 7)
    images = _images(3, c=channels)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    h1 = write_shard(images, spec, tmp_path / "a")
    h2 = write_shard(images.clone(), spec, tmp_path / "b")
    assert h1 == h2  # same pixels -> same bytes (mtime 0, fixed owner)
    with tarfile.open(tmp_path / "a" / spec.name) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["00000004.png", "00000005.png", "00000006.png"]
    assert {m.mtime for m in members} == {0}
    assert verify_shard(tmp_path / "a" / spec.name, spec, (channels, 4, 4)) == h1
    assert [p.name for p in (tmp_path / "a").iterdir()] == [spec.name]  # no temporary left


def test_verify_rejects_truncated_corrupt_foreign_and_wrong_range(tmp_path: Path) -> None:
    spec = ShardSpec(0, 0, 3)
    write_shard(_images(3), spec, tmp_path)
    path = tmp_path / spec.name
    good = path.read_bytes()
    assert verify_shard(path, spec, SHAPE) is not None
    assert verify_shard(path, ShardSpec(0, 0, 2), SHAPE) is None  # range differs
    assert verify_shard(path, spec, (1, 4, 4)) is None  # shape differs
    for bad in (good[: len(good) // 2], good[:700], b"", good[:600] + b"\0" * 10 + good[610:]):
        path.write_bytes(bad)
        assert verify_shard(path, spec, SHAPE) is None
    path.unlink()
    assert verify_shard(path, spec, SHAPE) is None


def test_prepare_dir_keeps_same_plan_and_drops_other_plans(tmp_path: Path) -> None:
    specs = plan_shards(8, 4)
    (tmp_path / "samples-000000.tar").write_bytes(b"no plan: unknown origin")
    prepare_dir(tmp_path, {"seed": 0}, specs)
    assert not list(tmp_path.glob("samples-*.tar"))
    for s in specs:
        write_shard(_images(4), s, tmp_path)
    dead = dead_pid()
    temp = tmp_path / f".samples-000000.tar.tmp-{socket.gethostname()}-{dead}-abc123"
    temp.mkdir()  # a killed writer's temporary
    (temp / "samples-000000.tar").write_bytes(b"partial")
    live = tmp_path / f".samples-000001.tar.tmp-{socket.gethostname()}-{os.getpid()}-abc"
    live.mkdir()  # a concurrent (live) writer's temporary: kept
    (tmp_path / "samples-000009.tar").write_bytes(b"stale")
    (tmp_path / MANIFEST).write_text("{}")
    prepare_dir(tmp_path, {"seed": 0}, specs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        live.name,
        "plan.json",
        "samples-000000.tar",
        "samples-000001.tar",
    ]
    prepare_dir(tmp_path, {"seed": 0}, specs)  # same plan: shards kept
    assert len(list(tmp_path.glob("samples-*.tar"))) == 2
    prepare_dir(tmp_path, {"seed": 1}, specs)  # new plan: shards dropped
    assert not list(tmp_path.glob("samples-*.tar"))


def test_a_new_plan_is_staged_and_the_old_set_kept_until_complete(tmp_path: Path) -> None:
    out, specs = tmp_path / "samples", plan_shards(8, 4)
    prepare_dir(work_dir(out, {"seed": 0}), {"seed": 0}, specs)
    assert work_dir(out, {"seed": 0}) == out  # nothing complete yet: sample in place
    old = [write_shard(_images(4), s, out) for s in specs]
    write_manifest(out, {**PLAN_KEYS, "seed": 0}, specs, old)
    (out / "plan.json").write_text(json.dumps({"seed": 0}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    work = work_dir(out, {"seed": 1})  # a plan change beside a complete set
    assert work.parent == tmp_path and work.name.startswith(".samples.plan-")
    assert work_dir(out, {"seed": 1}) == work  # the same plan resumes in the same folder
    prepare_dir(work, {"seed": 1}, specs)
    write_shard(_images(4) + 1, specs[0], work)  # then the run fails half-way
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old set untouched

    prepare_dir(work, {"seed": 1}, specs)  # the rerun resumes the staged shard
    assert (work / specs[0].name).is_file()
    new = [file_digest(work / specs[0].name), write_shard(_images(4) + 1, specs[1], work)]
    write_manifest(work, {**PLAN_KEYS, "seed": 1}, specs, new)
    publish(work, out)
    assert not work.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
    assert read_manifest(out)["seed"] == 1 and read_manifest(out)["shards"][1]["sha256"] == new[1]


def _write_manifest(root: Path, specs: list[ShardSpec], images: torch.Tensor) -> None:
    entries = []
    for s in specs:
        h = write_shard(images[s.start : s.stop], s, root)
        entries.append(
            {"index": s.index, "file": s.name, "start": s.start, "stop": s.stop, "sha256": h}
        )
    manifest = {
        "num_images": len(images),
        "shards": entries,
        "ordered_hash": ordered_hash([e["sha256"] for e in entries]),
    }
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_load_samples_in_order_with_max_and_hash_check(tmp_path: Path) -> None:
    images = _images(10)
    specs = plan_shards(10, 4)
    _write_manifest(tmp_path, specs, images)
    assert torch.equal(load_samples(tmp_path), images)
    assert torch.equal(load_samples(tmp_path, max_images=5), images[:5])
    write_shard(_images(4, seed=9), specs[1], tmp_path)  # valid tar, different content
    with pytest.raises(ShardError, match="samples-000001.tar: sha256 differs"):
        load_samples(tmp_path)
    assert torch.equal(load_samples(tmp_path, max_images=4), images[:4])  # shard 1 not needed


def test_load_samples_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_samples(tmp_path)


def test_ordered_hash_depends_on_order() -> None:
    assert ordered_hash(["a", "b"]) != ordered_hash(["b", "a"])


def test_load_samples_refuses_file_entries_outside_the_folder(tmp_path: Path) -> None:
    images, specs = _images(4), plan_shards(4, 4)
    _write_manifest(tmp_path / "s", specs, images)
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    manifest["shards"][0]["file"] = "../" + manifest["shards"][0]["file"]
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / specs[0].name).write_bytes((tmp_path / "s" / specs[0].name).read_bytes())
    with pytest.raises(ValueError, match=r"file entry '\.\./samples-000000.tar' refused"):
        load_samples(tmp_path / "s")


@pytest.mark.parametrize(
    ("key", "value"),
    [("sample.precision", "bf16"), ("sample.channels_last", True), ("sample.compile", "default")],
)
def test_the_plan_holds_the_execution_options_that_change_pixels(
    make_params: Callable[..., Params], tmp_path: Path, key: str, value: object
) -> None:
    """bf16 autocast, channels_last and compiled kernels round differently from the eager fp32
    network, so shards sampled under one are not kept when resampling under another (a resume
    would otherwise publish a mixed set under the new params). The default options add nothing:
    the default run's plan, and so its resume, is the one it always had."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w")
    default = sampling_plan(make_params(), weights)
    assert "execution" not in default
    changed = sampling_plan(make_params({key: value}), weights)
    assert changed != default
    assert changed["execution"][key.removeprefix("sample.")] == value
