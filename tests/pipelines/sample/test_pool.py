"""Ray Data sampling on a real local Ray cluster: worker-count invariance, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import torch

from ddpm_core.config import ConfigError
from ddpm_core.sampling import sample_indices
from ddpm_core.unet import UNet
from pipelines.artifacts.samples import (
    load_samples,
    plan_shards,
    prepare_dir,
    read_manifest,
    write_shard,
)
from pipelines.config import Params, to_dict
from pipelines.sample.pool import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_diffusion,
    image_shape,
    load_ema_model,
    run_sample_stage,
    sample_to_shards,
    sampling_plan,
)
from pipelines.train.checkpoint import save_weights

MakeParams = Callable[..., Params]


def make_model_dir(params: Params, seed: int = 0) -> Path:
    """A stand-in for the train stage's outputs: random (non-zero) EMA weights + config.json."""
    torch.manual_seed(seed)
    model = UNet.from_config(params.unet, params.data.channels, params.data.resolution)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the zero-initialised output conv would give eps=0
    model_dir = Path(params.paths.model)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = json.dumps(to_dict(params), sort_keys=True)
    save_weights(model_dir / WEIGHTS_FILE, model.state_dict(), {"config": config})
    (model_dir / CONFIG_FILE).write_text(config)
    return model_dir


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _params(make_params: MakeParams, **overrides: Any) -> Params:
    return make_params({f"sample.{k}": v for k, v in overrides.items()})


def _reference(params: Params) -> torch.Tensor:
    """Each shard's range sampled in one plain call (same batch composition as the pool)."""
    model = load_ema_model(params, Path(params.paths.model))
    diffusion, shape = build_diffusion(params), image_shape(params)
    specs = plan_shards(params.sample.num_images, params.sample.batch_size)
    chunks = [sample_indices(model, diffusion, range(s.start, s.stop), params.seed, shape)
              for s in specs]  # fmt: skip
    return torch.cat(chunks)


# ----------------------------------------------------------------------------------------------
# Bad input (no Ray needed: checked before the pool starts)


def test_missing_weights_and_config_name_the_file(make_params: MakeParams) -> None:
    params = make_params()
    with pytest.raises(FileNotFoundError, match="config.json"):
        sample_to_shards(params)
    model_dir = make_model_dir(params)
    (model_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        sample_to_shards(params)


def test_config_mismatch_names_config_and_key(make_params: MakeParams) -> None:
    make_model_dir(make_params())
    with pytest.raises(ConfigError, match=r"config.json: .*unet.ch=8 but params have 16"):
        load_ema_model(make_params({"unet.ch": 16}), Path(make_params().paths.model))
    with pytest.raises(ConfigError, match="diffusion.T=20"):
        load_ema_model(make_params({"diffusion.T": 30}), Path(make_params().paths.model))
    # var_type is a sampling choice: sigma^2 = beta or beta~ from the same weights
    load_ema_model(
        make_params({"diffusion.var_type": "fixedsmall"}), Path(make_params().paths.model)
    )


def test_weights_that_do_not_fit_the_config_name_the_file(make_params: MakeParams) -> None:
    params = make_params()
    model_dir = make_model_dir(params)
    other = make_params({"unet.ch": 4})
    state = UNet.from_config(other.unet, 1, 8).state_dict()
    save_weights(model_dir / WEIGHTS_FILE, state, {})  # config.json still says ch=8
    with pytest.raises(ValueError, match="ema.safetensors: weights do not fit"):
        load_ema_model(params, model_dir)


# ----------------------------------------------------------------------------------------------
# The Ray pool


@pytest.mark.ray
def test_worker_count_invariance_and_format(make_params: MakeParams, local_ray: None) -> None:
    one = _params(make_params, num_workers=1, num_images=10, batch_size=4)
    make_model_dir(one)
    m1, _ = sample_to_shards(one)
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
    m2, progress = sample_to_shards(two)
    assert progress.new == 10
    assert m2["ordered_hash"] == m1["ordered_hash"] and m2 == m1


@pytest.mark.ray
def test_resume_redoes_partial_and_foreign_shards_only(
    make_params: MakeParams, local_ray: None
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
    (out / ".samples-000002.tar.dead.tmp").write_bytes(b"half a shard")  # shard 2 in flight
    mtime0 = (out / specs[0].name).stat().st_mtime_ns
    m, progress = sample_to_shards(params)
    assert progress.new == 8  # shard 0 verified and kept; 1 and 2 redone
    assert (out / specs[0].name).stat().st_mtime_ns == mtime0
    assert torch.equal(load_samples(out), ref)
    assert not list(out.glob(".*.tmp"))


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
    make_params: MakeParams, local_ray: None
) -> None:
    params = make_params(
        {"sample.num_images": 16, "sample.batch_size": 2, "diffusion.T": 60, "seed": 3}
    )
    make_model_dir(params)
    out = Path(params.paths.samples)
    killed: list[int] = []
    thread = threading.Thread(target=_kill_one_actor_after_first_shard, args=(out, killed))
    thread.start()
    manifest, _ = sample_to_shards(params)  # Ray Data restarts the actor and retries its shard
    thread.join()
    assert killed and killed[0] < 8, "the actor was not killed while shards were outstanding"
    assert torch.equal(load_samples(out), _reference(params))
    assert len(manifest["shards"]) == 8


@pytest.mark.ray
def test_stage_writes_figures_metrics_and_strided_label(
    make_params: MakeParams, local_ray: None
) -> None:
    params = make_params({"sample.stride": 4, "sample.progressive_every": 8})
    make_model_dir(params)
    metrics = run_sample_stage(params)
    plots = Path(params.paths.plots)
    assert (plots / "sample_grid.png").is_file() and (
        plots / "progressive_generation.png"
    ).is_file()
    assert metrics["num_images"] == 8 and metrics["new_images"] == 8
    assert metrics["paper_sampler"] is False and metrics["num_steps"] == 5
    assert "not the paper" in metrics["sampler"]
    assert metrics["images_per_s"] > 0
