"""A training run's identity and folder without Ray: inputs, run key, the driver's notes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import Params
from pipelines.train.run import RESUME_NEUTRAL, RunFolder, run_key, validate_inputs
from pipelines.train.step import NonFiniteLossError

MakeParams = Callable[..., Params]


def _with_train(params: Params, **changes: Any) -> Params:
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **changes))


def test_run_key_changes_with_what_changes_the_weights_only(make_params: MakeParams) -> None:
    params = make_params()
    key = run_key(params, "manifest-a")
    assert len(key) == 12 and key == run_key(make_params(), "manifest-a")
    neutral = {"log_every": 7, "sample_every": 3, "checkpoint_every": 1, "keep_checkpoints": 5,
               "max_failures": 9, "cpus_per_worker": 1.0,
               "activation_checkpointing": True}  # fmt: skip
    assert set(neutral) <= set(RESUME_NEUTRAL)
    assert run_key(_with_train(params, **neutral), "manifest-a") == key  # a rerun resumes
    # Min-FID selection: `export` only picks saved weights (same run, re-exported); the FID
    # curve's estimator (fid_every, fid_images, fid_stride) is the run's, so it starts a new one.
    probed = _with_train(params, fid_every=2)
    assert run_key(_with_train(probed, export="best_fid"), "manifest-a") == run_key(
        probed, "manifest-a"
    )
    assert run_key(probed, "manifest-a") != key
    assert run_key(_with_train(params, lr=0.5), "manifest-a") != key
    assert run_key(make_params({"unet.ch": 16}), "manifest-a") != key
    assert run_key(params, "manifest-b") != key  # other shards


def test_inputs_are_checked_naming_the_fix(make_params: MakeParams, shards_dir: Path) -> None:
    params = make_params()
    with pytest.raises(FileNotFoundError, match=r"manifest.json: shard manifest not found.*shard"):
        validate_inputs(params, Path("/"))
    from pipelines.config import replace_path

    ok = replace_path(params, shards=str(shards_dir))
    assert validate_inputs(ok, Path("/"))["image_shape"] == [1, 8, 8]
    wrong = replace_path(make_params({"data.resolution": 16, "unet.attn_resolutions": [8]}),
                         shards=str(shards_dir))  # fmt: skip
    with pytest.raises(ValueError, match="image_shape .* data.resolution=16"):
        validate_inputs(wrong, Path("/"))


def test_run_folder_notes(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "ddpm-train-abc")
    assert folder.mlflow_run_id() is None and folder.attempt() == {}
    folder.remember_mlflow_run("run-1")
    assert folder.mlflow_run_id() == "run-1"
    folder.begin_attempt(resumed_from=4)
    folder.raise_if_nonfinite()  # nothing noted: no error
    folder.note_nonfinite("non-finite loss at step 6", 6, str(tmp_path / "step_00000005"))
    assert folder.attempt()["resumed_from"] == 4  # kept beside the note
    with pytest.raises(
        NonFiniteLossError, match="at step 6; last good checkpoint: .*step_00000005"
    ):
        folder.raise_if_nonfinite()
    folder.clear_attempt()
    assert folder.attempt() == {} and folder.mlflow_run_id() == "run-1"


def test_skipped_checkpoints_stay_named_across_the_attempts_of_a_stage_run(
    tmp_path: Path,
) -> None:
    """A fallback past a truncated checkpoint, then a worker restart that loads cleanly: the
    note still names the skipped folder; a new stage run (clear_attempt) starts empty."""
    folder = RunFolder(tmp_path / "ddpm-train-abc")
    folder.begin_attempt(2, ["step_00000004"])
    folder.begin_attempt(4)
    assert folder.attempt() == {"resumed_from": 4, "unusable_checkpoints": ["step_00000004"]}
    folder.begin_attempt(6, ["step_00000006"])
    assert folder.attempt()["unusable_checkpoints"] == ["step_00000004", "step_00000006"]
    folder.clear_attempt()
    folder.begin_attempt(6)
    assert folder.attempt() == {"resumed_from": 6}


def test_a_second_process_on_the_same_run_key_is_refused(
    make_params: MakeParams, shards_dir: Path, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    import yaml

    from pipelines.config import replace_path, to_dict
    from pipelines.train.run import RunLockedError, plan_run, run_lock

    params = replace_path(make_params(), shards=str(shards_dir))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(to_dict(params)))
    code = f"""
import time
from pathlib import Path
from pipelines.config import load_params
from pipelines.train.run import plan_run, run_lock
with run_lock(plan_run(load_params({str(tmp_path / "p.yaml")!r}), Path("/"))):
    print("locked", flush=True)
    time.sleep(120)
"""
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        locked = rf"ddpm-train-.*\.lock: .*pid {holder.pid}"
        with pytest.raises(RunLockedError, match=locked), run_lock(plan_run(params, Path("/"))):
            pass
        other = replace_path(make_params({"seed": 1}), shards=str(shards_dir))
        with run_lock(plan_run(other, Path("/"))):  # another run key: not blocked
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the killed holder's lock: a non-blocking acquire succeeds at once.
    with run_lock(plan_run(params, Path("/"))) as path:
        assert f"pid {__import__('os').getpid()}" in path.read_text()
