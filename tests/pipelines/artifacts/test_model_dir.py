"""The model folder: atomic safetensors weights, config.json, the verified EMA-model reader."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ddpm_core.config import ConfigError
from ddpm_core.unet import UNet
from pipelines.artifacts.model_dir import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_unet,
    exported_step,
    load_ema_model,
    load_weights,
    save_weights,
    write_model_dir,
)
from pipelines.config import Params, to_dict
from tests.helpers import make_model_dir

MakeParams = Callable[..., Params]


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8)


def test_weights_round_trip(tmp_path: Path) -> None:
    model = tiny_unet()
    meta = {"config": '{"ch": 8}', "step": "12"}
    path = save_weights(tmp_path / "sub" / "ema.safetensors", model.state_dict(), meta)
    sd, got_meta = load_weights(path)
    assert got_meta == meta
    assert sd.keys() == model.state_dict().keys()
    fresh = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8)
    fresh.load_state_dict(sd, strict=True)
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == ["ema.safetensors"]  # no temporary left


def test_same_weights_and_metadata_give_the_same_bytes(tmp_path: Path) -> None:
    """safetensors keeps metadata in a Rust HashMap, whose order changes from call to call:
    the same model written twice must still be the same bytes (DVC hashes `models/`)."""
    from safetensors.torch import load

    state = tiny_unet().state_dict()
    meta = {k: f"value {k}" for k in ("step", "run_key", "weights", "config", "a", "b")}
    blobs = set()
    for i in range(8):
        path = save_weights(tmp_path / f"w{i}.safetensors", state, meta)
        blobs.add(path.read_bytes())
    assert len(blobs) == 1
    (blob,) = blobs
    header_len = int.from_bytes(blob[:8], "little")
    assert (8 + header_len) % 8 == 0  # the data stays aligned
    header = json.loads(blob[8 : 8 + header_len])
    assert list(header["__metadata__"]) == sorted(meta)
    loaded = load(blob)  # a valid file: safetensors reads it back
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert load_weights(tmp_path / "w0.safetensors")[1] == meta


def test_shared_storage_views_are_saved(tmp_path: Path) -> None:
    base = torch.arange(6.0)
    save_weights(tmp_path / "w.safetensors", {"a": base, "b": base[:3]}, {})
    sd, _ = load_weights(tmp_path / "w.safetensors")
    assert torch.equal(sd["b"], torch.tensor([0.0, 1.0, 2.0]))


def test_failed_save_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.ones(2)}, {"v": "1"})
    with pytest.raises(ValueError, match="metadata"):
        save_weights(path, {"a": torch.zeros(2)}, {"v": 2})  # type: ignore[dict-item]
    sd, meta = load_weights(path)
    assert meta == {"v": "1"} and torch.equal(sd["a"], torch.ones(2))


def test_load_weights_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_weights(missing)
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_weights(corrupt)


def test_model_dir_round_trip(make_params: MakeParams) -> None:
    params = make_params()
    model = UNet.from_config(params.unet, params.data.channels, params.data.resolution)
    model_dir = Path(params.paths.model)
    weights = write_model_dir(params, model.state_dict(), {"step": "3"}, model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    _, meta = load_weights(weights)
    assert meta["step"] == "3" and json.loads(meta["config"]) == to_dict(params)
    assert json.loads((model_dir / CONFIG_FILE).read_text()) == to_dict(params)
    loaded = load_ema_model(params, model_dir)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_kill_while_replacing_the_model_folder_keeps_weights_and_config_paired(
    make_params: MakeParams,
) -> None:
    old_params = make_params()
    model = UNet.from_config(old_params.unet, old_params.data.channels, old_params.data.resolution)
    model_dir = Path(old_params.paths.model)
    write_model_dir(old_params, model.state_dict(), {"run": "old"}, model_dir)
    # a real writer of other weights + config, SIGKILLed when it puts a file or the folder in place
    code = f"""
import os, signal, torch
from pathlib import Path
from pipelines.artifacts.model_dir import write_model_dir
from pipelines.config import load_params
params = load_params({str(model_dir.parent / "killed.yaml")!r})
saved = torch.load({str(model_dir.parent / "sd.pt")!r})
state = {{k: torch.zeros_like(v) for k, v in saved.items()}}
real = os.replace
def replace(src, dst):
    if Path(dst) in (Path({str(model_dir)!r}), Path({str(model_dir / CONFIG_FILE)!r})):
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
write_model_dir(params, state, {{"run": "killed"}}, Path({str(model_dir)!r}))
"""
    import subprocess
    import sys

    import yaml

    raw = to_dict(old_params)
    raw["profile"] = "killed"
    (model_dir.parent / "killed.yaml").write_text(yaml.safe_dump(raw))
    torch.save(model.state_dict(), model_dir.parent / "sd.pt")
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    loaded = load_ema_model(old_params, model_dir)  # recovers the folder if needed
    _, meta = load_weights(model_dir / WEIGHTS_FILE)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert meta["run"] == "old" and config["profile"] == json.loads(meta["config"])["profile"]
    assert config["profile"] == old_params.profile
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sorted(p.name for p in model_dir.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_missing_files_are_named(make_params: MakeParams) -> None:
    params = make_params()
    with pytest.raises(FileNotFoundError, match="config.json: model config not found"):
        load_ema_model(params, Path(params.paths.model))
    model_dir = make_model_dir(params)
    (model_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        load_ema_model(params, model_dir)


def test_config_mismatch_names_config_and_key(make_params: MakeParams) -> None:
    make_model_dir(make_params())
    with pytest.raises(ConfigError, match=r"config.json: .*unet.ch=8 but params have 16"):
        load_ema_model(make_params({"unet.ch": 16}), Path(make_params().paths.model))
    with pytest.raises(ConfigError, match="diffusion.T=20"):
        load_ema_model(make_params({"diffusion.T": 30}), Path(make_params().paths.model))
    # var_type is a sampling choice: sigma^2 = beta or beta~ from the same weights
    load_ema_model(
        make_params({"diffusion.var_type": "fixedsmall"}), Path(make_params().paths.model)
    )


LEARNED = {"diffusion.var_type": "learned", "diffusion.loss_type": "kl"}


def test_learned_variance_model_has_2c_outputs_and_round_trips(make_params: MakeParams) -> None:
    params = make_params(LEARNED)
    model = build_unet(params)
    assert model.out_channels == 2 * params.data.channels == 2  # mean part + log sigma^2
    model_dir = make_model_dir(params)
    assert json.loads((model_dir / CONFIG_FILE).read_text())["diffusion"]["var_type"] == "learned"
    loaded = load_ema_model(params, model_dir)
    x, t = torch.zeros(2, 1, 8, 8), torch.tensor([0, 5])
    assert loaded(x, t).shape == (2, 2, 8, 8)


def test_learned_and_fixed_variance_models_do_not_load_as_each_other(
    make_params: MakeParams,
) -> None:
    learned, fixed = make_params(LEARNED), make_params()
    make_model_dir(learned)
    with pytest.raises(ConfigError, match=r"config.json: .*var_type='learned' but params have "
                                          r"'fixedlarge'.*output channels"):  # fmt: skip
        load_ema_model(fixed, Path(fixed.paths.model))
    make_model_dir(fixed)
    with pytest.raises(ConfigError, match=r"var_type='fixedlarge' but params have 'learned'"):
        load_ema_model(learned, Path(learned.paths.model))


def test_weights_that_do_not_fit_the_config_name_the_file(make_params: MakeParams) -> None:
    params = make_params()
    model_dir = make_model_dir(params)
    other = make_params({"unet.ch": 4})
    state = UNet.from_config(other.unet, 1, 8).state_dict()
    save_weights(model_dir / WEIGHTS_FILE, state, {})  # config.json still says ch=8
    with pytest.raises(ValueError, match="ema.safetensors: weights do not fit"):
        load_ema_model(params, model_dir)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused_naming_the_file(make_params: MakeParams, bad: float) -> None:
    params = make_params()
    model_dir = make_model_dir(params)
    state, meta = load_weights(model_dir / WEIGHTS_FILE)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = (
        state[key].clone().view(-1).index_fill(0, torch.tensor([0]), bad).view_as(state[key])
    )
    save_weights(model_dir / WEIGHTS_FILE, state, meta)
    with pytest.raises(ValueError, match=rf"ema.safetensors: tensors \['{key}'\] .*NaN or inf"):
        load_ema_model(params, model_dir)


def test_exported_step_is_the_weights_step_and_zero_for_released_weights(
    make_params: MakeParams,
) -> None:
    params = make_params()
    assert exported_step(make_model_dir(params, step=7)) == 7
    assert exported_step(make_model_dir(params)) == 0  # released weights carry no step
    with pytest.raises(FileNotFoundError):
        exported_step(Path(params.paths.model).parent / "missing")
