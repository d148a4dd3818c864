"""Exponential moving average of the weights (official `tpu_utils.py` L89-92, decay 0.9999)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a DDP / DataParallel (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@dataclass(frozen=True)
class _Targets:
    """The (shadow, source) tensor lists of one source module, built and checked once."""

    src: nn.Module
    ema_params: list[torch.Tensor]
    params: list[torch.Tensor]
    ema_floats: list[torch.Tensor]  # floating-point buffers: averaged like parameters
    floats: list[torch.Tensor]
    ema_others: list[torch.Tensor]  # other buffers (counters, masks): copied
    others: list[torch.Tensor]

    @classmethod
    def of(cls, shadow: nn.Module, src: nn.Module) -> _Targets:
        ema_p, p = _pairs(list(shadow.parameters()), list(src.parameters()), "parameters")
        ema_b, b = _pairs(list(shadow.buffers()), list(src.buffers()), "buffers")
        fl = [e.is_floating_point() for e in ema_b]
        return cls(
            src,
            ema_p,
            p,
            [e for e, f in zip(ema_b, fl, strict=True) if f],
            [x for x, f in zip(b, fl, strict=True) if f],
            [e for e, f in zip(ema_b, fl, strict=True) if not f],
            [x for x, f in zip(b, fl, strict=True) if not f],
        )


class EMA:
    """theta_ema <- d * theta_ema + (1 - d) * theta after every optimiser step; no warm-up.

    The shadow starts as a copy of `model` (params and buffers), in eval mode without gradients.
    The paper reports samples, FID and NLL of the EMA weights (d = 0.9999); `.model` is the EMA
    network for sampling. Floating-point buffers are averaged like parameters, others copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        _check_decay(decay)
        self.decay = decay
        self.num_updates = 0
        self._shadow = copy.deepcopy(unwrap(model)).eval()
        self._shadow.requires_grad_(False)
        self._targets: _Targets | None = None

    @property
    def model(self) -> nn.Module:
        """The EMA network (eval mode, no gradients)."""
        return self._shadow

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One EMA step towards `model`; `decay` overrides self.decay for this step only.

        (The official code uses decay 1e-10 at step 0, i.e. a copy; pass decay=0.0 to mimic it.)
        The (shadow, source) tensor lists are built and checked once per source module, so a
        step costs two for-each kernels, not a walk over the module tree.
        """
        d = self.decay if decay is None else decay
        _check_decay(d)
        src = unwrap(model)
        if self._targets is None or self._targets.src is not src:
            self._targets = _Targets.of(self._shadow, src)
        tg = self._targets
        if tg.params:
            torch._foreach_lerp_(tg.ema_params, tg.params, 1.0 - d)  # d ema + (1-d) p
        if tg.floats:
            torch._foreach_lerp_(tg.ema_floats, tg.floats, 1.0 - d)
        for e, b in zip(tg.ema_others, tg.others, strict=True):
            e.copy_(b)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Load the EMA weights (params and buffers) into `model` (e.g. for evaluation)."""
        unwrap(model).load_state_dict(self._shadow.state_dict(), strict=True)

    def state_dict(self) -> dict[str, Any]:
        """{"decay", "num_updates", "shadow": the EMA network's state dict} (torch.save-able)."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": self._shadow.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output; raises ValueError naming a missing key."""
        for key in ("decay", "num_updates", "shadow"):
            if key not in state:
                raise ValueError(f"EMA state: missing key {key!r}")
        _check_decay(float(state["decay"]))
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self._shadow.load_state_dict(state["shadow"], strict=True)


def _pairs(
    ema: list[torch.Tensor], src: list[torch.Tensor], what: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if len(ema) != len(src) or any(a.shape != b.shape for a, b in zip(ema, src, strict=True)):
        raise ValueError(
            f"model: its {what} do not match the EMA shadow's (different architecture?)"
        )
    return ema, [b.detach() for b in src]


def _check_decay(decay: float) -> None:
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: got {decay}, expected 0 <= decay <= 1")
