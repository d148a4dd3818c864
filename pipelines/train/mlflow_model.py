"""The trained model as an MLflow Model: a pyfunc that samples images, linked to its run.

`log_mlflow_model` logs the model folder (EMA weights + config.json) with the sampler's code
(`infra.pyfunc_model`, "models from code") and `ddpm_core` as its code path, an explicit
signature, and pinned requirements (no inference, which would load the model again: the logging
costs a few seconds). MLflow 3 makes it a LoggedModel of the train run, in the run's experiment:
the run's metrics at the final step are linked to it; evaluate links FID and NLL too. Then it is
registered under `mlflow.model_name` (`infra.registry.register`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

import ddpm_core
from ddpm_core.samplers.registry import SAMPLERS, name_of, options
from pipelines.artifacts.model_dir import load_weights
from pipelines.config import Params
from pipelines.infra import pyfunc_model
from pipelines.infra.registry import register
from pipelines.infra.sampler_params import sampler_of
from pipelines.infra.tracking import Tracker

log = logging.getLogger(__name__)

ARTIFACT_NAME = "ddpm"  # the LoggedModel's name
WEIGHTS_TAG = "ddpm.weights_sha256"
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REQUIREMENTS = ("torch", "numpy", "pandas", "safetensors", "mlflow")
PARAM_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}  # sampler options


@dataclass(frozen=True)
class LoggedDdpm:
    """The logged model, and its registered version when `mlflow.model_name` is set."""

    model_id: str
    model_uri: str  # models:/<model_id>
    version: str | None

    def summary(self) -> str:
        where = f"registered as version {self.version}" if self.version else "not registered"
        return f"MLflow Model {self.model_uri} ({where})"


def sampler_specs(params: Params) -> list[ParamSpec]:
    """`sampler` and `<name>.<option>` of every registered sampler, defaults from `sample.*`."""
    specs = [ParamSpec("sampler", "string", name_of(sampler_of(params)))]
    for name in SAMPLERS:
        for key, value in options(sampler_of(params, name)).items():
            specs.append(ParamSpec(f"{name}.{key}", PARAM_TYPES[type(value)], value))
    return specs


def signature(params: Params) -> ModelSignature:
    """Input: one `index` per image; params with the run's sampling defaults; (N,H,W,C) uint8."""
    r, c = params.data.resolution, params.data.channels
    return ModelSignature(
        inputs=Schema([ColSpec("long", pyfunc_model.INDEX)]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, r, r, c))]),
        params=ParamSchema(
            [
                ParamSpec("seed", "long", params.seed),
                ParamSpec("stride", "long", params.sample.stride),
                *sampler_specs(params),
            ]
        ),
    )


def input_example(params: Params) -> tuple[pd.DataFrame, dict[str, int]]:
    """Two images with one denoising step (stride T): what MLflow checks the model with."""
    return pd.DataFrame({pyfunc_model.INDEX: [0, 1]}), {"stride": params.diffusion.T}


def requirements() -> list[str]:
    """Pinned to this environment (a CUDA/CPU local tag such as `+cpu` dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


@contextlib.contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the block; after it, the previous one and
    the `MLFLOW_TRACKING_URI` variable as they were. MLflow's own `_use_tracking_uri` unsets
    the variable on exit when no global URI was set before, so the next stage in the same
    process (`stages.all`) would log to the default store instead of the user's server."""
    saved = os.environ.get(MLFLOW_TRACKING_URI_ENV)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop(MLFLOW_TRACKING_URI_ENV, None)
        else:
            os.environ[MLFLOW_TRACKING_URI_ENV] = saved


def weights_digest(path: Path) -> str:
    """sha256 of the tensors and metadata of a weights file, not of its bytes: safetensors
    writes the metadata in no fixed order, so one state dict saved twice differs byte-wise."""
    tensors, meta = load_weights(path)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def logged_model_of(tracker: Tracker, weights_sha256: str) -> str | None:
    """The model id the run already logged for these weights (a rerun of a finished run)."""
    outputs = tracker.client.get_run(tracker.run_id).outputs
    for output in outputs.model_outputs if outputs else []:
        if tracker.client.get_logged_model(output.model_id).tags.get(WEIGHTS_TAG) == weights_sha256:
            return str(output.model_id)
    return None


def new_logged_model(tracker: Tracker, weights_sha256: str) -> str:
    """A PENDING LoggedModel of `tracker`'s run in the run's experiment, carrying the run's
    params (as `Model.log` copies them). `Model.log` with a run id but no active run would
    create it in the active experiment: the Default one (id 0), where the run's user may not
    write on a server with auth."""
    run = tracker.client.get_run(tracker.run_id)
    model = mlflow.initialize_logged_model(
        name=ARTIFACT_NAME,
        source_run_id=tracker.run_id,
        tags={WEIGHTS_TAG: weights_sha256},
        params=run.data.params,
        experiment_id=run.info.experiment_id,
    )
    return str(model.model_id)


def log_pyfunc(params: Params, tracker: Tracker, model_dir: Path, step: int, digest: str) -> str:
    """Log `model_dir` as the sampling pyfunc of `tracker`'s run at `step`; its model id."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model_dir"  # only the two files the sampler reads
        folder.mkdir()
        for file in (pyfunc_model.WEIGHTS_FILE, pyfunc_model.CONFIG_FILE):
            shutil.copy2(model_dir / file, folder / file)
        with tracking_store(tracker.uri):  # Model.log and mlflow.* resolve the store globally
            model_id = new_logged_model(tracker, digest)
            info = Model.log(
                artifact_path=None,
                name=ARTIFACT_NAME,
                flavor=mlflow.pyfunc,
                run_id=tracker.run_id,
                model_id=model_id,
                step=step,
                python_model=pyfunc_model.__file__,
                artifacts={pyfunc_model.MODEL_DIR: str(folder)},
                code_paths=[str(Path(ddpm_core.__file__).parent)],
                signature=signature(params),
                input_example=input_example(params),
                pip_requirements=requirements(),
                await_registration_for=0,
            )
    return str(info.model_id)


def log_mlflow_model(params: Params, tracker: Tracker, model_dir: Path, step: int) -> LoggedDdpm:
    """Log `model_dir` as a pyfunc of `tracker`'s run (once per weights) and register it."""
    digest = weights_digest(model_dir / pyfunc_model.WEIGHTS_FILE)
    model_id = logged_model_of(tracker, digest)
    if model_id is None:
        model_id = log_pyfunc(params, tracker, model_dir, step, digest)
    name, registered = params.mlflow.model_name, None
    if name:
        with tracking_store(tracker.uri):  # a local store resolves models:/ globally too
            registered = register(tracker.client, name, model_id, tracker.run_id)
    version = str(registered.version) if registered else None
    logged = LoggedDdpm(model_id, f"models:/{model_id}", version)
    log.info("%s", logged.summary())
    return logged
