"""Training-state files and checkpoint folders: round trips and failures, without Ray."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ddpm_core.ema import EMA
from ddpm_core.unet import UNet
from pipelines.config import Params
from pipelines.train.checkpoint import (
    STATE_FILE,
    TrainingCheckpoint,
    UnloadableStateError,
    checkpoint_dir_name,
    load_training_state,
    resume_candidates,
    save_training_state,
)
from pipelines.train.step import (
    checkpoint_of,
    draw_t_noise,
    gather_rng_states,
    load_checkpoint,
    make_state,
    save_checkpoint,
    train_step,
)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8)


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


def test_checkpoint_folder_restores_the_state_and_this_ranks_streams(
    make_params: Callable[..., Params], tmp_path: Path
) -> None:
    params = make_params()
    cpu = torch.device("cpu")
    state = make_state(params, cpu, 0, 1)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, noise = draw_t_noise(state.generator, tuple(x0.shape), params.diffusion.T)
    train_step(state, x0, t, noise, params.train)
    state.history.append((1, 0.5))
    save_checkpoint(tmp_path, state, gather_rng_states(state.generator))
    fresh = make_state(params, cpu, 0, 1)
    load_checkpoint(tmp_path, fresh, rank=0)
    assert fresh.step == 1 and fresh.history == [(1, 0.5)]
    for k, v in state.raw.state_dict().items():
        assert torch.equal(fresh.raw.state_dict()[k], v)
    assert torch.equal(fresh.generator.get_state(), state.generator.get_state())
    with pytest.raises(ValueError, match="RNG states of 1 ranks, this is rank 1"):
        load_checkpoint(tmp_path, make_state(params, cpu, 1, 2), rank=1)


def test_checkpoint_keeps_the_fid_curve_and_the_best_ema_for_a_resume(
    make_params: Callable[..., Params], tmp_path: Path
) -> None:
    params = make_params({"train.fid_every": 2, "train.export": "best_fid"})
    cpu = torch.device("cpu")
    state = make_state(params, cpu, 0, 1)
    best = {k: v.clone() for k, v in state.ema.model.state_dict().items()}
    state.fid_curve.record(2, 7.5)
    state.fid_curve.record(4, 9.0)
    state.best_ema = best
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t, noise = draw_t_noise(state.generator, tuple(x0.shape), params.diffusion.T)
    train_step(state, x0, t, noise, params.train)  # the live EMA moves away from `best`
    save_checkpoint(tmp_path, state, gather_rng_states(state.generator))
    fresh = make_state(params, cpu, 0, 1)
    load_checkpoint(tmp_path, fresh, rank=0)
    assert fresh.fid_curve.points == [(2, 7.5), (4, 9.0)] and fresh.fid_curve.best == (2, 7.5)
    assert fresh.best_ema is not None and fresh.best_ema.keys() == best.keys()
    assert all(torch.equal(fresh.best_ema[k], v) for k, v in best.items())
    # Without FID selection the checkpoint holds an empty curve and no best weights.
    plain = make_state(make_params(), cpu, 0, 1)
    save_checkpoint(tmp_path, plain, gather_rng_states(plain.generator))
    load_checkpoint(tmp_path, fresh, rank=0)
    assert fresh.fid_curve.points == [] and fresh.best_ema is None


def test_resume_falls_back_to_earlier_folders_and_redone_steps_get_new_names(
    tmp_path: Path,
) -> None:
    for name in ("step_00000002", "step_00000004", "step_00000004-redo", "step_00000006"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint_manager_snapshot.json").touch()
    # step_6: a later folder a crashed report left behind, never tried before step_4's.
    tried = [p.name for p in resume_candidates(tmp_path / "step_00000004-redo")]
    assert tried == ["step_00000004-redo", "step_00000002"]
    tried = [p.name for p in resume_candidates(tmp_path / "step_00000006")]
    assert tried == ["step_00000006", "step_00000004-redo", "step_00000004", "step_00000002"]
    assert checkpoint_dir_name(4) == "step_00000004"
    bad = frozenset({"step_00000004", "step_00000004-redo"})
    assert checkpoint_dir_name(4, bad) == "step_00000004-redo-redo"
    assert checkpoint_dir_name(6, bad) == "step_00000006"


def test_the_checkpoint_file_keeps_its_keys_and_round_trips_the_record(
    make_params: Callable[..., Params], tmp_path: Path
) -> None:
    state = make_state(make_params(), torch.device("cpu"), 0, 1)
    state.step, state.history = 4, [(2, 0.75), (4, 0.5)]
    state.fid_curve.record(2, 7.5)
    ckpt = checkpoint_of(state, gather_rng_states(state.generator))
    path = ckpt.write(tmp_path)
    assert path == tmp_path / STATE_FILE
    on_disk = load_training_state(path)  # the dict format of earlier releases
    assert list(on_disk) == [
        "model", "ema", "optimizer", "step", "data_position", "rng", "history", "fid_curve",
        "best_ema",
    ]  # fmt: skip
    assert on_disk["data_position"] == 4 and on_disk["best_ema"] == {}
    got = TrainingCheckpoint.read(tmp_path)
    assert (got.step, got.history, got.fid_points, got.best_ema) == (
        4, ((2, 0.75), (4, 0.5)), ((2, 7.5),), None
    )  # fmt: skip
    assert (
        got.ema_weights(best=True) == {} and got.final_ema.keys() == state.raw.state_dict().keys()
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("best_ema", None, "key 'best_ema' missing"),
        ("fid_curve", None, "key 'fid_curve' missing"),
        ("step", "4", "key 'step' holds a str, expected an int"),
        ("history", torch.zeros(3), "key 'history' holds a Tensor, expected an .N, 2. tensor"),
        ("rng", [{"torch": torch.get_rng_state()}], "key 'rng' holds a list"),
    ],
)
def test_a_checkpoint_with_a_missing_or_mistyped_key_is_refused_naming_it(
    make_params: Callable[..., Params], tmp_path: Path, key: str, value: object, message: str
) -> None:
    state = make_state(make_params(), torch.device("cpu"), 0, 1)
    path = save_checkpoint(tmp_path, state, gather_rng_states(state.generator))
    broken = load_training_state(path)
    if value is None:
        del broken[key]
    else:
        broken[key] = value
    torch.save(broken, path)
    with pytest.raises(UnloadableStateError, match=f"{STATE_FILE}: {message}"):
        TrainingCheckpoint.read(tmp_path)
    with pytest.raises(UnloadableStateError, match=message):  # what a resume skips
        load_checkpoint(tmp_path, state, rank=0)
