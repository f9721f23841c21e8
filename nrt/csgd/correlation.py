"""The space-time correlation of the CSGD's errors on real pairs, which sets the ensemble's noise.

The normal score z = Phi^-1(F(y)) of each truth y under its fitted CSGD F is what the ensemble's latent noise
stands for. It is exact only where the truth is wet (a dry truth says only z <= Phi^-1(F(0))), so correlations
are taken over pairs of wet cells, with z standardised over them. That is conditional on rain at both ends,
which is where the noise matters. Fitted: exp(-d/L) to the correlations at spatial lags up to `max_lag_km`
along both axes, exp(-dt/tau) to those at time lags 1..3 steps, each weighted by its number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from nrt.csgd import distribution
from nrt.csgd.regression import NoiseSettings
from nrt.errors import NrtError


@dataclass
class ErrorCorrelation:
    spatial: list[tuple[float, float, int]]  # (lag km, correlation, pairs)
    temporal: list[tuple[float, float, int]]  # (lag minutes, correlation, pairs)
    noise: NoiseSettings


def normal_scores(truth: np.ndarray, mu, sigma, delta) -> np.ndarray:
    """Phi^-1(F(y)) where the truth is wet, NaN elsewhere."""
    u = np.clip(distribution.cdf(truth, mu, sigma, delta), 1e-6, 1 - 1e-6)
    return np.where(truth > 0, special.ndtri(u), np.nan)


def _lagged(z: np.ndarray, axis: int, lag: int) -> tuple[float, int]:
    a = np.take(z, np.arange(lag, z.shape[axis]), axis=axis)
    b = np.take(z, np.arange(0, z.shape[axis] - lag), axis=axis)
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(a[both] * b[both])) if both.any() else np.nan, int(both.sum())


def _fit_scale(lags: np.ndarray, corr: np.ndarray, weights: np.ndarray, guess: float) -> float:
    ok = np.isfinite(corr) & (weights > 0)

    def loss(log_scale):
        return np.sum(weights[ok] * (corr[ok] - np.exp(-lags[ok] / np.exp(log_scale))) ** 2)

    return float(np.exp(optimize.minimize_scalar(loss, bounds=(np.log(guess / 20), np.log(guess * 20)), method="bounded").x))


def _time_lagged(z: np.ndarray, minutes: np.ndarray, lag_minutes: float) -> tuple[float, int]:
    """Like _lagged along time, over the frame pairs exactly `lag_minutes` apart (fits may skip hours)."""
    first, second = np.nonzero(np.isclose(minutes[None, :] - minutes[:, None], lag_minutes))
    a, b = z[second], z[first]
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(a[both] * b[both])) if both.any() else np.nan, int(both.sum())


def error_correlation(truth, mu, sigma, delta, cell_km: tuple[float, float], step_minutes: float,
                      max_lag_km: float = 100.0, minutes=None) -> ErrorCorrelation:
    """Correlations of the normal scores of (time, lat, lon) pairs and the fitted exponential scales.

    `minutes`: each frame's time (default: consecutive frames `step_minutes` apart); time lags pair only
    frames that far apart. NrtError when no frames are 1-3 steps apart or no wet cells neighbour each other.
    """
    z = normal_scores(truth, mu, sigma, delta)
    wet = np.isfinite(z)
    z = (z - z[wet].mean()) / z[wet].std()
    minutes = np.arange(z.shape[0]) * step_minutes if minutes is None else np.asarray(minutes, dtype=np.float64)
    spatial = []
    for axis, d in ((1, cell_km[0]), (2, cell_km[1])):
        for lag in range(1, int(max_lag_km // d) + 1):
            c, n = _lagged(z, axis, lag)
            spatial.append((lag * d, c, n))
    temporal = [(lag * step_minutes, *_time_lagged(z, minutes, lag * step_minutes)) for lag in (1, 2, 3)]
    s, t = np.array(spatial, dtype=float), np.array(temporal, dtype=float)
    for name, table in (("space", s), ("time", t)):
        if not (table[:, 2] > 0).any():
            raise NrtError(f"no pairs of wet cells neighbour each other in {name}: the noise's correlation cannot be fit")
    noise = NoiseSettings(
        correlation_length_km=round(_fit_scale(s[:, 0], s[:, 1], s[:, 2], 50.0), 2),
        decorrelation_minutes=round(_fit_scale(t[:, 0], t[:, 1], t[:, 2], 60.0), 2),
    )
    return ErrorCorrelation(spatial, temporal, noise)
