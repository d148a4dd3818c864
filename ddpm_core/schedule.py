"""Variance schedules beta_t of the forward process q(x_t | x_{t-1}) (Ho et al. 2020, Sec. 2)."""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("linear", "quad", "cosine", "const")
COSINE_S = 0.008  # Nichol & Dhariwal (2021), eq. 17 offset
COSINE_MAX_BETA = 0.999  # clip "to prevent singularities at the end of the diffusion process"


def _cosine_alpha_bar(u: np.ndarray) -> np.ndarray:
    """f(t)/f(0)-free alpha_bar(u) = cos^2(((u + s)/(1 + s)) pi/2) for u = t/T in [0, 1]."""
    return np.cos((u + COSINE_S) / (1.0 + COSINE_S) * math.pi / 2.0) ** 2


def make_betas(kind: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """beta_t for t = 0..T-1 (code index; the paper's t+1) as float64, shape (T,).

    `linear` is the paper's schedule (1e-4 -> 0.02, T = 1000); `quad` and `const` follow the
    official `get_beta_schedule`; `cosine` is Nichol & Dhariwal's (ignores beta_start/end).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind: unknown beta schedule {kind!r}, expected one of {SCHEDULES}")
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T: got {T!r}, expected an int >= 1")
    if not (0.0 < beta_start <= beta_end < 1.0):
        raise ValueError(
            f"beta_start/beta_end: got ({beta_start!r}, {beta_end!r}), "
            "expected 0 < beta_start <= beta_end < 1"
        )
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif kind == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif kind == "const":
        betas = np.full(T, beta_end, dtype=np.float64)
    else:
        u = np.arange(T + 1, dtype=np.float64) / T
        ab = _cosine_alpha_bar(u)
        betas = np.minimum(1.0 - ab[1:] / ab[:-1], COSINE_MAX_BETA)
    assert betas.shape == (T,)
    return betas.astype(np.float64)
