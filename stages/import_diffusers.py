"""Use released weights instead of training: a diffusers UNet2DModel folder -> `paths.model`.

For the paper's CIFAR-10 model, download google/ddpm-cifar10-32 (config.json and
diffusion_pytorch_model.safetensors) and run, with the paper profile as params.yaml:
    python -m stages.import_diffusers --params params.yaml --checkpoint ddpm-cifar10-32/
then `dvc commit -f train` (record the weights as the train stage's output) and
`dvc repro evaluate`, which samples and evaluates without training.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.infra.tracking import repo_root
from pipelines.train.export import import_diffusers
from stages.common import parser, start


def main(argv: list[str] | None = None) -> int:
    p = parser((__doc__ or "").splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a diffusers model folder")
    started = start(p, argv)
    if started is None:
        return 0  # --dry-run printed the resolved config
    params, args = started
    weights = import_diffusers(params, args.checkpoint, repo_root())
    print(f"{weights}: released weights from {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
