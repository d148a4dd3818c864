"""Frechet distance (FID) and the rate-distortion curve of the bound (paper Sec. 4.3)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg

logger = logging.getLogger(__name__)


def _check_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"mu{name}/sigma{name}: expected shapes (D,) and (D, D), got {mu.shape}, {sigma.shape}"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"mu{name}/sigma{name}: contain NaN or inf")
    return mu, sigma


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64 (TTUR / pytorch-fid recipe)."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1/mu2: feature dims differ, {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):  # singular product: offset both diagonals
        logger.warning("frechet_distance: singular covariance product, adding 1e-6 to diagonals")
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imag > 1e-3:
            raise ValueError(f"sigma1/sigma2: sqrtm has a large imaginary part ({imag:.3g})")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)


def rate_distortion(
    terms_bpd: np.ndarray, prior_bpd: np.ndarray, mse: np.ndarray
) -> dict[str, np.ndarray]:
    """Progressive-coding rate (bits/dim) and distortion (RMSE on [0, 255]), each (T,).

    Index t (0-based, reverse step T - t) is the receiver holding x_t: rate[t] = mean over
    images of L_prior + sum_{s > t} terms_bpd[:, s] (the KLs sent so far; L_0 is excluded, so
    rate[0] is the paper's 1.78 bits/dim), distortion_rmse[t] = 127.5 sqrt(mean mse[:, t]),
    the RMSE of x0_pred from x_t (eq. 15). Inputs: terms_bpd, mse (N, T); prior_bpd (N,).
    """
    terms = np.asarray(terms_bpd, dtype=np.float64)
    prior = np.asarray(prior_bpd, dtype=np.float64)
    sq = np.asarray(mse, dtype=np.float64)
    if terms.ndim != 2 or terms.shape[0] < 1:
        raise ValueError(f"terms_bpd: expected shape (N, T), got {terms.shape}")
    if prior.shape != terms.shape[:1] or sq.shape != terms.shape:
        raise ValueError(
            f"prior_bpd/mse: expected shapes {terms.shape[:1]} and {terms.shape}, "
            f"got {prior.shape} and {sq.shape}"
        )
    for name, a in (("terms_bpd", terms), ("prior_bpd", prior), ("mse", sq)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: contains NaN or inf")
    mean_terms = terms.mean(axis=0)  # (T,)
    # suffix sums excluding index t itself: sum_{s > t}
    after = np.concatenate([np.cumsum(mean_terms[::-1])[::-1][1:], [0.0]])
    rate = prior.mean() + after
    distortion = 127.5 * np.sqrt(sq.mean(axis=0))
    return {"rate": rate, "distortion_rmse": distortion}
