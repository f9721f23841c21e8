"""A CSGD ensemble: each member is the CSGD quantile of space-time correlated uniform noise (STREAM-Sat's idea,
Hartke et al. 2022): correlated Gaussian fields -> uniform through the normal CDF -> truth | IMERG quantiles,
so members keep realistic texture instead of independent per-cell (salt and pepper) draws."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from nrt.csgd import distribution
from nrt.csgd.noise import correlated_normal
from nrt.csgd.regression import CsgdParams
from nrt.errors import NrtError


def _per_member(name: str, values, members: int) -> np.ndarray:
    """(time, lat, lon) shared by every member, or (members, time, lat, lon) one per member -> 4-D."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 3:
        return values[None]
    if values.ndim == 4 and values.shape[0] == members:
        return values
    raise ValueError(f"{name} must be (time, lat, lon) or ({members} members, time, lat, lon), not {values.shape}")


def csgd_ensemble(
    rate,
    params: CsgdParams,
    *,
    members: int = 30,
    cell_km: tuple[float, float],
    seed: int = 0,
    frame_minutes: float = 30.0,
    random_error=None,
) -> np.ndarray:
    """(members, time, lat, lon) float32 mm/h drawn from the CSGD of truth given the IMERG `rate` (mm/h).

    `rate` is (time, lat, lon), or (members, time, lat, lon) with member i drawn around rate[i] (a nowcast's
    members). `cell_km` = (dy, dx) sets the noise's spatial correlation, `frame_minutes` its time step.
    `random_error` (same layout as `rate`) is required when `params` were fit with it. NaN rate -> NaN members.
    The same seed gives the same ensemble.
    """
    if members < 1:
        raise ValueError("members must be at least 1")
    if min(cell_km) <= 0 or frame_minutes <= 0:
        raise ValueError("cell_km and frame_minutes must be positive")
    rate4 = _per_member("rate", rate, members)
    covariate = None
    if params.regression.covariate is not None:
        if random_error is None:
            raise NrtError(f"{params.source}: these CSGD parameters were fit with {params.regression.covariate}; pass it")
        covariate = _per_member("random_error", random_error, members)
    mu, sigma, delta = params.distribution(rate4, covariate)
    lag1 = math.exp(-frame_minutes / params.noise.decorrelation_minutes)
    z = correlated_normal(np.random.default_rng(seed), members, rate4.shape[1], rate4.shape[2:], cell_km,
                          params.noise.correlation_length_km, lag1)
    out = np.empty(z.shape, dtype=np.float32)
    for t in range(z.shape[1]):  # frame by frame: the float64 intermediates stay one frame large
        out[:, t] = distribution.quantile(special.ndtr(z[:, t]), mu[:, t], sigma[:, t], delta[:, t])
    out[np.broadcast_to(np.isnan(rate4), out.shape)] = np.nan
    return out
