"""Process-wide device switches in one place: TF32, cuDNN autotuning, full-fp32 blocks, and the
device a Ray worker runs on. (Execution options of the network are in `pipelines.infra.accel`.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on CUDA (bf16 runs are unaffected);
    cuDNN autotuning for training, or fixed (deterministic) algorithms where outputs must repeat
    bit for bit (sampling, NLL). The only place the project sets these process-wide switches.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off inside the block (e.g. Inception features for FID, which must not depend on
    whether a GPU computed them); restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def pick_device(use_gpu: bool, what: str) -> torch.device:
    """cuda when `use_gpu` (an error naming the param `what` if this process has none)."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what} is true but this Ray worker has no CUDA device")
    return torch.device("cuda")
