"""One step of Algorithm 1 without Ray: warm-up, seeded state, deterministic updates, EMA."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pipelines.config import Params
from pipelines.train.step import draw_t_noise, make_state, train_step, warmup_lr

CPU = torch.device("cpu")


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
    ta, na = draw_t_noise(a.generator, (4, 1, 8, 8), params.diffusion.T, CPU)
    tb, nb = draw_t_noise(b.generator, (4, 1, 8, 8), params.diffusion.T, CPU)
    assert ta.shape == (4,) and na.shape == (4, 1, 8, 8) and not torch.equal(na, nb)
    assert int(ta.min()) >= 0 and int(ta.max()) < params.diffusion.T


def test_steps_follow_the_recipe_and_repeat_exactly(make_params: Callable[..., Params]) -> None:
    params = make_params({"train.warmup_steps": 2, "train.lr": 1e-3})

    def two_steps() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
        state = make_state(params, CPU, 0, 1)
        gen = torch.Generator().manual_seed(0)
        lrs = []
        for _ in range(2):
            x0 = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1
            t, noise = draw_t_noise(state.generator, tuple(x0.shape), params.diffusion.T, CPU)
            train_step(state, x0, t, noise, params.train)
            lrs.append(state.optimizer.param_groups[0]["lr"])
        assert state.step == 2 and state.ema.num_updates == 2
        return state.raw.state_dict(), state.ema.state_dict()["shadow"], lrs

    weights, ema, lrs = two_steps()
    assert lrs == pytest.approx([5e-4, 1e-3])  # warm-up over 2 steps
    init = make_state(params, CPU, 0, 1).raw.state_dict()
    assert any(not torch.equal(weights[k], init[k]) for k in init)  # the weights moved
    again, ema_again, _ = two_steps()
    for k in weights:  # same seed, same data: the same update to the bit
        assert torch.equal(weights[k], again[k]) and torch.equal(ema[k], ema_again[k])
