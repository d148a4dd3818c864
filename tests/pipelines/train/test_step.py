"""The training step without Ray: warm-up, seeded per-rank state, device-side step statistics,
NaN detection, RNG resume, and the GPU execution options (bf16 autocast, channels_last,
torch.compile) on CPU."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipelines.config import Params
from pipelines.infra.accel import autocast
from pipelines.train.step import (
    TrainState,
    build_model,
    draw_t_noise,
    load_checkpoint,
    make_state,
    prepare_model,
    save_checkpoint,
    train_step,
    warmup_lr,
)
from tests.helpers import build_params

CPU = torch.device("cpu")


def _params(tmp_path: Path) -> Params:
    return build_params(tmp_path, {"train.log_every": 3, "train.warmup_steps": 0})


def _batch(params: Params, seed: int = 0) -> torch.Tensor:
    r, c = params.data.resolution, params.data.channels
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, c, r, r, generator=g) * 2 - 1  # (B, C, H, W)


def _steps(state: TrainState, params: Params, n: int, **kw: object) -> list[float]:
    """n steps on fixed data; each step's loss recomputed first with the same draws."""
    x0, losses = _batch(params), []
    for _ in range(n):
        t, noise = draw_t_noise(state.generator, tuple(x0.shape), state.diffusion.num_timesteps)
        with torch.no_grad():
            losses.append(float(state.diffusion.training_losses(state.raw, x0, t, noise).mean()))
        train_step(state, x0, t, noise, params.train, **kw)  # type: ignore[arg-type]
    return losses


def test_warmup_lr_is_linear_then_flat() -> None:
    assert [warmup_lr(s, 1e-3, 4) for s in (1, 2, 4, 5, 100)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3]
    )
    assert warmup_lr(1, 1e-3, 0) == 1e-3  # no warm-up


def test_state_is_seeded_alike_on_every_rank_with_per_rank_draws(
    make_params: Callable[..., Params],
) -> None:
    params = make_params()
    a, b = make_state(params, CPU, 0, 2), make_state(params, CPU, 1, 2)
    for p, q in zip(a.raw.parameters(), b.raw.parameters(), strict=True):
        assert torch.equal(p, q)  # the same initial weights on every rank
    ta, na = draw_t_noise(a.generator, (4, 1, 8, 8), params.diffusion.T)
    tb, nb = draw_t_noise(b.generator, (4, 1, 8, 8), params.diffusion.T)
    assert ta.shape == (4,) and na.shape == (4, 1, 8, 8) and not torch.equal(na, nb)
    assert int(ta.min()) >= 0 and int(ta.max()) < params.diffusion.T


def test_window_statistics_are_the_mean_of_the_step_losses(tmp_path: Path) -> None:
    params = _params(tmp_path)
    state = make_state(params, CPU, 0, 1)
    losses = _steps(state, params, 3)
    assert state.stats.steps == 3 and state.stats.loss_sum.device == CPU
    window = state.read_stats(1)
    assert (window.first_step, window.last_step, window.steps) == (1, 3, 3)
    assert window.loss == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert window.grad_norm > 0 and not window.nonfinite
    _steps(state, params, 1)
    assert state.read_stats(1).first_step == 4  # the next window starts after the read


def test_a_nonfinite_step_sets_the_flag_without_a_host_sync(tmp_path: Path) -> None:
    """lr 1e36: the first update blows the weights up, the second loss is not finite."""
    params = build_params(tmp_path, {"train.lr": 1e36, "train.warmup_steps": 0})
    state = make_state(params, CPU, 0, 1)
    _steps(state, params, 1)
    assert not state.any_nonfinite(1)
    _steps(state, params, 1)
    assert state.any_nonfinite(1)
    window = state.read_stats(1)
    assert window.nonfinite and (window.first_step, window.last_step) == (1, 2)
    assert not state.any_nonfinite(1)  # reset with the window


def test_resume_restores_the_t_noise_stream_and_the_window_start(tmp_path: Path) -> None:
    params = _params(tmp_path)
    state = make_state(params, CPU, 0, 1)
    _steps(state, params, 2)
    save_checkpoint(tmp_path, state, [{"t_noise": state.generator.get_state(),
                                       "torch": torch.get_rng_state()}])  # fmt: skip
    ref = _steps(state, params, 2)
    resumed = make_state(params, CPU, 0, 1)
    load_checkpoint(tmp_path, resumed, 0)
    assert resumed.step == 2 and resumed.stats.first_step == 3
    assert _steps(resumed, params, 2) == pytest.approx(ref, rel=1e-6)


def test_bf16_autocast_takes_effect_in_the_step_within_two_percent(tmp_path: Path) -> None:
    """The loss one step computes (a network whose zero-initialised output layer is made live,
    so eps_theta is not 0 whatever the precision): channels_last alone moves it by float noise
    only, bf16 autocast by more than that and by under 2%."""
    params = _params(tmp_path)
    torch.manual_seed(0)
    raw = build_model(params)
    with torch.no_grad():
        for p in raw.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def step_loss(precision: str, channels_last: bool) -> float:
        state = make_state(params, CPU, 0, 1, raw=copy.deepcopy(raw))
        prepare_model(state, channels_last=channels_last)
        if channels_last:
            assert state.raw.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        _steps(state, params, 1, autocast=autocast(precision, CPU))  # type: ignore[arg-type]
        window = state.read_stats(1)  # the loss as the step computed it (under autocast)
        assert not window.nonfinite
        return float(window.loss)

    ref = step_loss("fp32", channels_last=False)
    assert abs(step_loss("fp32", channels_last=True) - ref) / ref < 1e-6  # float noise
    rel = abs(step_loss("bf16", channels_last=True) - ref) / ref
    assert 1e-5 < rel < 0.02, rel


@pytest.mark.usefixtures("scalar_inductor")
def test_compiled_step_matches_the_eager_step_on_cpu(tmp_path: Path) -> None:
    """One U-Net level with attention (ResBlock, attention, the time embedding, the loss): a
    cold Inductor compile of forward and backward of the two-level TINY net costs 45 s here."""
    one_level = {"unet.ch_mult": [1], "unet.attn_resolutions": [8]}
    params = build_params(tmp_path, {"train.log_every": 3, "train.warmup_steps": 0} | one_level)
    eager = make_state(params, CPU, 0, 1)
    compiled = make_state(params, CPU, 0, 1, raw=copy.deepcopy(eager.raw), compile_mode="default")
    prepare_model(compiled, channels_last=False)
    assert hasattr(compiled.loss_fn, "_torchdynamo_orig_callable")  # a compiled loss
    assert _steps(compiled, params, 2) == pytest.approx(_steps(eager, params, 2), rel=1e-4)
    # Adam moves each weight by about lr per step: agree to 10% of one step
    atol = 0.1 * params.train.lr
    for a, b in zip(eager.raw.parameters(), compiled.raw.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    for a, b in zip(eager.ema.model.parameters(), compiled.ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _checkpointing_params(tmp_path: Path, dropout: float, checkpointing: bool) -> Params:
    changes = {"train.warmup_steps": 0, "unet.dropout": dropout}
    return build_params(tmp_path, changes | {"train.activation_checkpointing": checkpointing})


def _checkpointing_run(
    p: Params, compile_mode: str | bool = False, bf16: bool = True
) -> tuple[TrainState, float]:
    state = make_state(p, CPU, 0, 1, compile_mode=compile_mode)  # type: ignore[arg-type]
    assert state.raw.activation_checkpointing == p.train.activation_checkpointing  # type: ignore[union-attr]
    prepare_model(state, channels_last=True)
    torch.manual_seed(5)  # dropout
    _steps(state, p, 2, autocast=autocast("bf16" if bf16 else "fp32", CPU))
    return state, state.read_stats(1).loss  # the mean loss of the steps, under autocast


def _close(a: TrainState, b: TrainState, atol: float) -> None:
    for x, y in zip(a.raw.parameters(), b.raw.parameters(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=atol)


def test_activation_checkpointing_is_wired_and_composes_with_bf16_and_channels_last(
    tmp_path: Path,
) -> None:
    """train.activation_checkpointing reaches the U-Net through make_state; a checkpointed step
    under bf16 autocast + channels_last gives the plain step's loss and weights (with dropout:
    the recomputation redraws the same masks)."""
    plain, loss = _checkpointing_run(_checkpointing_params(tmp_path, 0.1, False))
    ckpt, ckpt_loss = _checkpointing_run(_checkpointing_params(tmp_path, 0.1, True))
    assert ckpt_loss == loss
    _close(plain, ckpt, 1e-6)


@pytest.mark.slow  # minutes of Inductor compile on 2 cores; checkpointing is covered above and
# the compiled step by test_compiled_step_matches_the_eager_step_on_cpu
def test_compiled_checkpointed_step_matches_the_eager_plain_step(tmp_path: Path) -> None:
    """fp32 + channels_last, without dropout (Inductor draws its own masks, and its bf16 kernels
    round otherwise than eager's); the compiled-vs-eager tolerance above."""
    plain, loss = _checkpointing_run(_checkpointing_params(tmp_path, 0.0, False), bf16=False)
    compiled, compiled_loss = _checkpointing_run(
        _checkpointing_params(tmp_path, 0.0, True), "default", bf16=False
    )
    assert hasattr(compiled.loss_fn, "_torchdynamo_orig_callable")
    assert compiled_loss == pytest.approx(loss, rel=1e-3)
    _close(plain, compiled, 0.1 * plain.optimizer.param_groups[0]["lr"])


def test_learned_variance_trains_on_the_bound_and_its_loss_falls(
    tmp_path: Path, shards_dir: Path
) -> None:
    """Table 2's learned diagonal Sigma on the digits shards: 2C outputs, loss L falls."""
    from pipelines.artifacts.shard_stream import train_batches
    from pipelines.config import replace_path

    overrides = {"diffusion.var_type": "learned", "diffusion.loss_type": "kl",
                 "train.warmup_steps": 0, "train.lr": 2e-3}  # fmt: skip
    params = replace_path(build_params(tmp_path, overrides), shards=str(shards_dir))
    state = make_state(params, CPU, 0, 1)
    assert state.raw.out_channels == 2 * params.data.channels  # mean part + log sigma^2
    batches = train_batches(shards_dir, "train", 16, 0, 1, params.seed, False)
    x0 = next(batches)
    g = torch.Generator().manual_seed(1)  # one fixed evaluation draw of (t, noise)
    t_eval, noise_eval = draw_t_noise(g, tuple(x0.shape), params.diffusion.T)

    def bound() -> float:
        with torch.no_grad():
            return float(state.diffusion.training_losses(state.raw, x0, t_eval, noise_eval).mean())

    before = bound()
    for _ in range(40):
        x = next(batches)
        t, noise = draw_t_noise(state.generator, tuple(x.shape), params.diffusion.T)
        train_step(state, x, t, noise, params.train)
    after = bound()
    assert math.isfinite(after) and after < 0.7 * before, (before, after)


def test_model_init_through_the_seed_table_keeps_the_weights_runs_always_had(
    make_params: Callable[..., Params],
) -> None:
    """`SeedPurpose.model_init` is the seed itself: the initial weights of every earlier run."""
    from pipelines.artifacts.model_dir import build_unet

    params = make_params({"seed": 3})
    torch.manual_seed(3)  # as build_model seeded before the table held its stream
    before = build_unet(params)
    for (name, a), b in zip(
        before.state_dict().items(), build_model(params).state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_cpu_adam_is_for_each_and_updates_bit_identically_to_the_per_parameter_loop(
    tmp_path: Path,
) -> None:
    """The for-each Adam (fewer, larger calls: faster on CPU) changes no bit of the weights,
    the EMA or the moments against torch's CPU default, the per-parameter loop."""
    params = _params(tmp_path)
    ours, loop = make_state(params, CPU, 0, 1), make_state(params, CPU, 0, 1)
    assert ours.optimizer.defaults["foreach"] is True
    for group in loop.optimizer.param_groups:
        group["foreach"] = False
    assert _steps(ours, params, 3) == _steps(loop, params, 3)
    for a, b in zip(ours.raw.parameters(), loop.raw.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ours.ema.model.parameters(), loop.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)
    sa, sb = ours.optimizer.state_dict()["state"], loop.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k][m], sb[k][m]) for k in sa for m in ("exp_avg", "exp_avg_sq"))
