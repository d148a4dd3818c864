"""Execution options of the network in one place: bf16 autocast, channels_last, torch.compile.

Training, sampling and NLL choose them by params; every option also runs on CPU (bf16 autocast
and `torch.compile` exist there too), so the tests exercise the same code paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

import torch
from torch import Tensor, nn

from pipelines.config import CompileMode, Precision

F = TypeVar("F", bound=Callable[..., Any])
COMPILE_MODES: tuple[CompileMode, ...] = get_args(CompileMode)


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on `device` (CUDA or CPU) when precision is bf16; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: got {precision!r}, expected 'fp32' or 'bf16'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_compile_mode(mode: object) -> CompileMode:
    if mode not in COMPILE_MODES or isinstance(mode, int) and mode is not False:
        raise ValueError(f"compile: got {mode!r}, expected one of {list(COMPILE_MODES)}")
    return mode  # type: ignore[return-value]


def compile_fn(fn: F, mode: CompileMode) -> F:
    """torch.compile(fn) in `mode` (a module or a function); fn itself when mode is False."""
    mode = check_compile_mode(mode)
    if mode is False:
        return fn
    return torch.compile(fn, mode=mode)  # type: ignore[return-value]


def frozen(mode: CompileMode) -> contextlib.AbstractContextManager[Any]:
    """Inductor freezing around calls of a network compiled for inference (weights fixed after
    the first call, run under no_grad): the parameters become constants, folded into the graph
    and prepacked for oneDNN on CPU (1.18x on the default U-Net's sampling step,
    benchmarks/results/cpu_options.md). A config patch around the calls, because Dynamo reads
    the setting while tracing: torch.compile(options={"freezing": True}) alone does not freeze."""
    if mode is False:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)  # type: ignore[no-any-return]


def mark_step(mode: CompileMode) -> None:
    """Tell CUDA-graph trees a new iteration starts (outputs of the previous one may be reused)."""
    if mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


@dataclass(frozen=True)
class InferenceOptions:
    """How sampling / NLL actors run the network (the sample.* / evaluate.nll_* params)."""

    precision: Precision = "fp32"
    channels_last: bool = False
    compile: CompileMode = False

    def wrap(self, model: nn.Module, device: torch.device) -> InferenceModel:
        return InferenceModel(model, device, self.precision, self.channels_last, self.compile)


class InferenceModel(nn.Module):
    """eps_theta(x_t, t) for sampling and NLL with the fast-path options applied.

    Inputs in channels_last when asked, the network under bf16 autocast when asked, the output
    always float32 in the input's layout, so the diffusion math (posterior, KL, decoder
    likelihood) stays in fp32 whatever the network ran in.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: Precision = "fp32",
        channels_last: bool = False,
        compile: CompileMode = False,
    ) -> None:
        super().__init__()
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.net = compile_fn(model, compile)
        self.device, self.precision = device, precision
        self.channels_last, self.compile_mode = channels_last, check_compile_mode(compile)

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, C, H, W) float32, t: (B,) int64 -> eps (B, C, H, W) float32."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mark_step(self.compile_mode)
        with autocast(self.precision, self.device), frozen(self.compile_mode):
            out = self.net(x, t)
        # clone: a CUDA-graph replay reuses its output buffer on the next call
        return out.float().clone() if self.compile_mode == "reduce-overhead" else out.float()
