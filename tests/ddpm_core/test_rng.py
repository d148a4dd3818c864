"""ddpm_core.rng: the seed mixer and counter-based per-image noise."""

from __future__ import annotations

import pytest
import torch

from ddpm_core.rng import CounterNoise, SeedPurpose, image_keys, mix_seed, threefry2x32

CPU = torch.device("cpu")


def _t(v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int64)


@pytest.mark.parametrize(
    ("key", "ctr", "expected"),
    [  # Random123 known-answer vectors for threefry2x32_20
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_threefry_known_answers(
    key: tuple[int, int], ctr: tuple[int, int], expected: tuple[int, int]
) -> None:
    x0, x1 = threefry2x32((_t(key[0]), _t(key[1])), (_t(ctr[0]), _t(ctr[1])))
    assert (int(x0), int(x1)) == expected


def test_mix_seed_is_stable_and_rejects_negatives() -> None:
    # Known answers (NumPy's SeedSequence is stable across versions and processes): a change
    # of the mixer would silently change every seeded stream of the project.
    assert mix_seed(3, 1, 0) == 2202556205912566664
    assert mix_seed(3, 0, 1) == 485160162170122974  # order matters
    assert mix_seed(2**40, 7) == 9186923392040190078  # wide parts, still < 2**63
    with pytest.raises(ValueError, match="expected ints >= 0"):
        mix_seed(-3, 1)


def test_counter_noise_is_standard_normal() -> None:
    z = CounterNoise(0, range(512), CPU)((512, 3, 8, 8))
    assert z.shape == (512, 3, 8, 8) and z.dtype == torch.float32
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1.0) < 0.01
    # odd element counts use half of the last Box-Muller pair
    assert CounterNoise(0, [1], CPU)((1, 1, 3, 3)).shape == (1, 1, 3, 3)


def test_counter_noise_row_depends_only_on_seed_index_and_draw() -> None:
    big = CounterNoise(7, [5, 9, 2, 40], CPU)
    small = CounterNoise(7, [40, 9], CPU)
    for _ in range(3):  # x_T, then two steps' z
        a, b = big((4, 1, 4, 4)), small((2, 1, 4, 4))
        torch.testing.assert_close(a[[3, 1]], b, rtol=0, atol=0)
    draw0 = CounterNoise(7, [5], CPU)((1, 1, 4, 4))
    assert not torch.equal(draw0, CounterNoise(8, [5], CPU)((1, 1, 4, 4)))  # other seed
    assert not torch.equal(draw0[0], CounterNoise(7, [5, 6], CPU)((2, 1, 4, 4))[1])  # other index


def test_counter_noise_checks_inputs() -> None:
    with pytest.raises(ValueError, match="indices"):
        CounterNoise(0, [-1], CPU)
    with pytest.raises(ValueError, match="seed"):
        image_keys(-1, torch.arange(2))
    with pytest.raises(ValueError, match="batch 3 != 2"):
        CounterNoise(0, [0, 1], CPU)((3, 1, 2, 2))


def test_seed_purposes_keep_their_numbers() -> None:
    """The table's numbers are the ones the streams always had (changing one changes a stream:
    the data split, the training noise, the figures); NLL's and KID's streams are new."""
    table = {k: v for k, v in vars(SeedPurpose).items() if k.isupper() and isinstance(v, int)}
    assert table == {
        "DATA_SPLIT": 1,
        "DATA_CAP": 2,
        "NLL": 3,
        "INTERPOLATION": 7,
        "SHARED_LATENT": 8,
        "KID": 9,
        "T_NOISE": 1,
        "DROPOUT": 2,
        "FLIPS": 7,
        "EPOCH_ORDER": 8,
    }
    # within one key layout (seed, purpose) no two purposes share a number
    layout = [
        SeedPurpose.DATA_SPLIT,
        SeedPurpose.DATA_CAP,
        SeedPurpose.NLL,
        SeedPurpose.INTERPOLATION,
        SeedPurpose.SHARED_LATENT,
    ]
    assert len(set(layout)) == len(layout)


# ----------------------------------------------------------------------------------------------
# The seed table (SeedPurpose.STREAMS) against the rule it states and against the code


def _unify(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Two key patterns can name the same key ("*": any int)."""
    return len(a) == len(b) and all(x == y or "*" in (x, y) for x, y in zip(a, b, strict=True))


def test_no_two_streams_of_one_generator_can_share_a_key() -> None:
    from itertools import combinations

    streams = SeedPurpose.STREAMS
    purposes = {k for k, v in vars(SeedPurpose).items() if k.isupper() and isinstance(v, int)}
    assert purposes <= {name for name, _, _ in streams}  # every purpose is in the table
    for (n1, k1, g1), (n2, k2, g2) in combinations(streams, 2):
        assert not (g1 == g2 and _unify(k1, k2)), f"{n1} and {n2} can share a {g1} seed"
    # What the docstring says of different generators is so: the same numbers, other kinds.
    flips, mix = SeedPurpose.FLIPS, SeedPurpose.INTERPOLATION
    assert mix_seed(0, 7, flips) == mix_seed(0, mix, 7)


def _layouts_in_code() -> set[tuple[str, tuple[object, ...]]]:
    """(purpose, key pattern after the seed) of every call that mixes a SeedPurpose number."""
    import ast

    from tests.helpers import REPO

    found = set()
    for path in [*(REPO / "pipelines").rglob("*.py"), *(REPO / "ddpm_core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            args = node.args
            if args and isinstance(args[0], ast.List):  # default_rng([seed, purpose])
                args = list(args[0].elts)
            for i, arg in enumerate(args):
                if (
                    isinstance(arg, ast.Attribute)
                    and isinstance(arg.value, ast.Name)
                    and arg.value.id == "SeedPurpose"
                    and i > 0
                ):
                    value = getattr(SeedPurpose, arg.attr)
                    found.add((arg.attr, tuple(value if a is arg else "*" for a in args[1:])))
    return found


def test_the_table_is_the_code() -> None:
    """Every call keyed by a SeedPurpose number uses the layout the table gives it."""
    table = {name: key for name, key, _ in SeedPurpose.STREAMS}
    found = _layouts_in_code()
    assert {name for name, _ in found} >= {"FLIPS", "INTERPOLATION", "EPOCH_ORDER", "KID"}
    for name, key in found:
        assert table[name] == key, f"{name}: the code keys it {key}, the table {table[name]}"
