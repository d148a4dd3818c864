"""pipelines.infra.device: the process-wide switches and the worker's device, on CPU."""

from __future__ import annotations

import pytest
import torch

from pipelines.infra.device import configure_backends, full_fp32, pick_device


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
