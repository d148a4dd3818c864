"""The sampling actor without Ray: a shard per range, image i a function of (seed, i) alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ddpm_core.samplers.ddim import DDIM
from ddpm_core.sampling import sample_indices
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.artifacts.samples import ShardSpec, read_shard_images
from pipelines.config import Params
from pipelines.infra.model_runner import sample_runner
from pipelines.sample.actor import SamplerActor, build_diffusion
from tests.helpers import make_model_dir


def test_actor_writes_its_range_then_skips_it(make_params: Callable[..., Params]) -> None:
    params = make_params({"sample.stride": 5})
    model_dir = make_model_dir(params)
    out = Path(params.paths.samples)
    out.mkdir(parents=True)
    actor = SamplerActor(params, model_dir, out)
    batch = {"index": np.array([1]), "start": np.array([3]), "stop": np.array([6])}
    first = actor(batch)
    assert first["file"].tolist() == ["samples-000001.tar"] and not first["skipped"][0]
    images = read_shard_images((out / "samples-000001.tar").read_bytes(), ShardSpec(1, 3, 6), "")
    model = load_ema_model(params, model_dir)
    alone = sample_indices(
        model, build_diffusion(params), [4], params.seed, params.data.image_shape
    )
    assert torch.equal(torch.from_numpy(images[1:2]), alone)  # image 4 alone == in its range
    again = actor(batch)
    assert again["skipped"][0] and again["sha256"][0] == first["sha256"][0]


def test_actor_samples_with_ddim_when_selected(make_params: Callable[..., Params]) -> None:
    """sample.sampler: ddim reaches the actor (image 2 equals a direct DDIM call, not Algorithm 2)
    and enters the sampling plan, so shards of the other sampler are never kept on resume."""
    from pipelines.artifacts.model_dir import WEIGHTS_FILE
    from pipelines.artifacts.samples import sampling_plan

    ddim_options = {"ddim": {"eta": 0.5}}
    params = make_params(
        {"sample.stride": 5, "sample.sampler": "ddim", "sample.sampler_options": ddim_options}
    )
    model_dir = make_model_dir(params)
    out = Path(params.paths.samples)
    out.mkdir(parents=True)
    actor = SamplerActor(params, model_dir, out)
    actor({"index": np.array([0]), "start": np.array([0]), "stop": np.array([3])})
    images = torch.from_numpy(
        read_shard_images((out / "samples-000000.tar").read_bytes(), ShardSpec(0, 0, 3), "")
    )
    model, d, shape = (
        load_ema_model(params, model_dir),
        build_diffusion(params),
        params.data.image_shape,
    )
    ddim = sample_indices(model, d, [2], params.seed, shape, sampler=DDIM(0.5))
    assert torch.equal(images[2:], ddim)
    assert not torch.equal(images[2:], sample_indices(model, d, [2], params.seed, shape))
    plan = sampling_plan(params, model_dir / WEIGHTS_FILE)
    assert (plan["sampler"], plan["sampler_options"]) == ("ddim", asdict(DDIM(0.5)))
    paper = make_params({"sample.stride": 5})
    assert "sampler" not in sampling_plan(paper, model_dir / WEIGHTS_FILE)  # unchanged plan


def test_actor_runs_the_network_with_the_sample_options(make_params: Callable[..., Params]) -> None:
    """bf16 autocast + channels_last on CPU: a real sample, close to (not equal to) fp32's."""
    fast = make_params(
        {"sample.stride": 5, "sample.precision": "bf16", "sample.channels_last": True}
    )
    model_dir = make_model_dir(fast)
    wrapped, device = sample_runner(fast).load(load_ema_model, fast, model_dir)
    assert wrapped.precision == "bf16" and wrapped.channels_last and device.type == "cpu"
    plain = load_ema_model(fast, model_dir)
    a = sample_indices(wrapped, build_diffusion(fast), range(4), fast.seed, fast.data.image_shape)
    b = sample_indices(plain, build_diffusion(fast), range(4), fast.seed, fast.data.image_shape)
    assert a.shape == b.shape == (4, *fast.data.image_shape) and a.dtype == torch.uint8
    # bf16 takes effect (fp32 is deterministic: equal pixels would mean autocast did nothing)
    # and stays within 2% (relative L2 over the uint8 images).
    diff = a.float() - b.float()
    assert bool((diff != 0).any())
    assert float(diff.norm() / b.float().norm()) < 0.02
