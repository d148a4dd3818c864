"""pipelines.infra.device: the process-wide switches and the worker's device, on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.infra.device import configure_backends, full_fp32, pick_device
from tests.helpers import REPO


def test_full_fp32_turns_tf32_off_and_restores_it() -> None:
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with full_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_cpu_leaves_the_cuda_switches_alone() -> None:
    before = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    configure_backends(torch.device("cpu"))
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a GPU-less worker")
def test_a_gpu_param_without_a_gpu_names_the_param() -> None:
    assert pick_device(False, "sample.use_gpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="sample.use_gpu is true but this Ray worker has no"):
        pick_device(True, "sample.use_gpu")


FAULTS_PROBE = """
import resource, torch
from pipelines.config import load_params
from pipelines.infra.device import configure_backends
from pipelines.train.step import draw_t_noise, make_state, train_step

torch.set_num_threads(2)
params = load_params("params.yaml")  # the default profile's U-Net and batch
state = make_state(params, torch.device("cpu"), 0, 1)
x0 = torch.rand(params.train.batch_size, *params.data.image_shape) * 2 - 1

def faults_per_step(n=6):
    for _ in range(3):  # warm: the first steps allocate what later steps reuse
        train_step(state, x0, *draw_t_noise(state.generator, tuple(x0.shape), 1000), params.train)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        train_step(state, x0, *draw_t_noise(state.generator, tuple(x0.shape), 1000), params.train)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

default = faults_per_step()
configure_backends(torch.device("cpu"))  # what every training and inference worker does
print(default, faults_per_step())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_workers_reuse_freed_step_memory_instead_of_faulting_it_in_again(tmp_path: Path) -> None:
    """A default-profile training step under glibc's default heap thresholds gets fresh zeroed
    pages for much of its memory every step (measured ~17,000 minor faults per step); after the
    workers' `configure_backends` it reuses them (~600): 306 -> 350 images/s in a plain loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc defaults
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", FAULTS_PROBE], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    default, kept = map(float, out.split()[-2:])
    assert default > 5000 and kept < default / 5, (default, kept)
