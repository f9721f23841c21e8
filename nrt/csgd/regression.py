"""CSGD parameters of truth given an IMERG rate: climatology plus the regression of Scheuerer & Hamill (2015).

    mu    = mu_c / a1 * log1p(expm1(a1) * (a2 + a3 * r / r_mean))
    sigma = sigma_c * (a4 * sqrt(mu / mu_c) + a5 * e / e_mean)
    delta = delta_c

r is the IMERG rate (mm/h), e an optional error covariate (IMERG's randomError) and (mu_c, sigma_c, delta_c)
the climatological CSGD of the truth. The log1p form is linear in r for light rain and flattens for heavy
rain (satellite estimates of heavy rain are noisy, so the truth regresses toward the mean). This is the form
STREAM-Sat uses (Wright et al. 2017; Hartke et al. 2022), with the error covariate added to the spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


# Keeps a "certainly dry" distribution well defined: when a fit drives mu toward zero it underflows to
# denormal numbers, where the gamma shape k = mu²/sigma² is lost and the CRPS formula returns garbage.
MU_FLOOR = 1e-4  # mm/h


@dataclass(frozen=True)
class Climatology:
    """The CSGD of the truth regardless of IMERG (mm/h)."""

    mu: float
    sigma: float
    delta: float


@dataclass(frozen=True)
class Regression:
    """a1..a4 (and a5 with a covariate), the mean IMERG rate r_mean and the covariate's mean e_mean."""

    a1: float
    a2: float
    a3: float
    a4: float
    rate_mean: float
    covariate: str | None = None
    a5: float = 0.0
    covariate_mean: float = 1.0


@dataclass(frozen=True)
class NoiseSettings:
    """The latent Gaussian noise: exponential spatial covariance exp(-d/L), AR(1) in time exp(-dt/tau)."""

    correlation_length_km: float
    decorrelation_minutes: float


@dataclass(frozen=True)
class CsgdParams:
    climatology: Climatology
    regression: Regression
    noise: NoiseSettings
    provenance: dict = field(default_factory=dict, compare=False)
    source: str = field(default="<memory>", compare=False)

    def distribution(self, rate, covariate=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, sigma, delta) of the truth for IMERG `rate` (mm/h, any shape) and the optional covariate."""
        return csgd_parameters(self.climatology, self.regression, rate, covariate)


def csgd_parameters(clim: Climatology, reg: Regression, rate, covariate=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.maximum(np.asarray(rate, dtype=np.float64), 0.0) / reg.rate_mean
    mu = np.maximum(clim.mu / reg.a1 * np.log1p(np.expm1(reg.a1) * (reg.a2 + reg.a3 * r)), MU_FLOOR)
    spread = reg.a4 * np.sqrt(mu / clim.mu)
    if reg.covariate is not None:
        e = np.maximum(np.asarray(covariate, dtype=np.float64), 0.0) / reg.covariate_mean
        spread = spread + reg.a5 * e
    return mu, clim.sigma * spread, np.full(np.shape(mu), clim.delta)
