"""The strict params loader: round trip, errors naming the dotted key, the file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ddpm_core.config import ConfigError
from pipelines.config import Params, flatten, from_dict, load_params, to_dict
from tests.helpers import default_params_dict, set_dotted


def test_params_yaml_round_trips() -> None:
    raw = default_params_dict()
    params = from_dict(Params, raw)
    assert to_dict(params) == raw
    assert isinstance(params.unet.ch_mult, tuple)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.batch_size", "64", "train.batch_size: got '64', expected int"),
        ("diffusion.mean_type", "v", "diffusion.mean_type: got 'v', expected one of"),
        ("unet.ch_mult", 2, "unet.ch_mult: got 2, expected a list of int"),
        ("train.num_workers", 3, "train.batch_size: got 64, expected divisible by"),
        ("unet.attn_resolutions", [3], "unet.attn_resolutions: got [3], expected resolutions"),
        ("data.channels", 2, "data.channels: got 2, expected 1 or 3"),
        ("train.use_gpu", 1, "train.use_gpu: got 1, expected bool"),
        ("evaluate.fid.images", 257, "evaluate.fid.images: got 257, expected <= sample.num_images"),
        ("evaluate.nll_images", 0, "evaluate.nll_images: got 0, expected an int >= 1"),
        ("sample.sampler", 3, "sample.sampler: got 3, expected str"),
        ("sample.sampler_options", [], "sample.sampler_options: got [], expected a mapping"),
        ("sample.sampler_options", {"ddim": 0.5}, "sample.sampler_options.ddim: got 0.5, expe"),
        ("sample.sampler_options", {"ddim": {"eta": None}}, ".ddim.eta: got None, expected bool |"),
        ("quality.samplers", [], "quality.samplers: got [], expected a non-empty list of distinct"),
        ("quality.samplers", ["heun", "heun"], "quality.samplers: got ['heun', 'heun'], expected"),
        ("evaluate.metrics", ["fid", "fid"], "evaluate.metrics: got ['fid', 'fid'], expected a"),
        ("evaluate.fid.reference", "val", "evaluate.fid.reference: got 'val', expected one of"),
        ("evaluate.kid.subset_size", 257, "evaluate.kid.subset_size: got 257, expected <= "),
        ("evaluate.kid.subsets", 0, "evaluate.kid.subsets: got 0, expected an int >= 1"),
        ("evaluate.isc", True, "evaluate: unknown key"),  # now a name in evaluate.metrics
        ("mlflow.promote_on", "", "mlflow.promote_on: got '', expected a lower-is-better"),
        ("quality.steps", [10, 30], "quality.steps: got [10, 30], expected step counts that"),
        ("quality.reverse_every", -1, "quality.reverse_every: got -1, expected an int >= 0"),
        ("train.compile", True, "train.compile: got True, expected one of [False, 'default',"),
        ("train.compile", 0, "train.compile: got 0, expected one of"),  # 0 == False, not a bool
        ("sample.precision", "fp16", "sample.precision: got 'fp16', expected one of"),
        ("evaluate.nll_compile", "max", "evaluate.nll_compile: got 'max', expected one of"),
        ("seed", -3, "seed: got -3, expected an int >= 0"),
        ("data.test_fraction", 0.0, "data.test_fraction: got 0.0, expected 0 < f < 1 for data"),
        ("data.bad_images", "ignore", "data.bad_images: got 'ignore', expected one of"),
        ("data.downscale", "bicubic", "data.downscale: got 'bicubic', expected one of"),
        ("mlflow.model_name", "", "mlflow.model_name: got '', expected null or a non-empty"),
        ("mlflow.model_name", " x", "mlflow.model_name: got ' x', expected null or a non-empty"),
        ("mlflow.system_metrics", "yes", "mlflow.system_metrics: got 'yes', expected bool"),
        ("train.shuffle_buffer", 0, "train.shuffle_buffer: got 0, expected an int >= 1"),
        ("train.loader_workers", -1, "train.loader_workers: got -1, expected an int >= 0"),
        ("train.prefetch", 0, "train.prefetch: got 0, expected an int >= 1"),
        ("train.cache_bytes", -1, "train.cache_bytes: got -1, expected bytes, an int >= 0"),
        ("train.cache_bytes", 1.5, "train.cache_bytes: got 1.5, expected int"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    raw = copy.deepcopy(default_params_dict())
    set_dotted(raw, key, value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Params, raw)


def test_no_test_split_needs_fid_and_nll_on_the_training_set() -> None:
    """data.test_fraction 0 (the official 256^2 runs: train on everything) leaves no test split:
    FID and the NLL must name the train split."""
    raw = copy.deepcopy(default_params_dict())
    over = {"data.source": "lsun", "data.root": "data/raw/x", "data.test_fraction": 0.0}
    for key, value in {**over, "evaluate.fid.reference": "train"}.items():
        set_dotted(raw, key, value)
    with pytest.raises(ConfigError, match=r"data.test_fraction: got 0.0, expected > 0, or 0 with"):
        from_dict(Params, raw)  # nll_split: test
    set_dotted(raw, "evaluate.nll_split", "train")
    assert from_dict(Params, raw).data.test_fraction == 0.0


def test_unknown_and_missing_keys_are_errors() -> None:
    raw = copy.deepcopy(default_params_dict())
    raw["train"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['train.learning_rate'\]"):
        from_dict(Params, raw)
    raw = copy.deepcopy(default_params_dict())
    del raw["unet"]["dropout"]
    with pytest.raises(ConfigError, match="unet.dropout: missing key"):
        from_dict(Params, raw)


def test_int_accepted_for_float_and_null_for_optional() -> None:
    raw = copy.deepcopy(default_params_dict())
    raw["train"]["lr"] = 1
    raw["data"]["max_images"] = None
    params = from_dict(Params, raw)
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_load_params_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=f"{bad}: params: unknown|{bad}: profile: missing"):
        load_params(bad)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("paths", "data_root", "message"),
    [
        ({"shards": "data"}, None, "paths.shards: got 'data', which overlaps paths.samples"),
        (
            {"samples": "data/shards"},
            None,
            "paths.shards: got 'data/shards', which overlaps paths.samples='data/shards'",
        ),
        ({"ray_storage": "data/shards/ckpt"}, None, "which overlaps paths.ray_storage"),
        ({"runs": "."}, None, "paths.runs: got '.', which contains the repository root"),
        ({"metrics": ".."}, None, "paths.metrics: got '..', which contains the repository root"),
        ({}, "data/shards/raw", "paths.shards: got 'data/shards', which overlaps data.raw"),
        ({"shards": "data/cifar/shards"}, "data/cifar", "overlaps data.raw='data/cifar'"),
    ],
)
def test_overlapping_output_folders_are_refused(
    paths: dict[str, str], data_root: str | None, message: str
) -> None:
    raw = copy.deepcopy(default_params_dict())
    raw["paths"].update(paths)
    raw["data"]["root"] = data_root
    raw["data"]["raw"] = data_root or "elsewhere/raw"
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        from_dict(Params, raw)


@pytest.mark.parametrize(
    ("root", "raw", "ok"),
    [
        ("data/cifar10", "data/cifar10", True),
        ("data/raw/cifar10", "data/raw", True),
        ("data/raw/../cifar10", "data/raw", False),
        ("data/cifar10", "data/raw", False),
        ("data", "data/raw", False),
    ],
)
def test_data_root_must_lie_in_the_raw_data_dvc_tracks(root: str, raw: str, ok: bool) -> None:
    """`data.raw` is the shard stage's DVC dep: raw data outside it would change unseen."""
    params = copy.deepcopy(default_params_dict())
    params["data"].update(source="image_folder", root=root, raw=raw)
    if ok:
        assert from_dict(Params, params).data.raw == raw
        return
    with pytest.raises(ConfigError, match=f"data.root: got '{root}', which is not inside data.raw"):
        from_dict(Params, params)


def test_absolute_path_holding_the_repo_is_refused_when_a_stage_starts(tmp_path: Path) -> None:
    import yaml

    from stages.common import load, parser

    raw = copy.deepcopy(default_params_dict())
    raw["paths"]["fid_stats"] = str(tmp_path.parent)  # holds the repo root (tmp_path) below
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    from_dict(Params, raw)  # lexically fine without the root
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # the stage runs in the repo root
        with pytest.raises(
            ConfigError, match="params.yaml: paths.fid_stats: .* contains the repository root"
        ):
            load(parser("").parse_args(["--params", str(tmp_path / "params.yaml"), "--dry-run"]))
