"""The sample stage on the session's Ray cluster: worker-count invariance, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from ddpm_core.sampling import sample_indices
from pipelines.artifacts.model_dir import WEIGHTS_FILE, load_ema_model
from pipelines.artifacts.samples import (
    load_samples,
    plan_shards,
    prepare_dir,
    read_manifest,
    sampling_plan,
    write_shard,
)
from pipelines.config import Params
from pipelines.infra.lifecycle import run_tracked
from pipelines.infra.run_files import read_run_file, split_metrics
from pipelines.infra.tracking import open_run
from pipelines.sample.actor import build_diffusion
from pipelines.sample.stage import run_sample, sample_to_shards
from tests.helpers import dead_pid, make_model_dir

MakeParams = Callable[..., Params]


def _params(make_params: MakeParams, **overrides: Any) -> Params:
    return make_params({f"sample.{k}": v for k, v in overrides.items()})


def _reference(params: Params) -> torch.Tensor:
    """Each shard's range sampled in one plain call (same batch composition as the pool)."""
    model = load_ema_model(params, Path(params.paths.model))
    diffusion, shape = build_diffusion(params), params.data.image_shape
    specs = plan_shards(params.sample.num_images, params.sample.batch_size)
    chunks = [sample_indices(model, diffusion, range(s.start, s.stop), params.seed, shape)
              for s in specs]  # fmt: skip
    return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------
# Bad input (no Ray needed: checked before the pool starts)


def test_missing_weights_and_config_name_the_file(make_params: MakeParams, tmp_path: Path) -> None:
    params = make_params()
    with pytest.raises(FileNotFoundError, match="config.json"):
        sample_to_shards(params, tmp_path)
    model_dir = make_model_dir(params)
    (model_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        sample_to_shards(params, tmp_path)
    assert not Path(params.paths.samples).exists()


# ----------------------------------------------------------------------------------------------
# The Ray pool


@pytest.mark.ray
def test_worker_count_invariance_and_format(
    make_params: MakeParams, local_ray: object, tmp_path: Path
) -> None:
    one = _params(make_params, num_workers=1, num_images=10, batch_size=4)
    make_model_dir(one)
    m1, _ = sample_to_shards(one, tmp_path)
    out = Path(one.paths.samples)
    images = load_samples(out)
    assert images.shape == (10, 1, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(images, _reference(one))  # image i depends only on (seed, i)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"samples-00000{b}.tar" for b in range(3)]
    with tarfile.open(out / "samples-000002.tar") as tar:
        assert tar.getnames() == ["00000008.png", "00000009.png"]
    assert [(s["start"], s["stop"]) for s in m1["shards"]] == [(0, 4), (4, 8), (8, 10)]
    assert m1 == read_manifest(out)

    for tar in out.glob("*.tar"):
        tar.unlink()
    two = _params(make_params, num_workers=2, num_images=10, batch_size=4)
    m2, progress = sample_to_shards(two, tmp_path)
    assert progress.new == 10
    assert m2["ordered_hash"] == m1["ordered_hash"] and m2 == m1


@pytest.mark.ray
def test_resume_redoes_partial_and_foreign_shards_only(
    make_params: MakeParams, local_ray: object, tmp_path: Path
) -> None:
    params = _params(make_params, num_images=12, batch_size=4)
    model_dir = make_model_dir(params)
    out = Path(params.paths.samples)
    specs = plan_shards(12, 4)
    prepare_dir(out, sampling_plan(params, model_dir / WEIGHTS_FILE), specs)
    ref = _reference(params)  # (12, 1, 8, 8); the state a crashed run leaves behind:
    write_shard(ref[0:4], specs[0], out)  # shard 0 complete
    tar1 = out / specs[1].name
    write_shard(ref[4:8], specs[1], out)
    tar1.write_bytes(tar1.read_bytes()[:1500])  # shard 1 truncated
    pid = dead_pid()
    dead = out / f".samples-000002.tar.tmp-{socket.gethostname()}-{pid}-x"
    dead.mkdir()  # shard 2 in flight when its writer was killed
    (dead / specs[2].name).write_bytes(b"half a shard")
    mtime0 = (out / specs[0].name).stat().st_mtime_ns
    m, progress = sample_to_shards(params, tmp_path)
    assert progress.new == 8  # shard 0 verified and kept; 1 and 2 redone
    assert (out / specs[0].name).stat().st_mtime_ns == mtime0
    assert torch.equal(load_samples(out), ref)
    assert not list(out.glob(".samples-*"))


def _kill_one_actor_after_first_shard(out: Path, killed: list[int]) -> None:
    """SIGKILL one sampler actor process once the first shard exists (a crash mid-run)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("samples-*.tar")):
        time.sleep(0.02)
    for proc in psutil.Process().children(recursive=True):
        try:
            if "SamplerActor" in " ".join(proc.cmdline()):
                killed.append(len(list(out.glob("samples-*.tar"))))
                os.kill(proc.pid, signal.SIGKILL)
                return
        except psutil.Error:
            continue


@pytest.mark.ray
def test_actor_killed_mid_run_gives_identical_output(
    make_params: MakeParams, local_ray: object, tmp_path: Path
) -> None:
    params = make_params(
        {"sample.num_images": 16, "sample.batch_size": 2, "diffusion.T": 60, "seed": 3}
    )
    make_model_dir(params)
    out = Path(params.paths.samples)
    killed: list[int] = []
    thread = threading.Thread(target=_kill_one_actor_after_first_shard, args=(out, killed))
    thread.start()
    manifest, _ = sample_to_shards(
        params, tmp_path
    )  # Ray Data restarts the actor and retries its shard
    thread.join()
    assert killed and killed[0] < 8, "the actor was not killed while shards were outstanding"
    assert torch.equal(load_samples(out), _reference(params))
    assert len(manifest["shards"]) == 8


@pytest.mark.ray
def test_stage_writes_figures_metrics_and_strided_label(
    make_params: MakeParams, local_ray: object, tmp_path: Path
) -> None:
    params = make_params({"sample.stride": 4, "sample.progressive_every": 8})
    make_model_dir(params)
    tracker = open_run(params, "sample", tmp_path)
    result = run_tracked(params, tmp_path, "sample", tracker, run_sample)
    plots = Path(params.paths.plots)
    assert (plots / "sample_grid.png").is_file()
    assert (plots / "progressive_generation.png").is_file()
    assert result.num_images == 8 and result.new_images == 8 and result.images_per_s > 0
    metrics = json.loads((Path(params.paths.metrics) / "sample.json").read_text())
    numbers, details = split_metrics(result.metrics())
    assert metrics == numbers and metrics["num_steps"] == 5
    assert read_run_file(params, "sample", tmp_path)["details"] == details  # type: ignore[index]
    assert details["paper_sampler"] is False and "not the paper" in details["sampler"]


def test_sampler_label_says_ddim_is_not_the_paper(make_params: MakeParams) -> None:
    from pipelines.sample.stage import sampler_label

    assert "paper Algorithm 2" in sampler_label(make_params())
    ddim = make_params({"sample.sampler": "ddim", "sample.stride": 4})
    assert sampler_label(ddim) == "DDIM eta=0, 5 of 20 steps (Song et al. 2021, not the paper)"
    heun = make_params({"sample.sampler": "heun", "sample.sampler_options": {"heun": {}}})
    want = "Heun, all 20 steps (Karras et al. 2022, Algorithm 1, not the paper)"
    assert sampler_label(heun) == want
    unclipped = make_params({"sample.sampler_options": {"ancestral": {"clip_denoised": False}}})
    want = "ancestral clip_denoised=False, all 20 steps (paper Algorithm 2, not the paper)"
    assert sampler_label(unclipped) == want


def test_progressive_frames_are_the_shards_sampler(make_params: MakeParams) -> None:
    """Fig. 6's frames come from the sampler that drew the shards: the last frame is the image
    (a DPM-Solver++ step to a_bar = 1 returns x̂0), not Algorithm 2's."""
    from ddpm_core.samplers.dpmpp_2m import DpmSolverPP2M
    from pipelines.sample.stage import progressive_frames

    params = make_params({"sample.sampler": "dpmpp_2m", "sample.stride": 4})
    model = load_ema_model(params, make_model_dir(params))
    frames, _ = progressive_frames(params, model)
    n, d, shape = frames.shape[1], build_diffusion(params), params.data.image_shape
    want = sample_indices(model, d, range(n), params.seed, shape, sampler=DpmSolverPP2M())
    assert torch.equal(frames[-1], want)
    assert not torch.equal(want, sample_indices(model, d, range(n), params.seed, shape))
