"""Process-wide device switches in one place: TF32, cuDNN autotuning, glibc's heap thresholds,
full-fp32 blocks, and the device a Ray worker runs on. (Execution options of the network are in
`pipelines.infra.accel`.)"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch

# glibc <malloc.h>: mallopt parameters, and the values the workers set
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 32 << 20  # bytes: glibc's own cap for its dynamic threshold (64-bit)
HEAP_TRIM_THRESHOLD = 1 << 30  # bytes free at the heap's top before it is given back


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on CUDA (bf16 runs are unaffected);
    cuDNN autotuning for training, or fixed (deterministic) algorithms where outputs must repeat
    bit for bit (sampling, NLL); glibc's heap keeps freed memory (`keep_freed_memory`). The only
    place the project sets these process-wide switches.
    """
    keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def keep_freed_memory() -> bool:
    """glibc's malloc serves blocks up to 32 MiB from the heap and keeps up to 1 GiB freed at its
    top for reuse; False (nothing changed) where the C library is not glibc.

    A training or sampling step frees its activations and allocates them again the next step.
    Under glibc's defaults (a dynamic mmap threshold, and a trim threshold of twice it) much of
    that memory went back to the kernel and came back as fresh zeroed pages every step: 17,127
    page faults per default-profile training step (67 MiB zeroed), 614 with these thresholds;
    a plain loop at 2 threads runs 4.0% faster with them (`benchmarks.train_overhead`; a
    one-process A/B gave 306 -> 350 images/s). Peak RSS is the same (929 MiB): what is kept is
    what the next step reuses. Arithmetic is untouched, so outputs are bit-identical.
    """
    libc = ctypes.CDLL(None)  # this process's own symbols: its C library's among them
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (not musl, not macOS)
        return False
    mmap = libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
    trim = libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    return bool(mmap and trim)


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
