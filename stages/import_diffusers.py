"""Use released weights instead of training: a diffusers UNet2DModel folder -> `paths.model`.

For the paper's CIFAR-10 model, download google/ddpm-cifar10-32 (config.json and
diffusion_pytorch_model.safetensors) and run, with the paper profile as params.yaml:
    python -m stages.import_diffusers --params params.yaml --checkpoint ddpm-cifar10-32/
then `dvc commit -f train` (record the weights as the train stage's output) and
`dvc repro evaluate`, which samples and evaluates without training.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from pipelines.config import Params
from pipelines.infra.lifecycle import run_tracked
from pipelines.infra.tracking import open_run
from pipelines.train.released import ReleasedResult, check_released, import_released
from stages.common import main_for


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a diffusers model folder")


def run(params: Params, root: Path, args: argparse.Namespace) -> ReleasedResult:
    check_released(params, args.checkpoint)  # before an MLflow run is opened
    tracker = open_run(params, "train", root, run_name="released-weights")
    body = functools.partial(import_released, checkpoint=args.checkpoint)
    return run_tracked(params, root, "train", tracker, body)


def main(argv: list[str] | None = None) -> int:
    return main_for("import_diffusers", __doc__ or "", argv, run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
