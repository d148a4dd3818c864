from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobStatus

from pipelines.infra.jobs import decide, inputs_hash, runtime_env, submit, wait
from tests.helpers import RayHead

DVC = str(Path(sys.executable).parent / "dvc")


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A real git + DVC repo with one stage that copies in.txt to out.txt."""
    run(["git", "init", "-q"], tmp_path)
    run([DVC, "init", "-q"], tmp_path)
    (tmp_path / "in.txt").write_text("1\n")
    (tmp_path / "params.yaml").write_text("x: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n"
        "    params: [x]\n    outs: [out.txt]\n"
    )
    run([DVC, "repro", "-q"], tmp_path)
    return tmp_path


def test_decide_follows_dvc_status(dvc_repo: Path) -> None:
    clean = decide(dvc_repo, "params.yaml")
    assert not clean.changed and clean.reason == "up to date with dvc.lock"
    assert decide(dvc_repo, "params.yaml", force=True).changed
    (dvc_repo / "params.yaml").write_text("x: 2\n")
    changed = decide(dvc_repo, "params.yaml")
    assert changed.changed and changed.reason == "changed: copy"
    assert changed.submission_id == f"retrain-{inputs_hash(dvc_repo, 'params.yaml')}"
    assert changed.submission_id != clean.submission_id


def test_a_code_edit_and_a_raw_data_edit_give_new_job_ids(dvc_repo: Path) -> None:
    """Code and data.root are inputs too: an already-succeeded job id must not hide them."""
    (dvc_repo / "pipelines").mkdir()
    (dvc_repo / "pipelines/step.py").write_text("LR = 1\n")
    before = decide(dvc_repo, "params.yaml")
    (dvc_repo / "pipelines/step.py").write_text("LR = 2\n")  # a code edit DVC does not track
    after_code = decide(dvc_repo, "params.yaml")
    assert after_code.submission_id != before.submission_id
    raw = dvc_repo / "raw"
    (raw / "cls").mkdir(parents=True)
    (raw / "cls/a.png").write_bytes(b"a")
    (dvc_repo / "job.yaml").write_text("x: 1\ndata: {root: raw}\n")
    with_data = decide(dvc_repo, "job.yaml")
    assert with_data.changed and "outside DVC" in with_data.reason  # the id decides
    assert decide(dvc_repo, "job.yaml").submission_id == with_data.submission_id  # stable
    (raw / "cls/a.png").write_bytes(b"ab")  # a data edit
    assert decide(dvc_repo, "job.yaml").submission_id != with_data.submission_id
    (raw / "cls/b.png").write_bytes(b"b")  # a new image
    ids = {decide(dvc_repo, "job.yaml").submission_id, with_data.submission_id}
    assert len(ids) == 2


def test_a_shallow_clone_without_outputs_is_up_to_date(
    dvc_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The CronJob's `git clone --depth 1` has no DVC cache: missing outputs are not changes."""
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run([*git, "add", "-A"], dvc_repo)
    run([*git, "commit", "-qm", "pipeline"], dvc_repo)
    clone = tmp_path_factory.mktemp("shallow") / "repo"
    run(["git", "clone", "-q", "--depth", "1", dvc_repo.as_uri(), str(clone)], clone.parent)
    assert not (clone / "out.txt").exists()
    there = decide(clone, "params.yaml")
    assert not there.changed and there.reason == "up to date with dvc.lock"
    assert there.submission_id == decide(dvc_repo, "params.yaml").submission_id
    (clone / "in.txt").write_text("2\n")
    assert decide(clone, "params.yaml").reason == "changed: copy"


def test_decide_outside_dvc_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=f"`dvc status` failed in {tmp_path}"):
        decide(tmp_path, "params.yaml")


@pytest.mark.ray
def test_submission_is_idempotent_and_retries_failures(
    ray_head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", ray_head.env()["PATH"])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    (tmp_path / "job.py").write_text(
        "import os, sys\nprint('trigger', os.environ.get('DDPM_TRIGGER'))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    base = f"t-{uuid.uuid4().hex[:8]}"
    client, sid, new = submit(
        ray_head.address, "python job.py 0", base, tmp_path, {"DDPM_TRIGGER": "x"}
    )
    assert (sid, new) == (base, True)
    assert wait(client, sid, timeout_s=120) == JobStatus.SUCCEEDED
    assert "trigger x" in client.get_job_logs(sid)
    assert submit(ray_head.address, "python job.py 0", base, tmp_path)[1:] == (base, False)

    failing = f"f-{uuid.uuid4().hex[:8]}"
    client, sid, _ = submit(ray_head.address, "python job.py 3", failing, tmp_path)
    assert wait(client, sid, timeout_s=120) == JobStatus.FAILED
    _, retry, new = submit(ray_head.address, "python job.py 0", failing, tmp_path)
    assert (retry, new) == (f"{failing}-2", True)


def test_job_uploads_the_code_but_not_the_data() -> None:
    """The excludes are anchored at the working dir: `pipelines/data/` is code, `data/` is not."""
    from pathspec import PathSpec

    env = runtime_env(Path("."))
    excluded = PathSpec.from_lines("gitwildmatch", env["excludes"]).match_file
    # The upload has no .git: the commit of the code travels as an env var (MLflow's git tag).
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert env["env_vars"]["DDPM_GIT_COMMIT"].startswith(head.strip())
    for path in ("data/shards/train-000000.tar", "models/ema.safetensors", "mlflow.db"):
        assert excluded(path), path
    for path in ("pipelines/data/stage.py", "pipelines/artifacts/model_dir.py", "stages/all.py"):
        assert not excluded(path), path
