"""Two Ray nodes on this machine, used as docs/cluster.md says: `ray job submit` of stages.all.

A copy of this repository (its tracked and new files) is the checkout the job is submitted from;
every `paths.*` of the job's params file is on a "shared folder" outside it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import RayHead, copy_repo

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent


def shared_params(checkout: Path, shared: Path, **sections: dict[str, object]) -> str:
    """conf/profile/micro.yaml with every `paths.*` under `shared` (+ `sections` merged in),
    written into the checkout; returns its path relative to the checkout."""
    raw = yaml.safe_load((checkout / "conf" / "profile" / "micro.yaml").read_text())
    raw["paths"] = {k: str(shared / v.lstrip("./")) for k, v in raw["paths"].items()}
    for section, values in sections.items():
        raw[section].update(values)
    (checkout / "cluster-micro.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return "cluster-micro.yaml"


def test_a_node_sharing_the_heads_temp_dir_does_not_lose_the_jobs_working_dir(
    tmp_path: Path, converted_path: Path
) -> None:
    """Two nodes with one Ray temp dir (two `ray start` on one machine with the default
    /tmp/ray, or Ray's own test clusters): when the second node first runs a task of the job
    (the shard stage's writers: the head has no CPUs), its runtime-env agent re-extracts the
    job's working dir at the same path (rmtree + unzip) under the running driver. The next
    stage must still find the relative params file (it found `params file not found`)."""
    checkout, shared = tmp_path / "checkout", tmp_path / "shared"
    copy_repo(checkout)
    weights = {"inception_weights": str(converted_path)}
    params = shared_params(checkout, shared, data={"shard_workers": 2}, evaluate=weights)
    head = RayHead(num_cpus=0).start()
    try:
        head.add_node(num_cpus=2, temp_dir=head.temp_dir)
        submit = [str(BIN / "ray"), "job", "submit", "--address", head.address]
        submit += ["--working-dir", ".", "--entrypoint-num-cpus", "0", "--"]
        submit += ["python", "-m", "stages.all", "--params", params, "--stages", "shard"]
        proc = subprocess.run(
            [*submit, "fid_stats"], cwd=checkout, env=head.env(), capture_output=True, text=True
        )
    finally:
        head.stop()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "params file not found" not in out
    assert (shared / "data" / "fid_stats" / "inception.json").is_file()
    assert (shared / "runs" / "all.json").is_file()
