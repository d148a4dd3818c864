"""Random streams of the project: one seed mixer and counter-based per-image noise.

`mix_seed` turns a tuple of ints (seed, rank, purpose, ...) into one 63-bit generator seed;
`SeedPurpose` is the one table of the purposes mixed in, so two streams never share a seed.
`CounterNoise` draws the Gaussian noise of image `i` from a counter-based generator keyed by
(seed, i) and counted by the draw number, so image i depends only on (seed, i) whatever the
batch it is in, the number of workers or the device, and a whole batch is drawn by a few
elementwise kernels on the device (no per-image CPU generators; Salmon et al. 2011, the
Threefry-2x32 block cipher also used by JAX).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
# Threefry-2x32 rotation constants and key-schedule parity (Salmon et al. 2011, Table 4).
_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_PARITY = 0x1BD11BDA
_ROUNDS = 20


class SeedPurpose:
    """Every random stream of the project and the purpose number in its key (the run's `seed`
    first). The numbers are those the streams always had, so every stream stays the same.

    The rule: two streams that feed the same kind of generator never share a key. A key is its
    layout (how many ints), where the purpose sits in it and the purpose number, so within one
    generator kind and one layout the purpose numbers (at the same place) differ. Streams of
    different generator kinds may share a seed number: FLIPS at step 7 and INTERPOLATION's pair
    7 are both mix_seed(seed, 7, 7), EPOCH_ORDER at epoch 7 and INTERPOLATION's pair 8 both
    mix_seed(seed, 7, 8), but one seeds torch's generator, one Threefry keys and one numpy's
    PCG64, whose streams from one number are unrelated. `STREAMS` is this table, checked by
    tests/ddpm_core/test_rng.py.

    | purpose         | key                                         | generator | draws            |
    |-----------------|---------------------------------------------|-----------|------------------|
    | DATA_SPLIT  = 1 | numpy default_rng([seed, 1])                | pcg64     | train/test split |
    | DATA_CAP    = 2 | numpy default_rng([seed, 2])                | pcg64     | max_images subset|
    | NLL         = 3 | mix_seed(seed, 3), then (., i)              | threefry  | NLL noise        |
    | INTERPOLATION=7 | mix_seed(seed, 7, pair), then (., 0..2)     | threefry  | Fig. 8's noise   |
    | SHARED_LATENT=8 | mix_seed(seed, 8) = k, then                 | threefry  | Fig. 7: to x_t,  |
    |                 | (mix_seed(k, 0), n), (mix_seed(k, t, n), j) |           | draws from x_t   |
    | KID         = 9 | RandomState(mix_seed(seed, 9) % 2^32)       | mt19937   | KID's subsets    |
    | T_NOISE     = 1 | mix_seed(seed, world, rank, 1)              | torch     | training t, eps  |
    | DROPOUT     = 2 | mix_seed(seed, world, rank, 2)              | torch     | dropout          |
    | FLIPS       = 7 | mix_seed(seed, step, 7)                     | torch     | flips per step   |
    | EPOCH_ORDER = 8 | default_rng(mix_seed(seed, epoch, 8))       | pcg64     | shard order      |
    | MODEL_INIT      | torch.manual_seed(seed)                     | torch     | the U-Net's init |

    No purpose number: the sample stage's per-image noise, Threefry keys (seed, i), and the
    model initialisation, torch's global generator seeded with `seed` itself (`model_init`:
    the weights every run always started from).
    """

    DATA_SPLIT: Final = 1
    DATA_CAP: Final = 2
    NLL: Final = 3
    INTERPOLATION: Final = 7
    SHARED_LATENT: Final = 8
    KID: Final = 9
    T_NOISE: Final = 1
    DROPOUT: Final = 2
    FLIPS: Final = 7
    EPOCH_ORDER: Final = 8

    # (name, key with the purpose number and "*" for the other ints after seed, generator)
    STREAMS: Final = (
        ("DATA_SPLIT", (DATA_SPLIT,), "pcg64"),
        ("DATA_CAP", (DATA_CAP,), "pcg64"),
        ("NLL", (NLL,), "threefry"),
        ("INTERPOLATION", (INTERPOLATION, "*"), "threefry"),
        ("SHARED_LATENT", (SHARED_LATENT,), "threefry"),
        ("KID", (KID,), "mt19937"),
        ("T_NOISE", ("*", "*", T_NOISE), "torch"),
        ("DROPOUT", ("*", "*", DROPOUT), "torch"),
        ("FLIPS", ("*", FLIPS), "torch"),
        ("EPOCH_ORDER", ("*", EPOCH_ORDER), "pcg64"),
        ("MODEL_INIT", (), "torch"),
    )

    @staticmethod
    def model_init(seed: int) -> int:
        """The seed of torch's global generator while the U-Net is built: `seed` itself."""
        return seed


def mix_seed(*ints: int) -> int:
    """A well-mixed 63-bit seed from ints >= 0, e.g. (seed, world_size, rank, purpose)."""
    for v in ints:
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
            raise ValueError(f"seed parts: got {ints!r}, expected ints >= 0")
    state = np.random.SeedSequence([int(i) for i in ints]).generate_state(1, dtype=np.uint64)
    return int(state[0]) % 2**63


def seeded_generator(*ints: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with mix_seed(*ints)."""
    return torch.Generator(device=device).manual_seed(mix_seed(*ints))


# ----------------------------------------------------------------------------------------------
# Threefry-2x32 on int64 tensors holding uint32 values (every result masked to 32 bits)


def _rotl32(x: Tensor, r: int) -> Tensor:
    return ((x << r) | (x >> (32 - r))) & MASK32


def threefry2x32(key: tuple[Tensor, Tensor], ctr: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20: two uint32 words (as int64) per (key, counter) pair, elementwise.

    key, ctr: pairs of broadcastable int64 tensors with values in [0, 2^32).
    """
    k0, k1 = key
    ks = (k0, k1, (k0 ^ k1 ^ _PARITY) & MASK32)
    x0, x1 = (ctr[0] + ks[0]) & MASK32, (ctr[1] + ks[1]) & MASK32
    for r in range(_ROUNDS):
        x0 = (x0 + x1) & MASK32
        x1 = _rotl32(x1, _ROTATIONS[r % 8]) ^ x0
        if r % 4 == 3:  # key injection every 4 rounds
            s = r // 4 + 1
            x0 = (x0 + ks[s % 3]) & MASK32
            x1 = (x1 + ks[(s + 1) % 3] + s) & MASK32
    return x0, x1


def _split64(v: Tensor) -> tuple[Tensor, Tensor]:
    return v & MASK32, (v >> 32) & MASK32


def image_keys(seed: int, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image Threefry keys (N,), (N,) derived from (seed, index): indices (N,) int64 >= 0."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed: got {seed!r}, expected an int in [0, 2^63)")
    s = torch.tensor(int(seed), dtype=torch.int64, device=indices.device)
    return threefry2x32(_split64(s), _split64(indices.to(torch.int64)))


def counter_normal(
    keys: tuple[Tensor, Tensor], draw: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normals (N, *shape) for draw number `draw` of each of N keyed streams.

    Element j of row n is a Box-Muller normal from Threefry(key_n, (draw, j // 2)); the same
    on every device up to float rounding.
    """
    k0, k1 = keys  # (N,)
    n, numel = k0.shape[0], math.prod(shape)
    pairs = torch.arange((numel + 1) // 2, dtype=torch.int64, device=k0.device)  # (P,)
    draws = torch.full_like(pairs, int(draw))
    b0, b1 = threefry2x32((k0[:, None], k1[:, None]), (draws[None, :], pairs[None, :]))  # (N, P)
    # u1 in (0, 1], u2 in [0, 1): 24-bit uniforms, exact in float32.
    u1 = ((b0 >> 8) + 1).to(torch.float32) * 2.0**-24
    u2 = (b1 >> 8).to(torch.float32) * 2.0**-24
    radius = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    z = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=-1)  # (N, P, 2)
    return z.reshape(n, -1)[:, :numel].reshape(n, *shape).to(dtype)  # (N, *shape)


class CounterNoise:
    """noise_fn for `GaussianDiffusion`: call k draws row n from stream (seed, indices[n], k).

    The k-th call (x_T first, then one z per reverse step) of image i is a function of
    (seed, i, k) alone, so results do not depend on batch composition, worker count or device.
    """

    def __init__(self, seed: int, indices: Sequence[int] | Tensor, device: torch.device) -> None:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.ndim != 1 or idx.numel() == 0 or bool((idx < 0).any()):
            raise ValueError(f"indices: expected a non-empty 1-D list of ints >= 0, got {indices}")
        self.keys = image_keys(seed, idx.to(device))
        self.draws = 0

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        if shape[0] != self.keys[0].shape[0]:
            raise ValueError(f"shape: batch {shape[0]} != {self.keys[0].shape[0]} image indices")
        z = counter_normal(self.keys, self.draws, shape[1:])
        self.draws += 1
        return z
