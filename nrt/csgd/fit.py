"""Fit the CSGD of truth given IMERG by minimising the mean CRPS (Scheuerer & Hamill 2015, section 3):
first the climatological CSGD of the truth, then the regression on the IMERG rate with the climatology held.

Identical (rate, truth, covariate) triples are pooled with a weight before fitting: most cells are dry in both
IMERG and truth, and one weighted entry scores them all.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from nrt.csgd import distribution
from nrt.csgd.correlation import error_correlation
from nrt.csgd.regression import Climatology, CsgdParams, Regression, csgd_parameters
from nrt.errors import NrtError

# a1 (curvature), a2 (rain at IMERG 0), a3 (slope), a4 (spread), a5 (covariate's spread), searched in log.
BOUNDS = np.array([(1e-3, 20.0), (1e-3, 10.0), (1e-4, 100.0), (1e-2, 100.0), (1e-4, 100.0)])
MIN_WET = 50  # cells with rain in the truth and in IMERG below which a fit has nothing to learn from


def check_rain(rate: np.ndarray, truth: np.ndarray, where: str) -> None:
    wet_truth, wet_rate = int((truth > 0).sum()), int((rate > 0).sum())
    if min(wet_truth, wet_rate) < MIN_WET:
        raise NrtError(
            f"{where}: too little rain to fit a CSGD: {wet_truth} wet truth cells and {wet_rate} wet IMERG cells "
            f"(at least {MIN_WET} of each are needed)"
        )


def _pooled(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    stacked = np.stack([np.round(np.ravel(c), 6) for c in columns], axis=1)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(np.float64)


def fit_climatology(truth: np.ndarray) -> Climatology:
    """The CSGD of the truth alone: minimum mean CRPS over (log mu, log sigma, delta <= 0)."""
    (y,), w = _pooled(truth)
    wet = y > 0
    mu0 = float(np.average(y[wet], weights=w[wet]))
    sigma0 = float(np.sqrt(np.average((y[wet] - mu0) ** 2, weights=w[wet])))

    def loss(x):
        return np.average(distribution.crps(y, np.exp(x[0]), np.exp(x[1]), -np.exp(x[2])), weights=w)

    best = optimize.minimize(loss, [np.log(mu0), np.log(sigma0), np.log(mu0)], method="Nelder-Mead",
                             options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 2000})
    return Climatology(mu=float(np.exp(best.x[0])), sigma=float(np.exp(best.x[1])), delta=float(-np.exp(best.x[2])))


def fit_regression(rate: np.ndarray, truth: np.ndarray, clim: Climatology, covariate: np.ndarray | None = None,
                   covariate_name: str = "random_error") -> tuple[Regression, float]:
    """a1..a4 (a5 with a covariate) minimising the mean CRPS; returns the regression and that mean CRPS."""
    columns = [rate, truth] if covariate is None else [rate, truth, covariate]
    pooled, w = _pooled(*columns)
    r, y = pooled[0], pooled[1]
    e = pooled[2] if covariate is not None else None
    rate_mean = float(np.mean(rate))
    covariate_mean = float(np.mean(covariate)) if covariate is not None else 1.0
    if covariate is not None and covariate_mean <= 0:
        raise NrtError(f"{covariate_name} is zero everywhere: it cannot be a covariate")

    def regression(x) -> Regression:
        a = np.exp(x)
        extra = {"covariate": covariate_name, "a5": float(a[4]), "covariate_mean": covariate_mean} if e is not None else {}
        return Regression(*map(float, a[:4]), rate_mean=rate_mean, **extra)

    def loss(x):
        mu, sigma, delta = csgd_parameters(clim, regression(x), r, e)
        return np.average(distribution.crps(y, mu, sigma, delta), weights=w)

    start = [0.0, np.log(0.05), 0.0, 0.0] + ([np.log(0.1)] if e is not None else [])
    # Bounded: unbounded, a search can drive a2 to zero, where mu sits on its floor and the loss goes flat.
    best = optimize.minimize(loss, start, method="L-BFGS-B", bounds=np.log(BOUNDS[: len(start)]))
    if not np.isfinite(best.fun):
        raise NrtError(f"the CSGD regression fit did not converge ({best.message})")
    return regression(best.x), float(best.fun)


def fit_csgd(rate: np.ndarray, truth: np.ndarray, *, cell_km: tuple[float, float], step_minutes: float,
             covariate: np.ndarray | None = None, times=None, where: str = "the pairs",
             provenance: dict | None = None) -> CsgdParams:
    """CsgdParams from (time, lat, lon) IMERG `rate` and `truth` (mm/h): climatology, regression, and the noise
    scales from the errors' correlation (nrt.csgd.correlation). `times` (datetime64 per frame; default:
    consecutive frames `step_minutes` apart) keeps time lags honest when hours are skipped.
    Refuses (NrtError) data with too little rain."""
    rate, truth = np.asarray(rate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    valid = np.isfinite(rate) & np.isfinite(truth)
    if covariate is not None:
        covariate = np.asarray(covariate, dtype=np.float64)
        valid &= np.isfinite(covariate)
    if (rate[valid] < 0).any() or (truth[valid] < 0).any():
        raise NrtError(f"{where}: negative rain rates")
    check_rain(rate[valid], truth[valid], where)
    clim = fit_climatology(truth[valid])
    reg, mean_crps = fit_regression(rate[valid], truth[valid], clim, None if covariate is None else covariate[valid])
    mu, sigma, delta = csgd_parameters(clim, reg, np.where(valid, rate, np.nan), covariate)
    minutes = None if times is None else (np.asarray(times) - np.asarray(times)[0]) / np.timedelta64(1, "m")
    corr = error_correlation(np.where(valid, truth, np.nan), mu, sigma, delta, cell_km, step_minutes, minutes=minutes)
    fit_stats = {
        "cells": int(valid.sum()),
        "mean_crps_mm_h": round(mean_crps, 6),
        "imerg_mae_mm_h": round(float(np.abs(rate[valid] - truth[valid]).mean()), 6),
        "objective": "mean CRPS (Scheuerer & Hamill 2015); climatology Nelder-Mead, regression L-BFGS-B",
        "spatial_correlation": [[round(d, 2), round(c, 4), n] for d, c, n in corr.spatial],
        "temporal_correlation": [[round(d, 2), round(c, 4), n] for d, c, n in corr.temporal],
    }
    return CsgdParams(clim, reg, corr.noise, provenance={**(provenance or {}), "fit": fit_stats}, source=where)
