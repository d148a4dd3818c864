"""The train stage's outputs from a final checkpoint, without Ray: model folder and loss CSV."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.artifacts.model_dir import load_ema_model, load_weights
from pipelines.config import Params
from pipelines.infra.tracking import open_run
from pipelines.train.export import export_model
from pipelines.train.step import gather_rng_states, make_state, save_checkpoint
from tests.helpers import loss_history


def test_export_writes_the_ema_weights_and_the_loss_history(
    make_params: Callable[..., Params], tmp_path: Path
) -> None:
    params = make_params()
    state = make_state(params, torch.device("cpu"), 0, 1)
    state.step, state.history = 4, [(2, 0.75), (4, 0.5)]
    ckpt = tmp_path / "step_00000004"
    save_checkpoint(ckpt, state, gather_rng_states(state.generator))
    tracker = open_run(params, "train", tmp_path)
    model = export_model(params, tmp_path, ckpt, {"run_key": "k"}, tracker)
    assert model.steps == 4 and model.history == state.history
    assert loss_history(params) == state.history
    _, meta = load_weights(model.weights)
    assert (meta["step"], meta["run_key"], meta["weights"]) == ("4", "k", "ema")
    ema = load_ema_model(params, Path(params.paths.model))  # what sample/evaluate load
    for k, v in state.ema.state_dict()["shadow"].items():
        assert torch.equal(ema.state_dict()[k], v)
    arts = {a.path for a in MlflowClient(tracker.uri).list_artifacts(tracker.run_id, "model")}
    assert arts == {"model/config.json", "model/ema.safetensors"}


def test_best_fid_without_the_best_ema_in_the_checkpoint_is_an_error(
    make_params: Callable[..., Params], tmp_path: Path
) -> None:
    """A checkpoint whose curve has its minimum at step 2 but no EMA copy of that step (what a
    resume that dropped `best_ema` writes) fails naming the file, never exports empty weights."""
    params = make_params({"train.export": "best_fid", "train.fid_every": 2})
    state = make_state(params, torch.device("cpu"), 0, 1)
    state.step, state.history = 4, [(2, 0.75), (4, 0.5)]
    state.fid_curve.record(2, 10.0)
    state.fid_curve.record(4, 12.0)
    ckpt = tmp_path / "step_00000004"
    save_checkpoint(ckpt, state, gather_rng_states(state.generator))
    tracker = open_run(params, "train", tmp_path)
    with pytest.raises(ValueError, match=r"step_00000004/training_state.pt.*step 2.*best_ema"):
        export_model(params, tmp_path, ckpt, {"run_key": "k"}, tracker)
    assert not Path(params.paths.model).exists()
