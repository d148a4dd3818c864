"""The sampling actor: one EMA model copy per Ray Data actor, one sample shard per input row.

Work unit b is the index range [b*B, min((b+1)*B, N)) (`artifacts.samples.plan_shards`); the
actor samples it with per-image noise (`ddpm_core.sampling`: image i depends only on (seed, i))
and writes `samples-{b:06d}.tar` itself. A shard already complete and verified is kept, so a
rerun after a crash redoes only what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.sampling import sample_batched
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.artifacts.samples import ShardSpec, verify_shard, write_shard
from pipelines.config import Params
from pipelines.infra.model_runner import sample_runner
from pipelines.infra.sampler_params import sampler_of
from pipelines.sample.progress import Reporter


def build_diffusion(params: Params) -> GaussianDiffusion:
    """p_theta's sampler: all T steps (paper), or every `sample.stride`-th (fast, not paper)."""
    return GaussianDiffusion.from_config(params.diffusion).respaced(params.sample.stride)


class SamplerActor:
    """Ray Data callable class: one model copy per actor, one shard per input row.

    The EMA U-Net runs as `infra.model_runner.sample_runner` sets it up: threads from
    `sample.cpus_per_worker`, `sample.use_gpu`'s device with deterministic backends (same images
    on every rerun) and the sample.* execution options (bf16, channels_last, compile).
    """

    def __init__(
        self,
        params: Params,
        model_dir: Path,
        out_dir: Path,
        board: ray.actor.ActorHandle | None = None,
    ) -> None:
        self.params = params
        self.board = board  # progress.StepBoard: denoising steps done, for the driver's ETA
        self.model, self.device = sample_runner(params).load(load_ema_model, params, model_dir)
        self.diffusion = build_diffusion(params)
        self.sampler = sampler_of(params)
        self.out_dir = out_dir
        self.shape = params.data.image_shape

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch: columns index/start/stop (one row per shard) -> one result row per shard."""
        rows = [
            self.run_shard(ShardSpec(int(b), int(s), int(e)))
            for b, s, e in zip(batch["index"], batch["start"], batch["stop"], strict=True)
        ]
        return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}

    def run_shard(self, spec: ShardSpec) -> dict[str, Any]:
        t0 = time.perf_counter()
        digest = verify_shard(self.out_dir / spec.name, spec, self.shape)
        skipped = digest is not None
        reporter = self._reporter(spec)
        if reporter is not None and skipped:
            reporter.skipped()
        if digest is None:
            images = sample_batched(
                self.model,
                self.diffusion,
                range(spec.start, spec.stop),
                self.params.seed,
                self.shape,
                self.params.sample.batch_size,  # one work unit: one batch
                self.device,
                self.sampler,
                on_step=None if reporter is None else reporter.on_step,
            )  # (n, C, H, W) uint8
            digest = write_shard(images, spec, self.out_dir)
        return {
            "index": spec.index,
            "file": spec.name,
            "start": spec.start,
            "stop": spec.stop,
            "sha256": digest,
            "count": spec.count,
            "skipped": skipped,
            "seconds": time.perf_counter() - t0,
        }

    def _reporter(self, spec: ShardSpec) -> Reporter | None:
        if self.board is None:
            return None
        steps = self.diffusion.num_timesteps
        return Reporter(self.board, spec.index, spec.count, steps, max(1, steps // 20))
