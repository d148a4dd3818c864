"""Every profile loads strictly; the paper profile is the paper's CIFAR-10 recipe exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_core.unet import UNet
from pipelines.config import load_params
from tests.helpers import PAPER_DIFFUSION, PAPER_UNET, REPO

PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def test_there_are_the_documented_profiles() -> None:
    names = {p.stem for p in PROFILES}
    assert names == {"cifar10-paper", "mnist", "image-folder", "micro"}
    readme = (REPO / "README.md").read_text()
    assert all(f"profiles/{n}.yaml" in readme for n in names)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_loads_strictly_and_names_itself(path: Path) -> None:
    params = load_params(path)
    assert params.profile == path.stem


def test_paper_profile_is_the_official_cifar10_run() -> None:
    p = load_params(REPO / "profiles" / "cifar10-paper.yaml")
    assert p.diffusion == PAPER_DIFFUSION and p.unet == PAPER_UNET
    assert (p.data.source, p.data.channels, p.data.resolution, p.data.random_flip) == (
        "cifar10", 3, 32, True,
    )  # fmt: skip
    t = p.train
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.grad_clip, t.ema_decay) == (
        800_000, 128, 2e-4, 5000, 1.0, 0.9999,
    )  # fmt: skip
    assert (p.sample.num_images, p.sample.stride, p.evaluate.fid_images) == (50_000, 1, 50_000)
    assert (p.evaluate.fid_reference, p.evaluate.fid_reference_images) == ("train", None)
    assert p.evaluate.isc_splits == 10
    model = UNet.from_config(p.unet, p.data.channels, p.data.resolution)
    assert sum(q.numel() for q in model.parameters()) == 35_746_307
