"""Every profile loads strictly and composes through DVC's Hydra call; params.yaml is the
default profile's composition; the paper profile is the paper's CIFAR-10 recipe exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from dvc.utils.hydra import compose_and_dump

from ddpm_core.unet import UNet
from pipelines.config import load_params
from tests.helpers import PAPER_DIFFUSION, PAPER_UNET, REPO

PROFILES = sorted((REPO / "conf" / "profile").glob("*.yaml"))
# The 256x256 half (App. B, run_celebahq.py / run_lsun.py): steps, random flip, U-Net width,
# parameters and Table 3's FID.
PAPER_256 = {
    "celebahq-256": (500_000, True, 128, 113_673_219),
    "lsun-church-256": (1_200_000, True, 128, 113_673_219),
    "lsun-bedroom-256": (2_400_000, True, 128, 113_673_219),
    "lsun-cat-256": (1_800_000, False, 128, 113_673_219),
    "lsun-bedroom-256-large": (1_150_000, True, 192, 255_677_955),
}


def test_there_are_the_documented_profiles() -> None:
    names = {p.stem for p in PROFILES}
    assert names == {
        "default", "cifar10-paper", "cifar10-paper-1gpu", "cifar10-cluster", "mnist",
        "image-folder", "micro", "micro-256",
        *PAPER_256, *(f"{n}-cluster" for n in PAPER_256),
    }  # fmt: skip
    readme = (REPO / "README.md").read_text()
    assert all(f"conf/profile/{n}.yaml" in readme for n in names)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_loads_strictly_and_names_itself(path: Path) -> None:
    params = load_params(path)
    assert params.profile == path.stem


def compose(out: Path, overrides: list[str]) -> Path:
    """params.yaml as `dvc exp run -S <overrides>` writes it (DVC's own Hydra call)."""
    compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), overrides)
    return out


def test_params_yaml_is_the_default_profiles_composition(tmp_path: Path) -> None:
    """`dvc exp run` with no -S rewrites params.yaml byte for byte as committed."""
    composed = compose(tmp_path / "params.yaml", [])
    assert composed.read_text() == (REPO / "params.yaml").read_text()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_selected_with_dash_s_composes_to_the_profile(path: Path, tmp_path: Path) -> None:
    composed = compose(tmp_path / "params.yaml", [f"profile={path.stem}", "train.lr=0.5"])
    want = load_params(path)
    assert load_params(composed) == dataclasses.replace(
        want, train=dataclasses.replace(want.train, lr=0.5)
    )


@pytest.mark.parametrize("name", ["cifar10-paper", "cifar10-paper-1gpu", "cifar10-cluster"])
def test_paper_profile_is_the_official_cifar10_run(name: str) -> None:
    p = load_params(REPO / "conf" / "profile" / f"{name}.yaml")
    assert p.diffusion == PAPER_DIFFUSION and p.unet == PAPER_UNET
    assert (p.data.source, p.data.channels, p.data.resolution, p.data.random_flip) == (
        "cifar10", 3, 32, True,
    )  # fmt: skip
    t = p.train
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.grad_clip, t.ema_decay) == (
        800_000, 128, 2e-4, 5000, 1.0, 0.9999,
    )  # fmt: skip
    assert (p.sample.num_images, p.sample.stride, p.evaluate.fid.images) == (50_000, 1, 50_000)
    assert (p.evaluate.fid.reference, p.evaluate.fid.reference_images) == ("train", None)
    assert p.evaluate.isc_splits == 10
    model = UNet.from_config(p.unet, p.data.channels, p.data.resolution)
    assert sum(q.numel() for q in model.parameters()) == 35_746_307


def test_one_gpu_profile_differs_from_the_paper_profile_only_in_worker_counts() -> None:
    eight, one = (
        load_params(REPO / "conf" / "profile" / f"{n}.yaml")
        for n in ("cifar10-paper", "cifar10-paper-1gpu")
    )
    assert (eight.train.num_workers, one.train.num_workers) == (8, 1)
    assert (
        dataclasses.replace(
            one,
            profile=eight.profile,
            train=dataclasses.replace(one.train, num_workers=8),
            sample=dataclasses.replace(one.sample, num_workers=8),
            evaluate=dataclasses.replace(one.evaluate, num_workers=8),
        )
        == eight
    )
    # the GPU fast path is on in both (measured in benchmarks/results/gpu_profile*.md)
    assert (one.train.precision, one.train.channels_last, one.train.compile) == (
        "bf16", True, "reduce-overhead",
    )  # fmt: skip
    assert (one.sample.precision, one.sample.compile) == ("bf16", "reduce-overhead")


def test_cluster_profile_is_the_paper_profile_on_shared_storage() -> None:
    """deploy/ runs it: the paper's run with every path (and the raw data) under /mnt/ddpm."""
    paper, cluster = (
        load_params(REPO / "conf" / "profile" / f"{n}.yaml")
        for n in ("cifar10-paper", "cifar10-cluster")
    )
    wanted = [*vars(cluster.paths).values(), cluster.data.root, cluster.data.raw]
    assert all(Path(str(w)).is_relative_to("/mnt/ddpm") for w in wanted), wanted
    assert (
        dataclasses.replace(
            cluster,
            profile=paper.profile,
            paths=paper.paths,
            data=dataclasses.replace(cluster.data, root=paper.data.root, raw=paper.data.raw),
        )
        == paper
    )


@pytest.mark.parametrize("name", [*PAPER_256, *(f"{n}-cluster" for n in PAPER_256)])
def test_256_profiles_are_the_official_recipe_with_exact_parameter_counts(name: str) -> None:
    p = load_params(REPO / "conf" / "profile" / f"{name}.yaml")
    steps, flip, ch, n_params = PAPER_256[name.removesuffix("-cluster")]
    assert p.diffusion == dataclasses.replace(PAPER_DIFFUSION, var_type="fixedsmall")
    assert p.unet == dataclasses.replace(PAPER_UNET, ch=ch, ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0)
    d = p.data
    assert (d.channels, d.resolution, d.resize, d.random_flip) == (3, 256, "center_crop", flip)
    assert d.source == ("image_folder" if name.startswith("celebahq") else "lsun")
    t = p.train
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.grad_clip, t.ema_decay) == (
        steps, 64, 2e-5, 5000, 1.0, 0.9999,
    )  # fmt: skip
    assert t.batch_size // t.num_workers == 8  # per GPU: fits an 80 GB GPU
    assert (p.sample.num_images, p.sample.stride, p.evaluate.fid.images) == (50_000, 1, 50_000)
    assert p.evaluate.fid.reference == "train"  # Table 3: FID against the training set
    model = UNet.from_config(p.unet, d.channels, d.resolution)
    assert sum(q.numel() for q in model.parameters()) == n_params
    if name.endswith("-cluster"):
        wanted = [*vars(p.paths).values(), d.root, d.raw]
        assert all(Path(str(w)).is_relative_to("/mnt/ddpm") for w in wanted), wanted
        local = load_params(REPO / "conf" / "profile" / f"{name.removesuffix('-cluster')}.yaml")
        assert dataclasses.replace(
            p, profile=local.profile, paths=local.paths,
            data=dataclasses.replace(d, root=local.data.root, raw=local.data.raw),
        ) == local  # fmt: skip


def test_micro_256_has_the_256_shape_at_micro_size() -> None:
    """Six U-Net levels, centre crop, RGB and the posterior variance, on the embedded digits."""
    p = load_params(REPO / "conf" / "profile" / "micro-256.yaml")
    assert p.unet.ch_mult == (1, 1, 2, 2, 4, 4) and p.unet.attn_resolutions == (16,)
    assert (p.data.source, p.data.resolution, p.data.channels, p.data.resize) == (
        "digits", 64, 3, "center_crop",
    )  # fmt: skip
    assert p.diffusion.var_type == "fixedsmall"
    assert p.mlflow.model_name == "ddpm-micro-256"  # its own registered model
