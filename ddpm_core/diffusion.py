"""The forward process q, the reverse process p_theta, L_simple and the bound (Ho et al. 2020)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ddpm_core.losses import discretized_gaussian_log_likelihood, normal_kl
from ddpm_core.schedule import make_betas

if TYPE_CHECKING:
    from ddpm_core.config import DiffusionConfig

logger = logging.getLogger(__name__)

Model = Callable[[Tensor, Tensor], Tensor]  # eps_theta(x_t (B,C,H,W), t (B,) long) -> (B,C,H,W)
NoiseFn = Callable[[tuple[int, ...]], Tensor]  # shape -> standard normal tensor of that shape
MEAN_TYPES = ("eps", "x0", "mean")
VAR_TYPES = ("fixedlarge", "fixedsmall", "learned")
LOSS_TYPES = ("mse", "kl")


def extract(a: Tensor, t: Tensor, x_shape: Sequence[int]) -> Tensor:
    """Gather a[t] for a 1-D table `a` (T,) on t's device and reshape to (B, 1, ..., 1)."""
    (B,) = t.shape
    return a.gather(0, t if t.dtype == torch.long else t.long()).reshape(
        B, *([1] * (len(x_shape) - 1))
    )


def meanflat(x: Tensor) -> Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}, expected one of {choices}")


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")


def _table_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Coefs:
    """The schedule tables of a `GaussianDiffusion`, each (T,), on one device in one dtype."""

    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    log_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    model_variance: Tensor
    model_log_variance: Tensor
    timesteps: Tensor  # (T,) int64: the model's timestep index of each t

    @classmethod
    def of(cls, d: GaussianDiffusion, device: torch.device, dtype: torch.dtype) -> Coefs:
        tables = {
            f.name: torch.as_tensor(getattr(d, f.name), dtype=dtype).to(device)
            for f in fields(cls)
            if f.name != "timesteps"
        }
        return cls(**tables, timesteps=torch.as_tensor(d.timesteps).to(device))


class GaussianDiffusion:
    """Diffusion with fixed variances; timesteps t are 0-indexed (t = 0 is the paper's t = 1).

    All schedule tables are float64 numpy arrays of shape (T,); `extract` gathers them as
    (B,1,1,1) tensors in x's dtype (float32 unless x is float64) from a per-device cache.
    `timesteps[t]` is the index the model is called with (differs from t after `respaced`).
    """

    def __init__(
        self,
        betas: np.ndarray,
        mean_type: str = "eps",
        var_type: str = "fixedlarge",
        loss_type: str = "mse",
        timesteps: Sequence[int] | None = None,
    ) -> None:
        _check_choice("mean_type", mean_type, MEAN_TYPES)
        _check_choice("var_type", var_type, VAR_TYPES)
        _check_choice("loss_type", loss_type, LOSS_TYPES)
        if var_type == "learned" and loss_type != "kl":
            raise ValueError(
                f"var_type 'learned' is trained on the bound L (official `learned` type): "
                f"expected loss_type 'kl', got {loss_type!r}"
            )
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas: expected a 1-D array of length >= 1, got {betas.shape}")
        if not (np.all(np.isfinite(betas)) and np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError("betas: expected finite values in (0, 1]")
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.num_timesteps = T = int(betas.shape[0])
        steps = list(range(T)) if timesteps is None else [int(s) for s in timesteps]
        if len(steps) != T or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"timesteps: expected {T} strictly increasing ints, got {steps}")
        self.timesteps = np.asarray(steps, dtype=np.int64)
        self._set_tables(betas)
        self._cache: dict[tuple[torch.device, torch.dtype], Coefs] = {}

    def _set_tables(self, betas: np.ndarray) -> None:
        """Float64 tables (T,) as in the official diffusion_utils_2.py __init__."""
        self.betas = betas
        self.alphas = alphas = 1.0 - betas
        self.alphas_cumprod = ab = np.cumprod(alphas)
        self.alphas_cumprod_prev = ab_prev = np.append(1.0, ab[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ab)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ab)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - ab)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ab)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ab - 1.0)
        # beta_tilde_t (eq. 7); index 0 is 0, so the log is clipped with beta_tilde[1].
        self.posterior_variance = pv = betas * (1.0 - ab_prev) / (1.0 - ab)
        first = pv[1] if len(pv) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, pv[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(ab_prev) / (1.0 - ab)
        self.posterior_mean_coef2 = (1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab)
        if self.var_type == "fixedlarge":  # sigma_t^2 = beta_t, with beta_tilde_1 at t = 0
            self.model_variance = np.append(first, betas[1:])
        else:  # sigma_t^2 = beta_tilde_t (`learned`: unused, the network outputs log sigma_t^2)
            self.model_variance = np.append(first, pv[1:])
        self.model_log_variance = np.log(self.model_variance)

    def coefs(self, x: Tensor) -> Coefs:
        """The (T,) tables in x's dtype (float32 unless x is float64) on x's device, cached."""
        key = (x.device, _table_dtype(x))
        if key not in self._cache:
            self._cache[key] = Coefs.of(self, *key)
        return self._cache[key]

    def prepare(self, device: torch.device) -> None:
        """Build the coefficient tables on `device` now (before `torch.compile` traces a caller)."""
        for dtype in (torch.float32, torch.float64):
            self.coefs(torch.empty(0, device=device, dtype=dtype))

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        betas = make_betas(cfg.beta_schedule, cfg.T, cfg.beta_start, cfg.beta_end)
        return cls(betas, cfg.mean_type, cfg.var_type, cfg.loss_type)

    def respaced(self, stride: int) -> GaussianDiffusion:
        """Diffusion over timesteps range(0, T, stride): betas from the alpha_bar subsequence."""
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride: got {stride!r}, expected an int >= 1")
        if stride == 1:
            return self
        use = list(range(0, self.num_timesteps, stride))
        ab = self.alphas_cumprod[use]  # (T',)
        betas = 1.0 - ab / np.append(1.0, ab[:-1])
        steps = [int(self.timesteps[i]) for i in use]
        return GaussianDiffusion(betas, self.mean_type, self.var_type, self.loss_type, steps)

    # ------------------------------------------------------------------------------------------
    # Input checks: once per batch at a boundary (they read values back from the device, a host
    # sync); the math below does not repeat them.

    def check_x(self, name: str, x: Tensor, t: Tensor | None = None) -> None:
        """x: a finite float tensor (B, C, H, W); t (optional): (B,) ints in [0, T-1]."""
        if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
            got = (x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x)
            raise ValueError(f"{name}: expected a float tensor (B, C, H, W), got {got}")
        _check_finite(name, x)
        if t is None:
            return
        ok = isinstance(t, Tensor) and t.shape == (x.shape[0],)
        if not ok or t.is_floating_point() or t.dtype == torch.bool:
            got = (t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else t
            raise ValueError(f"t: expected an integer tensor of shape ({x.shape[0]},), got {got}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t: values must be in [0, {self.num_timesteps - 1}]")

    def check_batch(self, x0: Tensor, t: Tensor, noise: Tensor) -> None:
        """A training / scoring batch: x0 (B, C, H, W) finite, t (B,) in range, noise like x0."""
        self.check_x("x0", x0, t)
        if not isinstance(noise, Tensor) or noise.shape != x0.shape:
            got = tuple(noise.shape) if isinstance(noise, Tensor) else noise
            raise ValueError(f"noise: expected shape {tuple(x0.shape)}, got {got}")
        _check_finite("noise", noise)

    # ------------------------------------------------------------------------------------------
    # Forward process q

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_t | x_0) = N(sqrt(a_bar) x0, (1 - a_bar) I) (eq. 4): mean, variance, log-variance."""
        c = self.coefs(x0)
        mean = extract(c.sqrt_alphas_cumprod, t, x0.shape) * x0
        var = extract(c.sqrt_one_minus_alphas_cumprod, t, x0.shape) ** 2
        return mean, var, extract(c.log_one_minus_alphas_cumprod, t, x0.shape)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps (eq. 4); shapes (B, C, H, W), t (B,)."""
        return (
            extract(self.coefs(x0).sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self.coefs(x0).sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def q_posterior_mean_variance(
        self, x0: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) (eqs. 6-7): mu_tilde, beta_tilde, clipped log beta_tilde."""
        mean = (
            extract(self.coefs(x_t).posterior_mean_coef1, t, x_t.shape) * x0
            + extract(self.coefs(x_t).posterior_mean_coef2, t, x_t.shape) * x_t
        )
        var = extract(self.coefs(x_t).posterior_variance, t, x_t.shape)
        return mean, var, extract(self.coefs(x_t).posterior_log_variance_clipped, t, x_t.shape)

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Eq. 15: x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)."""
        return (
            extract(self.coefs(x_t).sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self.coefs(x_t).sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Inverse of eq. 15: eps = (x_t / sqrt(a_bar) - x0) / sqrt(1/a_bar - 1)."""
        return (
            extract(self.coefs(x_t).sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0
        ) / extract(self.coefs(x_t).sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _predict_x0_from_mean(self, x_t: Tensor, t: Tensor, mean: Tensor) -> Tensor:
        """Invert mu_tilde = coef1 x0 + coef2 x_t for x0."""
        c1 = extract(self.coefs(x_t).posterior_mean_coef1, t, x_t.shape)
        return (mean - extract(self.coefs(x_t).posterior_mean_coef2, t, x_t.shape) * x_t) / c1

    # ------------------------------------------------------------------------------------------
    # Reverse process p_theta (the samplers that step it are in ddpm_core.samplers)

    def model_out_channels(self, channels: int) -> int:
        """Network output channels: C, or 2C with a learned variance (mean part, log sigma^2)."""
        return 2 * channels if self.var_type == "learned" else channels

    def model_output(self, model: Model, x_t: Tensor, t: Tensor) -> Tensor:
        """The network at (x_t, t), called with the original timestep indices; shape-checked.

        Returns (B, C, H, W), or (B, 2C, H, W) with var_type `learned` (mean part, log sigma^2).
        """
        out = model(x_t, self.coefs(x_t).timesteps[t])
        B, C, *rest = x_t.shape
        want = (B, self.model_out_channels(C), *rest)
        if not isinstance(out, Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out)
            raise ValueError(
                f"model: output shape {got}, expected {want} for x_t {tuple(x_t.shape)}"
            )
        return out

    def p_mean_variance(
        self, model: Model, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """p_theta(x_{t-1} | x_t): dict(mean, variance, log_variance, pred_x0), all (B,C,H,W)."""
        return self.p_from_output(self.model_output(model, x_t, t), x_t, t, clip_denoised)

    def p_from_output(
        self, out: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """`p_mean_variance` from the network's output `out` (see `model_output`).

        With var_type `learned` the output splits into the mean parameterisation and the
        log-variance (official `learned` type, Table 2's learned diagonal Sigma).
        """
        C = x_t.shape[1]
        learned_log_var = out[:, C:] if self.var_type == "learned" else None
        out = out[:, :C] if self.var_type == "learned" else out
        if self.mean_type == "mean":  # the model predicts mu_tilde (x_{t-1}) directly
            mean = out
            pred_x0 = self._predict_x0_from_mean(x_t, t, out)
            pred_x0 = pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred_x0
        else:
            pred_x0 = out if self.mean_type == "x0" else self.predict_x0_from_eps(x_t, t, out)
            pred_x0 = pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred_x0
            mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        if learned_log_var is not None:
            log_var = learned_log_var
            var = torch.exp(log_var)
        else:
            var = extract(self.coefs(x_t).model_variance, t, x_t.shape).expand(x_t.shape)
            log_var = extract(self.coefs(x_t).model_log_variance, t, x_t.shape).expand(x_t.shape)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": pred_x0}

    # ------------------------------------------------------------------------------------------
    # Objectives

    def training_losses(self, model: Model, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Per-example loss (B,): L_simple (`mse`, eq. 14) or the VLB term L_t in bits (`kl`).

        Unchecked (a training hot loop): validate a batch once with `check_batch`.
        """
        x_t = self.q_sample(x0, t, noise)
        if self.loss_type == "kl":
            return self._vb_terms_bpd(model, x0, x_t, t, clip_denoised=False)[0]
        if self.mean_type == "eps":
            target = noise
        elif self.mean_type == "x0":
            target = x0
        else:
            target = self.q_posterior_mean_variance(x0, x_t, t)[0]
        out = self.model_output(model, x_t, t)[:, : x0.shape[1]]  # the mean part
        return meanflat((target - out) ** 2)

    def _vb_terms_bpd(
        self, model: Model, x0: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool
    ) -> tuple[Tensor, Tensor]:
        """L_t in bits/dim (B,): KL(q(x_{t-1}|x_t,x0) || p_theta) for t > 0, decoder NLL at 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
        kl = meanflat(kl) / math.log(2.0)
        log_p = discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        decoder_nll = -meanflat(log_p) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl), out["pred_x0"]

    def prior_bpd(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, (B,)."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, _, log_var = self.q_mean_variance(x0, t)
        kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))
        return meanflat(kl) / math.log(2.0)

    def calc_bpd_loop(
        self,
        model: Model,
        x0: Tensor,
        clip_denoised: bool = True,
        generator: torch.Generator | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> dict[str, Tensor]:
        """The bound (eq. 5) in bits/dim: total_bpd, prior_bpd (B,); terms_bpd, mse (B, T).

        One fresh x_t ~ q(x_t | x0) per t = T-1..0 (official calc_bpd_loop), its noise from
        `noise_fn` (called once per t, in that order) or else `generator`; mse[:, t] is
        meanflat((pred_x0 - x0)^2) for the rate-distortion curve.
        """
        self.check_x("x0", x0)
        B, T = x0.shape[0], self.num_timesteps
        fn = noise_fn or _generator_noise_fn(generator, x0.device, x0.dtype)
        terms = torch.zeros(B, T, dtype=x0.dtype, device=x0.device)
        mse = torch.zeros(B, T, dtype=x0.dtype, device=x0.device)
        for i in reversed(range(T)):
            t = torch.full((B,), i, dtype=torch.long, device=x0.device)
            x_t = self.q_sample(x0, t, fn(tuple(x0.shape)))
            terms[:, i], pred_x0 = self._vb_terms_bpd(model, x0, x_t, t, clip_denoised)
            mse[:, i] = meanflat((pred_x0 - x0) ** 2)
        prior = self.prior_bpd(x0)
        total = terms.sum(dim=1) + prior
        return {"total_bpd": total, "prior_bpd": prior, "terms_bpd": terms, "mse": mse}


def _generator_noise_fn(
    generator: torch.Generator | None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> NoiseFn:
    """Standard normal draws on the generator's device, moved to `device` (default: same)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    target = gen_device if device is None else torch.device(device)

    def draw(shape: tuple[int, ...]) -> Tensor:
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        return z.to(target)

    return draw
