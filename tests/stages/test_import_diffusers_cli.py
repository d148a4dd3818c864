"""`stages.import_diffusers`: a real diffusers model folder -> the train stage outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import diffusers
import pytest
import torch
from mlflow.tracking import MlflowClient

from ddpm_core.config import ConfigError
from ddpm_core.schedule import make_betas
from pipelines.artifacts.model_dir import load_ema_model
from pipelines.config import Params
from pipelines.infra.tracking import tracking_uri
from stages import import_diffusers
from tests.helpers import MATCHING, SMALL, params_file, save_released

MakeParams = Callable[..., Params]


def test_released_weights_become_the_model_folder(
    tmp_path: Path, make_params: MakeParams, capsys: pytest.CaptureFixture[str]
) -> None:
    released = save_released(tmp_path / "released")
    params = make_params(MATCHING)
    # the scheduler's betas are the ones params give (diffusers' own construction)
    betas = diffusers.DDPMScheduler.from_pretrained(tmp_path / "released").betas
    d = params.diffusion
    ours = torch.as_tensor(make_betas(d.beta_schedule, d.T, d.beta_start, d.beta_end))
    torch.testing.assert_close(betas.double(), ours.double(), atol=1e-7, rtol=0)
    path = str(params_file(params, tmp_path / "p.yaml"))
    assert (
        import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "released")]) == 0
    )
    assert "released weights from" in capsys.readouterr().out

    model = load_ema_model(params, Path(params.paths.model))  # what sample/evaluate load
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 17])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), released(x, t).sample, rtol=1e-5, atol=1e-5)
    # Imported weights are exported again with the run's scheduler: diffusers loads them back.
    pipe = diffusers.DDPMPipeline.from_pretrained(params.paths.diffusers)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t).sample, model(x, t), rtol=1e-5, atol=1e-6)
    assert pipe.scheduler.config.num_train_timesteps == params.diffusion.T
    metrics = json.loads((Path(params.paths.metrics) / "train.json").read_text())
    info = json.loads((Path(params.paths.runs) / "train.json").read_text())  # texts: not metrics
    assert metrics["steps"] == 0 and info["details"]["weights"].startswith("released: ")
    client = MlflowClient(tracking_uri(params.mlflow, tmp_path))
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["weights"] == info["details"]["weights"]
    # Released weights are an MLflow Model and a registered version too (gated after evaluate).
    (output,) = run.outputs.model_outputs
    version = client.get_model_version(params.mlflow.model_name, "1")
    assert version.run_id == run.info.run_id and version.source == f"models:/{output.model_id}"


def test_architecture_mismatch_and_missing_files_are_named(
    tmp_path: Path, make_params: MakeParams
) -> None:
    save_released(tmp_path / "released")
    path = str(params_file(make_params({**MATCHING, "unet.ch": 16}), tmp_path / "p.yaml"))
    with pytest.raises(ConfigError, match=r"released/config.json: the released model has ch=32"):
        import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "released")])
    with pytest.raises(FileNotFoundError, match=r"nowhere/config.json: not found"):
        import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "nowhere")])
    assert not Path(make_params().paths.model).exists()


def test_learned_variance_needs_a_2c_output_model(tmp_path: Path, make_params: MakeParams) -> None:
    """A learned Sigma reads 2C outputs: a released C-output model is refused, a 2C one loads."""
    learned = {**MATCHING, "diffusion.var_type": "learned", "diffusion.loss_type": "kl"}
    path = str(params_file(make_params(learned), tmp_path / "p.yaml"))
    save_released(tmp_path / "c")
    with pytest.raises(ConfigError, match=r"has out_channels=1 but params give 2"):
        import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "c")])
    save_released(tmp_path / "2c", config={**SMALL, "out_channels": 2})
    assert import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "2c")]) == 0
    model = load_ema_model(make_params(learned), Path(make_params().paths.model))
    assert model.out_channels == 2


def test_released_scheduler_must_match_diffusion_params(
    tmp_path: Path, make_params: MakeParams
) -> None:
    path = str(params_file(make_params(MATCHING), tmp_path / "p.yaml"))
    for name, kwargs, message in [
        ("T", {"T": 1000}, "scheduler_config.json: the released scheduler has num_train_timeste"),
        ("end", {"beta_end": 0.01}, "has beta_end=0.01 but params diffusion.* give 0.02"),
        ("cos", {"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule='squaredcos_cap_v2'"),
    ]:
        save_released(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=message):
            import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / name)])
    (tmp_path / "T/scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="T/scheduler_config.json: not found"):
        import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "T")])
    save_released(tmp_path / "nokey")
    config = json.loads((tmp_path / "nokey/config.json").read_text())
    del config["layers_per_block"]
    (tmp_path / "nokey/config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="config.json: missing key 'layers_per_block'"):
        import_diffusers.main(["--params", path, "--checkpoint", str(tmp_path / "nokey")])
    assert not Path(make_params().paths.model).exists()
