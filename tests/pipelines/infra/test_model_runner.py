"""pipelines.infra.model_runner: what a worker asks Ray for and how it sets itself up, in a real
Ray task; which params each caller's runner reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pipelines.artifacts.model_dir import load_ema_model
from pipelines.config import Params
from pipelines.infra.accel import InferenceModel, InferenceOptions
from pipelines.infra.model_runner import (
    ModelRunner,
    evaluate_runner,
    quality_runner,
    sample_runner,
)
from tests.helpers import make_model_dir


def _threads_after_setup(runner: ModelRunner) -> tuple[int, float, str]:
    """In the worker: torch threads after `setup()` (from a worker an earlier task left at 5
    threads), the CPUs Ray assigned this task, the device."""
    import ray

    torch.set_num_threads(5)
    device = runner.setup()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    return torch.get_num_threads(), cpus, device.type


@pytest.mark.ray
def test_a_worker_runs_with_the_threads_of_the_cpus_ray_gave_it(local_ray: object) -> None:
    import ray

    for cpus, threads in ((0.5, 1), (2.0, 2)):
        runner = ModelRunner(cpus, False, "quality")
        assert runner.resources() == {"num_cpus": cpus, "num_gpus": 0}
        got = ray.get(runner.remote(_threads_after_setup).remote(runner))
        assert got == (threads, cpus, "cpu")


def test_load_gives_the_network_ready_to_run(make_params: Callable[..., Params]) -> None:
    """The EMA U-Net on the device, in eval mode, with the options, behind `InferenceModel`."""
    params = make_params({"sample.precision": "bf16", "sample.channels_last": True})
    model_dir = make_model_dir(params)
    model, device = sample_runner(params).load(load_ema_model, params, model_dir)
    assert isinstance(model, InferenceModel) and device == torch.device("cpu")
    assert (model.precision, model.channels_last, model.compile_mode) == ("bf16", True, False)
    assert not model.net.training
    x, t = torch.zeros(2, *params.data.image_shape), torch.zeros(2, dtype=torch.long)
    assert model(x, t).dtype == torch.float32


def test_each_caller_reads_its_own_params(make_params: Callable[..., Params]) -> None:
    """Quality runs the network as the sample stage does (its options), on its own resources;
    FID features and evaluate's figures in eager fp32 on evaluate's."""
    params = make_params({
        "sample.precision": "bf16", "sample.compile": "default", "quality.cpus": 1.5,
        "evaluate.nll_precision": "bf16", "evaluate.cpus_per_worker": 0.25,
    })  # fmt: skip
    bf16 = InferenceOptions("bf16", False, "default")
    assert sample_runner(params) == ModelRunner(0.5, False, "sample", bf16)  # tiny: 0.5 CPU
    assert quality_runner(params) == ModelRunner(1.5, False, "quality", bf16)
    assert evaluate_runner(params) == ModelRunner(0.25, False, "evaluate", InferenceOptions())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a GPU-less worker")
def test_a_gpu_runner_without_a_gpu_names_its_param() -> None:
    with pytest.raises(RuntimeError, match="quality.use_gpu is true but this Ray worker has no"):
        ModelRunner(1.0, True, "quality").setup()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_backends_are_deterministic() -> None:
    runner = ModelRunner(1.0, True, "sample")
    assert runner.resources() == {"num_cpus": 1.0, "num_gpus": 1}
    assert runner.setup() == torch.device("cuda")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
