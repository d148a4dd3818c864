"""The forward process q, the reverse process p_theta, L_simple and the bound (Ho et al. 2020)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast, overload

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

    def _coefs(self, x: Tensor) -> Coefs:
        """The (T,) tables in x's dtype (float32 unless x is float64) on x's device, cached."""
        key = (x.device, _table_dtype(x))
        if key not in self._cache:
            self._cache[key] = Coefs.of(self, *key)
        return self._cache[key]

    def prepare(self, device: torch.device) -> None:
        """Build the coefficient tables on `device` now (before `torch.compile` traces a caller)."""
        for dtype in (torch.float32, torch.float64):
            self._coefs(torch.empty(0, device=device, dtype=dtype))

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
    # Input checks

    def _check_x_t(self, name: str, x: Tensor, t: Tensor | None) -> None:
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

    def _check_like(self, name: str, y: Tensor, x: Tensor) -> None:
        if not isinstance(y, Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else y
            raise ValueError(f"{name}: expected shape {tuple(x.shape)}, got {got}")
        _check_finite(name, y)

    # ------------------------------------------------------------------------------------------
    # Forward process q

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_t | x_0) = N(sqrt(a_bar) x0, (1 - a_bar) I) (eq. 4): mean, variance, log-variance."""
        self._check_x_t("x0", x0, t)
        mean = extract(self._coefs(x0).sqrt_alphas_cumprod, t, x0.shape) * x0
        var = extract(self._coefs(x0).sqrt_one_minus_alphas_cumprod, t, x0.shape) ** 2
        return mean, var, extract(self._coefs(x0).log_one_minus_alphas_cumprod, t, x0.shape)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps (eq. 4)."""
        self._check_x_t("x0", x0, t)
        self._check_like("noise", noise, x0)
        return self._q_sample(x0, t, noise)

    def _q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return (
            extract(self._coefs(x0).sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self._coefs(x0).sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def q_posterior_mean_variance(
        self, x0: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) (eqs. 6-7): mu_tilde, beta_tilde, clipped log beta_tilde."""
        self._check_x_t("x0", x0, t)
        self._check_like("x_t", x_t, x0)
        return self._q_posterior(x0, x_t, t)

    def _q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = (
            extract(self._coefs(x_t).posterior_mean_coef1, t, x_t.shape) * x0
            + extract(self._coefs(x_t).posterior_mean_coef2, t, x_t.shape) * x_t
        )
        var = extract(self._coefs(x_t).posterior_variance, t, x_t.shape)
        return mean, var, extract(self._coefs(x_t).posterior_log_variance_clipped, t, x_t.shape)

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Eq. 15: x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)."""
        return (
            extract(self._coefs(x_t).sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(self._coefs(x_t).sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Inverse of eq. 15: eps = (x_t / sqrt(a_bar) - x0) / sqrt(1/a_bar - 1)."""
        return (
            extract(self._coefs(x_t).sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0
        ) / extract(self._coefs(x_t).sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _predict_x0_from_mean(self, x_t: Tensor, t: Tensor, mean: Tensor) -> Tensor:
        """Invert mu_tilde = coef1 x0 + coef2 x_t for x0."""
        c1 = extract(self._coefs(x_t).posterior_mean_coef1, t, x_t.shape)
        return (mean - extract(self._coefs(x_t).posterior_mean_coef2, t, x_t.shape) * x_t) / c1

    # ------------------------------------------------------------------------------------------
    # Reverse process p_theta

    def model_out_channels(self, channels: int) -> int:
        """Network output channels: C, or 2C with a learned variance (mean part, log sigma^2)."""
        return 2 * channels if self.var_type == "learned" else channels

    def _model(self, model: Model, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """Call the model with the original timestep indices: (mean part, log sigma^2 or None).

        With var_type `learned` the output (B, 2C, H, W) splits into the mean parameterisation
        and the log-variance (official `learned` type, Table 2's learned diagonal Sigma).
        """
        out = model(x_t, self._coefs(x_t).timesteps[t])
        B, C, *rest = x_t.shape
        want = (B, self.model_out_channels(C), *rest)
        if not isinstance(out, Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out)
            raise ValueError(
                f"model: output shape {got}, expected {want} for x_t {tuple(x_t.shape)}"
            )
        if self.var_type != "learned":
            return out, None
        mean_part, log_var = out[:, :C], out[:, C:]  # (B, C, H, W) each
        return mean_part, log_var

    def p_mean_variance(
        self, model: Model, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """p_theta(x_{t-1} | x_t): dict(mean, variance, log_variance, pred_x0), all (B,C,H,W)."""
        self._check_x_t("x_t", x_t, t)
        return self._p_mean_variance(model, x_t, t, clip_denoised)

    def _p_mean_variance(
        self, model: Model, x_t: Tensor, t: Tensor, clip_denoised: bool
    ) -> dict[str, Tensor]:
        out, learned_log_var = self._model(model, x_t, t)
        if self.mean_type == "mean":  # the model predicts mu_tilde (x_{t-1}) directly
            mean = out
            pred_x0 = self._predict_x0_from_mean(x_t, t, out)
            pred_x0 = pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred_x0
        else:
            pred_x0 = out if self.mean_type == "x0" else self.predict_x0_from_eps(x_t, t, out)
            pred_x0 = pred_x0.clamp(-1.0, 1.0) if clip_denoised else pred_x0
            mean, _, _ = self._q_posterior(pred_x0, x_t, t)
        if learned_log_var is not None:
            log_var = learned_log_var
            var = torch.exp(log_var)
        else:
            var = extract(self._coefs(x_t).model_variance, t, x_t.shape).expand(x_t.shape)
            log_var = extract(self._coefs(x_t).model_log_variance, t, x_t.shape).expand(x_t.shape)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": pred_x0}

    def p_sample(
        self, model: Model, x_t: Tensor, t: Tensor, noise: Tensor, clip_denoised: bool = True
    ) -> Tensor:
        """x_{t-1} = mu_theta + 1[t > 0] sigma_t z (Algorithm 2, line 4)."""
        self._check_x_t("x_t", x_t, t)
        self._check_like("noise", noise, x_t)
        return self._p_sample(model, x_t, t, noise, clip_denoised)[0]

    def _p_sample(
        self, model: Model, x_t: Tensor, t: Tensor, noise: Tensor, clip_denoised: bool
    ) -> tuple[Tensor, Tensor]:
        out = self._p_mean_variance(model, x_t, t, clip_denoised)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))  # (B,1,1,1)
        x_prev = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return x_prev, out["pred_x0"]

    @overload
    def p_sample_loop(
        self,
        model: Model,
        shape: Sequence[int],
        noise_fn: NoiseFn | None = ...,
        generator: torch.Generator | None = ...,
        progress: bool = ...,
        x0_every: None = ...,
        clip_denoised: bool = ...,
        device: torch.device | None = ...,
    ) -> Tensor: ...

    @overload
    def p_sample_loop(
        self,
        model: Model,
        shape: Sequence[int],
        noise_fn: NoiseFn | None = ...,
        generator: torch.Generator | None = ...,
        progress: bool = ...,
        *,
        x0_every: int,
        clip_denoised: bool = ...,
        device: torch.device | None = ...,
    ) -> tuple[Tensor, list[Tensor]]: ...

    def p_sample_loop(
        self,
        model: Model,
        shape: Sequence[int],
        noise_fn: NoiseFn | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        x0_every: int | None = None,
        clip_denoised: bool = True,
        device: torch.device | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Algorithm 2 from x_T ~ N(0, I) (noise_fn draws x_T, then one z per step, t = T-1..0).

        With x0_every = k also returns pred_x0 at every t with t % k == 0, in generation order
        (t descending), as the official p_sample_loop_progressive (paper Fig. 6).
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape: expected (B, C, H, W) with positive sizes, got {shape}")
        if x0_every is not None and (not isinstance(x0_every, int) or x0_every < 1):
            raise ValueError(f"x0_every: got {x0_every!r}, expected None or an int >= 1")
        fn = noise_fn or _generator_noise_fn(generator, device)
        return self._reverse(
            model, fn(shape), self.num_timesteps - 1, fn, clip_denoised, x0_every, progress
        )

    def p_sample_from(
        self,
        model: Model,
        x_t: Tensor,
        t_start: int,
        noise_fn: NoiseFn,
        clip_denoised: bool = True,
    ) -> Tensor:
        """Algorithm 2 from a given x_t at t = t_start down to 0 (one z per step from noise_fn).

        Used to decode a latent, e.g. the interpolated x_t of paper Sec. 4.3.
        """
        self._check_x_t("x_t", x_t, None)
        if not isinstance(t_start, int) or not 0 <= t_start < self.num_timesteps:
            raise ValueError(f"t_start: got {t_start!r}, expected 0..{self.num_timesteps - 1}")
        return cast(Tensor, self._reverse(model, x_t, t_start, noise_fn, clip_denoised))

    def _reverse(
        self,
        model: Model,
        x: Tensor,
        t_start: int,
        fn: NoiseFn,
        clip_denoised: bool,
        x0_every: int | None = None,
        progress: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        snapshots: list[Tensor] = []
        shape = tuple(x.shape)
        for i in _progress(reversed(range(t_start + 1)), t_start + 1, progress):
            t = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
            x, pred_x0 = self._p_sample(model, x, t, fn(shape), clip_denoised)
            if x0_every is not None and i % x0_every == 0:
                snapshots.append(pred_x0)
        return x if x0_every is None else (x, snapshots)

    def ddim_sample_loop(
        self,
        model: Model,
        shape: Sequence[int],
        noise_fn: NoiseFn,
        eta: float = 0.0,
        clip_denoised: bool = True,
    ) -> Tensor:
        """DDIM (Song et al. 2021, eq. 12) over this diffusion's timesteps: NOT the paper's sampler.

        x_{t-1} = sqrt(a_bar_{t-1}) x0_pred + sqrt(1 - a_bar_{t-1} - s_t^2) eps + s_t z with
        s_t = eta sqrt((1 - a_bar_{t-1}) / (1 - a_bar_t)) sqrt(1 - a_bar_t / a_bar_{t-1});
        eta = 1 is ancestral sampling with sigma_t^2 = beta_tilde_t, eta = 0 is deterministic.
        Use `respaced(stride)` for fewer steps. noise_fn draws x_T, then one z per step.
        """
        shape = tuple(int(s) for s in shape)
        if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ValueError(f"eta: got {eta!r}, expected a number in [0, 1]")
        x = noise_fn(shape)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
            x = self._ddim_step(model, x, t, noise_fn(shape), eta, clip_denoised)
        return x

    def _ddim_step(
        self, model: Model, x_t: Tensor, t: Tensor, z: Tensor, eta: float, clip_denoised: bool
    ) -> Tensor:
        pred_x0 = self._p_mean_variance(model, x_t, t, clip_denoised)["pred_x0"]
        eps = self.predict_eps_from_x0(x_t, t, pred_x0)  # consistent with the clipped x0
        c = self._coefs(x_t)
        ab = extract(c.alphas_cumprod, t, x_t.shape)
        ab_prev = extract(c.alphas_cumprod_prev, t, x_t.shape)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        mean = torch.sqrt(ab_prev) * pred_x0 + torch.sqrt(1 - ab_prev - sigma**2) * eps
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))  # (B,1,1,1)
        return mean + nonzero * sigma * z

    # ------------------------------------------------------------------------------------------
    # Objectives

    def training_losses(
        self, model: Model, x0: Tensor, t: Tensor, noise: Tensor, check: bool = True
    ) -> Tensor:
        """Per-example loss (B,): L_simple (`mse`, eq. 14) or the VLB term L_t in bits (`kl`).

        check=False skips the input checks, which read values back from the device (a host
        sync): for training loops that validate their data once, outside the hot loop.
        """
        if check:
            self._check_x_t("x0", x0, t)
            self._check_like("noise", noise, x0)
        x_t = self._q_sample(x0, t, noise)
        if self.loss_type == "kl":
            return self._vb_terms_bpd(model, x0, x_t, t, clip_denoised=False)[0]
        if self.mean_type == "eps":
            target = noise
        elif self.mean_type == "x0":
            target = x0
        else:
            target = self._q_posterior(x0, x_t, t)[0]
        return meanflat((target - self._model(model, x_t, t)[0]) ** 2)

    def _vb_terms_bpd(
        self, model: Model, x0: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool
    ) -> tuple[Tensor, Tensor]:
        """L_t in bits/dim (B,): KL(q(x_{t-1}|x_t,x0) || p_theta) for t > 0, decoder NLL at 0."""
        true_mean, _, true_log_var = self._q_posterior(x0, x_t, t)
        out = self._p_mean_variance(model, x_t, t, clip_denoised)
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
        self._check_x_t("x0", x0, None)
        B, T = x0.shape[0], self.num_timesteps
        fn = noise_fn or _generator_noise_fn(generator, x0.device, x0.dtype)
        terms = torch.zeros(B, T, dtype=x0.dtype, device=x0.device)
        mse = torch.zeros(B, T, dtype=x0.dtype, device=x0.device)
        for i in reversed(range(T)):
            t = torch.full((B,), i, dtype=torch.long, device=x0.device)
            x_t = self._q_sample(x0, t, fn(tuple(x0.shape)))
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


def _progress(it: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc="sampling")
