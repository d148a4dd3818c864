"""The sample stage's progress from the first reverse step: the board, the line, the pool."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from ddpm_core.sampling import sample_batched
from pipelines.artifacts.model_dir import WEIGHTS_FILE, load_ema_model
from pipelines.artifacts.samples import plan_shards, prepare_dir, sampling_plan, work_dir
from pipelines.config import Params
from pipelines.sample.actor import build_diffusion
from pipelines.sample.progress import Reporter, board, progress_line
from pipelines.sample.stage import run_pool
from tests.helpers import make_model_dir

MakeParams = Callable[..., Params]


def test_progress_line_counts_image_steps_and_projects_the_rest() -> None:
    # 100 images x 1000 steps; 25,000 image-steps done, 20,000 of them by this run in 10 s:
    # 2,000 image-steps/s = 2 images/s; 75,000 left -> 37.5 s.
    line = progress_line(25_000, 20_000, 100_000, 1000, 10.0)
    assert line == "sample: denoising 25% of 100 images x 1000 steps  2.00 images/s  ETA 0m38s"
    assert progress_line(5, 0, 10, 1, 1.0).endswith("ETA ?")  # only kept shards: no rate yet


@pytest.mark.ray
def test_the_reverse_loop_reports_every_step_to_the_board(
    make_params: MakeParams, local_ray: object
) -> None:
    params = make_params()
    make_model_dir(params)
    model, diffusion = load_ema_model(params, Path(params.paths.model)), build_diffusion(params)
    handle = board()
    seen: list[int] = []
    reporter = Reporter(handle, 0, 3, diffusion.num_timesteps, every=5)

    def on_step(k: int) -> None:
        seen.append(k)
        reporter.on_step(k)

    sample_batched(model, diffusion, range(3), 0, params.data.image_shape, 3, on_step=on_step)
    assert seen == list(range(1, diffusion.num_timesteps + 1))
    Reporter(handle, 1, 2, diffusion.num_timesteps, every=5).skipped()
    done, new = ray.get(handle.totals.remote())
    assert (done, new) == (5 * diffusion.num_timesteps, 3 * diffusion.num_timesteps)
    ray.kill(handle)


@pytest.mark.ray
def test_the_pool_logs_denoising_progress_before_the_last_shard(
    make_params: MakeParams, local_ray: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shards run one after another on one actor: the denoising line comes from inside a
    shard's reverse loop, so it is logged before the last shard is written."""
    params = make_params({"sample.num_workers": 1, "sample.num_images": 12, "sample.batch_size": 3})
    make_model_dir(params)
    model_dir = Path(params.paths.model)
    specs = plan_shards(params.sample.num_images, params.sample.batch_size)
    out = work_dir(Path(params.paths.samples), sampling_plan(params, model_dir / WEIGHTS_FILE))
    prepare_dir(out, sampling_plan(params, model_dir / WEIGHTS_FILE), specs)
    with caplog.at_level(logging.INFO):
        run_pool(params, specs, model_dir, out, progress_every_s=0.01)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sample: ")]
    denoising = [i for i, m in enumerate(lines) if m.startswith("sample: denoising")]
    last_shard = max(i for i, m in enumerate(lines) if "written" in m)
    assert denoising and denoising[0] < last_shard, lines
    assert all("ETA" in lines[i] and "of 12 images x 20 steps" in lines[i] for i in denoising)
