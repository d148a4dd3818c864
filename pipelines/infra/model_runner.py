"""One way to run a model on Ray workers: what a task or actor asks Ray for, and how it sets up
torch and the network inside it (sample, NLL, quality, FID features, evaluate's figures).

A `ModelRunner` is built in the driver from the typed params (`sample_runner`, ...) and travels
to the worker as the frozen record it is. The driver asks Ray for `resources()`; inside the
worker, `setup()` sets torch's intra-op threads to the CPUs Ray gave it, picks the device and
fixes the backends for repeatable outputs, and `load(fn)` adds the network: loaded by the
caller's `fn`, in eval mode on the device, with the inference options (bf16 autocast,
channels_last, torch.compile). The switches themselves live in `infra.device` and
`infra.accel`; this module only decides, once for every caller, which ones a worker gets.
Ray is imported only where the driver calls it: a stage whose Ray part is off, and the worker
itself, do not pay for the import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipelines.config import Params
from pipelines.infra.accel import InferenceModel, InferenceOptions
from pipelines.infra.device import configure_backends, pick_device


@dataclass(frozen=True)
class ModelRunner:
    """How each Ray task / actor of one fan-out runs a network for inference."""

    cpus: float  # the task's / actor's num_cpus; its torch threads are these, floored, >= 1
    use_gpu: bool  # one GPU per task / actor
    section: str  # the params section of `use_gpu`, for the error of a GPU-less worker
    options: InferenceOptions = field(default_factory=InferenceOptions)

    # -- the driver ----------------------------------------------------------------------------

    def resources(self) -> dict[str, float]:
        """What one task / actor asks Ray for (`ray.remote(**...)`, `map_batches(**...)`)."""
        return {"num_cpus": self.cpus, "num_gpus": 1 if self.use_gpu else 0}

    def check_fits(self, workers: int) -> None:
        """A clear error before any worker starts when `workers` of them exceed the cluster."""
        from pipelines.infra.ray import check_fits

        check_fits(workers, self.cpus, 1.0 if self.use_gpu else 0.0, self.section)

    def remote(self, fn: Callable[..., Any], **options: Any) -> Any:
        """`fn` (a function or an actor class) as a Ray task / actor with `resources()`."""
        import ray

        return ray.remote(**self.resources(), **options)(fn)  # type: ignore[call-overload]

    # -- inside the worker ---------------------------------------------------------------------

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def setup(self) -> torch.device:
        """Threads, device and backends of this process; returns the device.

        cuDNN runs fixed (deterministic) algorithms, so a rerun or another worker count gives
        the same outputs bit for bit (`configure_backends`; no-op switches on CPU).
        """
        torch.set_num_threads(self.threads)
        device = pick_device(self.use_gpu, f"{self.section}.use_gpu")
        configure_backends(device, deterministic=True)
        return device

    def load(self, fn: Callable[..., nn.Module], *args: Any) -> tuple[InferenceModel, torch.device]:
        """`setup()`, then the network `fn(*args)` (e.g. `load_ema_model(params, model_dir)`)
        ready to run: eps_theta(x_t, t) on the device in eval mode with the inference options,
        its output float32 (`accel.InferenceModel`)."""
        device = self.setup()
        return self.options.wrap(fn(*args), device), device


def sample_options(params: Params) -> InferenceOptions:
    """The sample.* execution options (the sample stage's actors and quality's curves)."""
    cfg = params.sample
    return InferenceOptions(cfg.precision, cfg.channels_last, cfg.compile)


def sample_runner(params: Params) -> ModelRunner:
    """The sample stage's actors: `sample.cpus_per_worker`, `sample.use_gpu`, the options."""
    cfg = params.sample
    return ModelRunner(cfg.cpus_per_worker, cfg.use_gpu, "sample", sample_options(params))


def quality_runner(params: Params) -> ModelRunner:
    """Quality's one task: `quality.cpus`, `quality.use_gpu`, and the network run as the
    sample stage runs it (its curves score what the sample stage would sample)."""
    cfg = params.quality
    return ModelRunner(cfg.cpus, cfg.use_gpu, "quality", sample_options(params))


def evaluate_runner(params: Params) -> ModelRunner:
    """Inception features and evaluate's figures: `evaluate.cpus_per_worker`, `evaluate.use_gpu`,
    the network in eager fp32."""
    cfg = params.evaluate
    return ModelRunner(cfg.cpus_per_worker, cfg.use_gpu, "evaluate")
