"""Tests for atomic safetensors weights and torch training-state files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_core.ema import EMA
from ddpm_core.unet import UNet
from pipelines.train.checkpoint import (
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)


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


def test_training_state_round_trip(tmp_path: Path) -> None:
    model = tiny_unet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).square().mean().backward()
    opt.step()
    ema = EMA(model, decay=0.9)
    ema.update(model)
    gen = torch.Generator().manual_seed(5)
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 1,
        "rng": {"torch": torch.get_rng_state(), "generator": gen.get_state()},
    }
    path = save_training_state(tmp_path / "state.pt", state)
    got = load_training_state(path)
    assert got["step"] == 1
    opt2 = torch.optim.Adam(tiny_unet().parameters(), lr=2e-4)
    opt2.load_state_dict(got["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    ema2 = EMA(tiny_unet())
    ema2.load_state_dict(got["ema"])
    assert ema2.num_updates == 1
    gen2 = torch.Generator()
    gen2.set_state(got["rng"]["generator"])
    assert torch.equal(torch.rand(3, generator=gen2), torch.rand(3, generator=gen))


def test_load_training_state_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_training_state(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_training_state(bad)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a dict"):
        load_training_state(tmp_path / "list.pt")


def test_failed_training_state_write_keeps_previous_file(tmp_path: Path) -> None:
    path = save_training_state(tmp_path / "state.pt", {"step": 1})
    with pytest.raises(Exception, match="pickle|lambda"):
        save_training_state(path, {"step": 2, "bad": lambda: None})  # fails while writing
    assert load_training_state(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
