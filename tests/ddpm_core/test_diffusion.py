"""GaussianDiffusion vs independent float64 formulas, an oracle bound and a hand-written loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ddpm_core.config import DiffusionConfig
from ddpm_core.diffusion import GaussianDiffusion, NoiseFn, extract
from ddpm_core.samplers.ancestral import Ancestral
from ddpm_core.samplers.base import ReverseSampler
from ddpm_core.samplers.ddim import DDIM
from ddpm_core.samplers.loop import Trajectory, reverse_loop
from ddpm_core.schedule import make_betas
from tests.helpers import TinyEps

T = 20
ANCESTRAL = Ancestral()
LN2 = math.log(2.0)


def _loop(
    d: GaussianDiffusion,
    model: Callable[[Tensor, Tensor], Tensor],
    shape: tuple[int, ...],
    noise_fn: NoiseFn,
    sampler: ReverseSampler = ANCESTRAL,
    x0_every: int | None = None,
) -> Trajectory:
    """x_T = noise_fn(shape), then `reverse_loop` (as `sample_indices` does)."""
    return reverse_loop(model, d, sampler, noise_fn(shape), noise_fn, x0_every=x0_every)


def _gen(seed: int) -> NoiseFn:
    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=g)


def _ab(betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha_bar and alpha_bar_prev by an explicit product (independent of the class)."""
    ab = np.array([math.prod(1.0 - b for b in betas[: i + 1]) for i in range(len(betas))])
    return ab, np.concatenate([[1.0], ab[:-1]])


class OracleEps:
    """The exact eps-predictor for a known x0: eps*(x_t, t) = (x_t - sqrt(ab_t) x0)/sqrt(1-ab_t)."""

    def __init__(self, betas: np.ndarray, x0: Tensor) -> None:
        ab, _ = _ab(betas)
        self.sqrt_ab = torch.tensor(np.sqrt(ab), dtype=x0.dtype)
        self.sqrt_1mab = torch.tensor(np.sqrt(1.0 - ab), dtype=x0.dtype)
        self.x0 = x0

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        a = self.sqrt_ab[t].reshape(-1, 1, 1, 1)
        return (x_t - a * self.x0) / self.sqrt_1mab[t].reshape(-1, 1, 1, 1)


def _x0(dtype: torch.dtype = torch.float64) -> Tensor:
    pixels = torch.tensor([0, 37, 128, 200, 255, 255, 3, 90], dtype=dtype)
    return (pixels / 127.5 - 1.0).reshape(1, 2, 2, 2).repeat(3, 1, 1, 1)


def test_extract_shape_and_cache_per_device() -> None:
    d = GaussianDiffusion(make_betas("linear", T))
    t = torch.tensor([0, 5, T - 1])
    c = extract(torch.arange(T, dtype=torch.float32), t, (3, 2, 4, 4))
    assert c.shape == (3, 1, 1, 1) and c.flatten().tolist() == [0.0, 5.0, T - 1.0]
    x = torch.zeros(3, 2, 4, 4)
    assert d.coefs(x) is d.coefs(x)
    assert d.coefs(x).posterior_mean_coef1.dtype == torch.float32
    assert d.coefs(x.double()).posterior_mean_coef1.dtype == torch.float64
    torch.testing.assert_close(
        d.coefs(x.double()).posterior_mean_coef1, torch.from_numpy(d.posterior_mean_coef1)
    )


def test_q_sample_moments() -> None:
    betas = make_betas("linear", T)
    ab, _ = _ab(betas)
    d = GaussianDiffusion(betas)
    g = torch.Generator().manual_seed(0)
    n, t_val = 200_000, 13
    x0 = torch.full((n, 1, 1, 1), 0.6, dtype=torch.float64)
    t = torch.full((n,), t_val, dtype=torch.long)
    x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    assert float(x_t.mean()) == pytest.approx(math.sqrt(ab[t_val]) * 0.6, abs=4 * 1 / n**0.5)
    assert float(x_t.var()) == pytest.approx(1.0 - ab[t_val], rel=0.01)
    mean, var, log_var = d.q_mean_variance(x0[:2], t[:2])
    assert torch.allclose(mean, torch.full_like(mean, math.sqrt(ab[t_val]) * 0.6))
    assert torch.allclose(var.flatten(), torch.tensor([1 - ab[t_val]] * 2, dtype=torch.float64))
    assert torch.allclose(log_var.exp(), var)


def test_posterior_from_bayes_rule() -> None:
    betas = make_betas("linear", T)
    ab, ab_prev = _ab(betas)
    d = GaussianDiffusion(betas)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(T, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(T, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.arange(T)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
    for i in range(1, T):
        # q(x_{t-1}|x0) = N(sqrt(ab_prev) x0, 1 - ab_prev); q(x_t|x_{t-1}) = N(sqrt(a) x_{t-1}, b)
        prec = 1.0 / (1.0 - ab_prev[i]) + (1.0 - betas[i]) / betas[i]
        m = (
            math.sqrt(ab_prev[i]) * x0[i] / (1.0 - ab_prev[i])
            + math.sqrt(1.0 - betas[i]) * x_t[i] / betas[i]
        ) / prec
        assert torch.allclose(mean[i], m, atol=1e-12, rtol=1e-10)
        assert float(var[i]) == pytest.approx(1.0 / prec, rel=1e-10)
        assert float(log_var[i]) == pytest.approx(math.log(1.0 / prec), rel=1e-10)
    # t = 0: the posterior is a point mass at x0; its log-variance is clipped to beta_tilde_1.
    assert torch.allclose(mean[0], x0[0]) and float(var[0]) == 0.0
    assert float(log_var[0]) == pytest.approx(float(log_var[1]))


def test_fixed_variances_match_official_tables() -> None:
    betas = make_betas("linear", 1000)
    large = GaussianDiffusion(betas, var_type="fixedlarge")
    small = GaussianDiffusion(betas, var_type="fixedsmall")
    bt1 = betas[1] * (1 - (1 - betas[0])) / (1 - (1 - betas[0]) * (1 - betas[1]))
    assert large.model_log_variance[0] == pytest.approx(math.log(bt1), rel=1e-12)
    assert np.array_equal(large.model_log_variance[1:], np.log(betas[1:]))
    assert np.array_equal(small.model_log_variance, small.posterior_log_variance_clipped)
    assert math.exp(small.model_log_variance[0]) == pytest.approx(5.4532e-5, rel=1e-4)


def test_eps_x0_eps_round_trip_and_eq_11() -> None:
    betas = make_betas("linear", T)
    d = GaussianDiffusion(betas)
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(T, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(T, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.arange(T)
    x0 = d.predict_x0_from_eps(x_t, t, eps)
    assert torch.allclose(d.predict_eps_from_x0(x_t, t, x0), eps, atol=1e-10)
    out = d.p_mean_variance(lambda x, s: eps, x_t, t, clip_denoised=False)
    a = torch.tensor(1 - betas).reshape(-1, 1, 1, 1)
    b = torch.tensor(betas).reshape(-1, 1, 1, 1)
    ab = torch.tensor(_ab(betas)[0]).reshape(-1, 1, 1, 1)
    eq11 = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt()
    assert torch.allclose(out["mean"], eq11, atol=1e-10)
    assert out["variance"].shape == x_t.shape


def test_mean_types_agree_under_oracles() -> None:
    betas = make_betas("linear", T)
    x0 = _x0()
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 7, T - 1])
    eps_d = GaussianDiffusion(betas, mean_type="eps")
    want = eps_d.q_posterior_mean_variance(x0, x_t, t)[0]
    models = {
        "eps": OracleEps(betas, x0),
        "x0": lambda x, s: x0,
        "mean": lambda x, s: eps_d.q_posterior_mean_variance(x0, x, s)[0],
    }
    for mean_type, model in models.items():
        out = GaussianDiffusion(betas, mean_type=mean_type).p_mean_variance(model, x_t, t)
        assert torch.allclose(out["mean"], want, atol=1e-9), mean_type
        assert torch.allclose(out["pred_x0"], x0, atol=1e-9), mean_type


def _analytic_bpd(betas: np.ndarray, x0: Tensor, var_type: str) -> tuple[float, list[float]]:
    """prior KL + sum_t KL(beta_tilde_t || sigma_t^2) + decoder NLL, bits/dim, float64."""
    ab, ab_prev = _ab(betas)
    bt = betas * (1 - ab_prev) / (1 - ab)
    xs = x0[0].flatten().tolist()
    prior = np.mean([0.5 * (-1 - math.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * x**2) for x in xs])
    terms = [0.0] * len(betas)
    for t in range(1, len(betas)):
        s2 = betas[t] if var_type == "fixedlarge" else bt[t]
        terms[t] = 0.5 * (-1 + math.log(s2) - math.log(bt[t]) + bt[t] / s2) / LN2

    def cdf(z: float) -> float:
        return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    sigma0, h = math.sqrt(bt[1]), 1 / 255

    def nll(x: float) -> float:
        if x < -0.999:
            return -math.log(cdf(h / sigma0))
        if x > 0.999:
            return -math.log(1 - cdf(-h / sigma0))
        return -math.log(cdf(h / sigma0) - cdf(-h / sigma0))

    terms[0] = float(np.mean([nll(x) for x in xs])) / LN2
    return prior / LN2, terms


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_oracle_bound_equals_analytic_value(var_type: str, dtype: torch.dtype) -> None:
    betas = make_betas("linear", T, 1e-4, 0.1)
    x0 = _x0(dtype)
    d = GaussianDiffusion(betas, var_type=var_type)
    out = d.calc_bpd_loop(OracleEps(betas, x0), x0, generator=torch.Generator().manual_seed(0))
    prior, terms = _analytic_bpd(betas, x0.double(), var_type)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert out["terms_bpd"].shape == (3, T) and out["mse"].shape == (3, T)
    assert torch.allclose(out["prior_bpd"].double(), torch.tensor(prior).double(), atol=tol)
    for i in range(3):
        assert np.allclose(out["terms_bpd"][i].double().numpy(), terms, atol=tol, rtol=0)
        assert float(out["total_bpd"][i]) == pytest.approx(prior + sum(terms), abs=tol)
    assert float(out["mse"].max()) < 1e-9
    if var_type == "fixedsmall":
        assert float(out["terms_bpd"][:, 1:].abs().max()) < 1e-6


def test_prior_is_about_1e_5_bits_at_paper_schedule() -> None:
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0 = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float64)
    assert 5e-6 < float(d.prior_bpd(x0)[0]) < 1e-5


def _hand_loop(betas: np.ndarray, model: nn.Module, x: Tensor, zs: list[Tensor]) -> Tensor:
    """Algorithm 2 written from the paper's formulas (eq. 15 clip, eq. 7 mean, fixedlarge)."""
    ab, ab_prev = _ab(betas)
    bt1 = betas[1] * (1 - ab_prev[1]) / (1 - ab[1])
    for i in reversed(range(len(betas))):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        eps = model(x, t)
        x0 = ((x - math.sqrt(1 - ab[i]) * eps) / math.sqrt(ab[i])).clamp(-1, 1)
        c1 = betas[i] * math.sqrt(ab_prev[i]) / (1 - ab[i])
        c2 = (1 - ab_prev[i]) * math.sqrt(1 - betas[i]) / (1 - ab[i])
        sigma = math.sqrt(betas[i] if i > 0 else bt1)
        x = c1 * x0 + c2 * x + (sigma * zs[T - i] if i > 0 else 0.0)
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_p_sample_loop_matches_hand_written_loop(dtype: torch.dtype) -> None:
    betas = make_betas("linear", T, 1e-4, 0.1)
    model = TinyEps(dtype=dtype)
    g = torch.Generator().manual_seed(5)
    shape = (2, 2, 4, 4)
    zs = [torch.randn(shape, generator=g, dtype=dtype) for _ in range(T + 1)]
    it = iter(zs)
    d = GaussianDiffusion(betas)
    run = _loop(d, model, shape, lambda s: next(it), x0_every=5)
    x, snaps = run.sample, run.pred_x0
    want = _hand_loop(betas, model, zs[0], zs)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(x, want, atol=tol)
    assert len(snaps) == T // 5 and snaps[-1].shape == shape
    assert [int(c[0]) for c in model.calls[:T]] == list(reversed(range(T)))


def test_p_sample_loop_generator_is_seeded_and_deterministic() -> None:
    d = GaussianDiffusion(make_betas("linear", T))
    model = TinyEps()
    a = _loop(d, model, (2, 2, 4, 4), _gen(7)).sample
    b = _loop(d, model, (2, 2, 4, 4), _gen(7)).sample
    c = _loop(d, model, (2, 2, 4, 4), _gen(8)).sample
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()


def test_p_sample_loop_golden_numbers() -> None:
    """A regression pin of Algorithm 2 (schedule, clipping, noise order): recorded values."""
    d = GaussianDiffusion(make_betas("linear", T))
    x = _loop(d, TinyEps(), (1, 2, 2, 2), _gen(7)).sample
    golden = [0.068644, 0.279795, 0.967219, -1.0, 1.0, -0.679824, -1.0, 0.926101]
    torch.testing.assert_close(x.flatten(), torch.tensor(golden), rtol=0, atol=2e-5)


def test_training_losses_mse_and_kl() -> None:
    betas = make_betas("linear", T)
    x0 = _x0(torch.float32)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 4, T - 1])
    model = TinyEps()
    d = GaussianDiffusion(betas)
    x_t = d.q_sample(x0, t, noise)
    want = ((noise - model(x_t, t)) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(d.training_losses(model, x0, t, noise), want)
    x0_d = GaussianDiffusion(betas, mean_type="x0")
    assert torch.allclose(
        x0_d.training_losses(model, x0, t, noise), ((x0 - model(x_t, t)) ** 2).mean((1, 2, 3))
    )
    kl_d = GaussianDiffusion(betas, var_type="fixedsmall", loss_type="kl")
    kl = kl_d.training_losses(OracleEps(betas, x0), x0, t, noise)
    _, terms = _analytic_bpd(betas, x0.double(), "fixedsmall")
    assert kl.shape == (3,) and float(kl[0]) == pytest.approx(terms[0], abs=1e-5)
    assert float(kl[1:].abs().max()) < 1e-6


def test_respaced_stride_one_is_original_and_stride_k_uses_original_timesteps() -> None:
    d = GaussianDiffusion(make_betas("linear", T))
    assert d.respaced(1) is d
    r = d.respaced(4)
    assert r.num_timesteps == 5 and r.timesteps.tolist() == [0, 4, 8, 12, 16]
    assert np.allclose(r.alphas_cumprod, d.alphas_cumprod[::4], rtol=1e-12)
    model = TinyEps()
    _loop(r, model, (1, 2, 4, 4), _gen(0))
    assert [int(c[0]) for c in model.calls] == [16, 12, 8, 4, 0]
    with pytest.raises(ValueError, match="stride"):
        d.respaced(0)


def test_from_config() -> None:
    cfg = DiffusionConfig(
        T=T,
        beta_schedule="quad",
        beta_start=1e-4,
        beta_end=0.02,
        mean_type="x0",
        var_type="fixedsmall",
        loss_type="kl",
    )
    d = GaussianDiffusion.from_config(cfg)
    assert d.num_timesteps == T and np.array_equal(d.betas, make_betas("quad", T))
    assert (d.mean_type, d.var_type, d.loss_type) == ("x0", "fixedsmall", "kl")


def test_bad_input_names_argument() -> None:
    betas = make_betas("linear", T)
    for kw, name in [({"mean_type": "v"}, "mean_type"), ({"var_type": "learned"}, "var_type")]:
        with pytest.raises(ValueError, match=name):
            GaussianDiffusion(betas, **kw)
    with pytest.raises(ValueError, match="loss_type"):
        GaussianDiffusion(betas, loss_type="hybrid")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1, float("nan")]))
    d = GaussianDiffusion(betas)
    x = torch.zeros(2, 2, 4, 4)
    with pytest.raises(ValueError, match="t: values"):
        d.check_batch(x, torch.tensor([0, T]), x)
    with pytest.raises(ValueError, match="t: expected"):
        d.check_batch(x, torch.tensor([0]), x)
    with pytest.raises(ValueError, match="noise"):
        d.check_batch(x, torch.tensor([0, 1]), x[:1])
    with pytest.raises(ValueError, match="x0"):
        d.check_batch(x.clone().fill_(float("nan")), torch.tensor([0, 1]), x)
    with pytest.raises(ValueError, match="model"):
        d.p_mean_variance(lambda a, s: a[:, :1], x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="x_t"):
        reverse_loop(TinyEps(), d, Ancestral(), x[:, 0, 0, 0], _gen(0))
    with pytest.raises(ValueError, match="x0_every"):
        reverse_loop(TinyEps(), d, Ancestral(), x, _gen(0), x0_every=0)


# ----------------------------------------------------------------------------------------------
# Learned diagonal Sigma (Table 2), DDIM, decoding from a given x_t


class OracleLearned:
    """eps* and log sigma_t^2 = log beta_tilde_t (clipped at t = 0): (B, 2C, H, W)."""

    def __init__(self, betas: np.ndarray, x0: Tensor) -> None:
        self.eps = OracleEps(betas, x0)
        ab, ab_prev = _ab(betas)
        bt = betas * (1 - ab_prev) / (1 - ab)
        self.log_var = torch.tensor(np.log(np.append(bt[1], bt[1:])), dtype=x0.dtype)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        log_var = self.log_var[t].reshape(-1, 1, 1, 1).expand(x_t.shape)
        return torch.cat([self.eps(x_t, t), log_var], dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_learned_variance_oracle_bound_equals_analytic_value(dtype: torch.dtype) -> None:
    """The exact eps and sigma_t^2 = beta_tilde_t: every KL term is 0, L = prior + decoder."""
    betas = make_betas("linear", T, 1e-4, 0.1)
    x0 = _x0(dtype)
    d = GaussianDiffusion(betas, var_type="learned", loss_type="kl")
    out = d.calc_bpd_loop(OracleLearned(betas, x0), x0, generator=torch.Generator().manual_seed(0))
    prior, terms = _analytic_bpd(betas, x0.double(), "fixedsmall")
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert float(out["terms_bpd"][:, 1:].abs().max()) < tol
    for i in range(x0.shape[0]):
        assert float(out["total_bpd"][i]) == pytest.approx(prior + sum(terms), abs=tol)
    losses = d.training_losses(OracleLearned(betas, x0), x0, torch.tensor([0, 4, T - 1]),
                               torch.randn(x0.shape, dtype=dtype))  # fmt: skip
    assert float(losses[1:].abs().max()) < tol
    assert float(losses[0]) == pytest.approx(terms[0], abs=tol)  # float32: abs, as above


def test_learned_variance_checks_loss_type_and_output_channels() -> None:
    betas = make_betas("linear", T)
    with pytest.raises(ValueError, match="expected loss_type 'kl', got 'mse'"):
        GaussianDiffusion(betas, var_type="learned", loss_type="mse")
    d = GaussianDiffusion(betas, var_type="learned", loss_type="kl")
    assert d.model_out_channels(3) == 6 and GaussianDiffusion(betas).model_out_channels(3) == 3
    x = torch.zeros(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"expected \(3, 4, 4, 4\)"):
        d.p_mean_variance(TinyEps(), x, torch.tensor([0, 1, 2]))


def test_learned_variance_is_used_by_the_reverse_process() -> None:
    betas = make_betas("linear", T)
    d = GaussianDiffusion(betas, var_type="learned", loss_type="kl")
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 9])

    def model(x_t: Tensor, s: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, -3.0)], dim=1)

    out = d.p_mean_variance(model, x, t)
    assert torch.allclose(out["log_variance"], torch.full_like(x, -3.0))
    assert torch.allclose(out["variance"], torch.full_like(x, math.exp(-3.0)))


def test_learned_variance_training_on_the_bound_lowers_it() -> None:
    """A tiny U-Net with out_channels = 2C, Adam on L (loss_type kl): the bound falls."""
    from ddpm_core.unet import UNet

    betas = make_betas("linear", 10, 1e-3, 0.2)
    d = GaussianDiffusion(betas, var_type="learned", loss_type="kl")
    torch.manual_seed(0)
    model = UNet(1, d.model_out_channels(1), ch=8, ch_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(), dropout=0.0, resolution=8)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(16, 1, 8, 8, generator=g) > 0.5).float() * 2 - 1  # binary images

    def bound() -> float:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            return float(d.calc_bpd_loop(model, x0, generator=gen)["total_bpd"].mean())

    before = bound()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(60):
        t = torch.randint(0, 10, (16,), generator=g)
        loss = d.training_losses(model, x0, t, torch.randn(x0.shape, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bound() < 0.8 * before


def _draws(seed: int) -> Callable[[tuple[int, ...]], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=gen)


def test_ddim_with_eta_one_is_ancestral_sampling_with_beta_tilde() -> None:
    d = GaussianDiffusion(make_betas("linear", T, 1e-4, 0.1), var_type="fixedsmall")
    shape = (3, 2, 4, 4)
    ddpm = _loop(d, TinyEps(), shape, _draws(5)).sample
    ddim = _loop(d, TinyEps(), shape, _draws(5), DDIM(eta=1.0)).sample
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-5)


def test_ddim_with_eta_zero_is_deterministic_given_x_T() -> None:
    d = GaussianDiffusion(make_betas("linear", T, 1e-4, 0.1)).respaced(4)
    shape = (2, 2, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    a = _loop(d, TinyEps(), shape, _first_then(x_T, 1), DDIM(eta=0.0), x0_every=2)
    b = _loop(d, TinyEps(), shape, _first_then(x_T, 2), DDIM(eta=0.0), x0_every=2)
    assert torch.equal(a.sample, b.sample) and a.sample.shape == shape
    assert float(a.sample.abs().max()) <= 1.0 + 1e-6
    # the x̂0 trace is the same option for DDIM as for Algorithm 2: t = 4, 2, 0 of 5 steps
    assert len(a.pred_x0) == 3 and torch.equal(a.pred_x0[-1], a.sample)
    for eta in (1.5, -0.1, True):
        with pytest.raises(ValueError, match="eta"):
            DDIM(eta=eta)


def _first_then(first: Tensor, seed: int) -> Callable[[tuple[int, ...]], Tensor]:
    """A noise_fn returning `first` on its first call, then fresh draws of `seed`."""
    later, used = _draws(seed), []

    def fn(shape: tuple[int, ...]) -> Tensor:
        if not used:
            used.append(True)
            return first
        return later(shape)

    return fn


def test_p_sample_from_continues_the_loop() -> None:
    d = GaussianDiffusion(make_betas("linear", T, 1e-4, 0.1))
    shape = (2, 2, 4, 4)
    full = _loop(d, TinyEps(), shape, _draws(9)).sample
    draws = _draws(9)
    x_T = draws(shape)
    run = reverse_loop(TinyEps(), d, Ancestral(), x_T, draws, t_start=T - 1)
    torch.testing.assert_close(run.sample, full)
    with pytest.raises(ValueError, match="t_start"):
        reverse_loop(TinyEps(), d, Ancestral(), x_T, draws, t_start=T)
