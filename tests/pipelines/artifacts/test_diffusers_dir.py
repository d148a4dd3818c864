"""The diffusers export: a real `DDPMPipeline.from_pretrained` loads it; same eps as our U-Net."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import diffusers
import pytest
import torch

from ddpm_core.config import ConfigError
from ddpm_core.schedule import make_betas
from ddpm_core.unet import UNet
from pipelines.artifacts.diffusers_dir import (
    MODEL_INDEX,
    README,
    SCHEDULER_CONFIG,
    load_diffusers_dir,
    write_diffusers_dir,
)
from pipelines.config import Params

MakeParams = Callable[..., Params]
# The smallest model diffusers can express: every width >= 32 (one GroupNorm group count).
EXPORTABLE = {"unet.ch": 32, "unet.ch_mult": [1, 2], "unet.attn_resolutions": [4]}


def random_model(params: Params) -> UNet:
    torch.manual_seed(0)
    model = UNet.from_config(params.unet, params.data.channels, params.data.resolution).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the zero-initialised output conv would give eps=0
    return model


@pytest.mark.parametrize(
    ("var_type", "variance_type"), [("fixedlarge", "fixed_large"), ("fixedsmall", "fixed_small")]
)
def test_ddpm_pipeline_loads_the_export_and_gives_our_eps(
    tmp_path: Path, make_params: MakeParams, var_type: str, variance_type: str
) -> None:
    params = make_params({**EXPORTABLE, "diffusion.var_type": var_type, "diffusion.T": 50})
    model = random_model(params)
    folder = write_diffusers_dir(params, model.state_dict(), tmp_path / "export")

    pipe = diffusers.DDPMPipeline.from_pretrained(str(folder))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 17, 49])
    with torch.no_grad():
        ours, theirs = model(x, t), pipe.unet(x, t).sample
    assert ours.abs().mean() > 1e-2  # a non-trivial output
    assert ((theirs - ours).norm() / ours.norm()).item() <= 1e-5

    sched = pipe.scheduler
    assert isinstance(sched, diffusers.DDPMScheduler)
    assert sched.config.num_train_timesteps == 50
    assert (sched.config.variance_type, sched.config.prediction_type) == (variance_type, "epsilon")
    assert sched.config.clip_sample is True
    d = params.diffusion
    ours_betas = torch.tensor(make_betas(d.beta_schedule, d.T, d.beta_start, d.beta_end))
    torch.testing.assert_close(sched.betas, ours_betas.float(), rtol=0, atol=0)

    # The verified reader gets our U-Net back (the round trip through diffusers' layout).
    back = load_diffusers_dir(params, folder)
    with torch.no_grad():
        torch.testing.assert_close(back(x, t), ours, rtol=0, atol=0)


def test_x0_target_is_sample_prediction(tmp_path: Path, make_params: MakeParams) -> None:
    params = make_params({**EXPORTABLE, "diffusion.mean_type": "x0"})
    write_diffusers_dir(params, random_model(params).state_dict(), tmp_path / "export")
    config = json.loads((tmp_path / "export" / SCHEDULER_CONFIG).read_text())
    assert config["prediction_type"] == "sample"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"diffusion.mean_type": "mean"}, "diffusion.mean_type"),
        ({"diffusion.var_type": "learned", "diffusion.loss_type": "kl"}, "diffusion.var_type"),
        ({}, "unet.ch is 8"),
    ],
)
def test_inexpressible_models_get_a_readme_naming_why(
    tmp_path: Path, make_params: MakeParams, overrides: dict[str, str], named: str
) -> None:
    params = make_params({**EXPORTABLE, **overrides} if overrides else {})
    folder = write_diffusers_dir(params, random_model(params).state_dict(), tmp_path / "export")
    assert [p.name for p in folder.iterdir()] == [README]
    assert named in (folder / README).read_text()
    with pytest.raises(ValueError, match=named):
        load_diffusers_dir(params, folder)


def test_bad_input_names_the_problem_and_keeps_the_old_export(
    tmp_path: Path, make_params: MakeParams
) -> None:
    params = make_params(EXPORTABLE)
    folder = write_diffusers_dir(params, random_model(params).state_dict(), tmp_path / "export")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    other = make_params({**EXPORTABLE, "unet.ch_mult": [1, 1]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        write_diffusers_dir(params, random_model(other).state_dict(), folder)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporaries left

    with pytest.raises(ConfigError, match=r"scheduler_config.json: num_train_timesteps=20"):
        load_diffusers_dir(make_params({**EXPORTABLE, "diffusion.T": 30}), folder)
    with pytest.raises(ConfigError, match=r"unet/config.json: ch_mult=\(1, 2\)"):
        load_diffusers_dir(other, folder)
    (folder / MODEL_INDEX).unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json: not found"):
        load_diffusers_dir(params, folder)
