"""The MLflow Model helpers that need no server: the tracking-store switch."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from pipelines.train.mlflow_model import MLFLOW_TRACKING_URI_ENV, tracking_store


@pytest.mark.parametrize("before", ["http://mlflow.example.invalid:5000", None])
def test_tracking_store_leaves_the_environment_as_it_was(
    before: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's `_use_tracking_uri` alone unset MLFLOW_TRACKING_URI on exit, so `stages.all`
    logged every stage after train to the default sqlite store instead of the user's server."""
    if before is None:
        monkeypatch.delenv(MLFLOW_TRACKING_URI_ENV, raising=False)
    else:
        monkeypatch.setenv(MLFLOW_TRACKING_URI_ENV, before)
    inner = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_store(inner):
        assert mlflow.get_tracking_uri() == inner
    assert os.environ.get(MLFLOW_TRACKING_URI_ENV) == before
