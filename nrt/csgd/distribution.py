"""The censored shifted gamma distribution (CSGD) of Scheuerer & Hamill (2015, Mon. Wea. Rev. 143, 4578-4596).

A gamma variable G with mean `mu` and standard deviation `sigma` (shape k = mu²/sigma², scale
theta = sigma²/mu) is shifted by `delta` <= 0 and censored at zero: Y = max(0, G + delta). The shift puts a
point mass F(0) = P(G <= -delta) on "no rain", so one smooth family describes both the chance of rain and its
amount. scipy has the gamma functions but not this censored, shifted family nor its closed-form CRPS.

All functions broadcast over numpy arrays of parameters and values.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from nrt.csgd import gammainv


def shape_scale(mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Gamma shape k and scale theta from the mean and standard deviation of the unshifted gamma."""
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    return (mu / sigma) ** 2, sigma**2 / mu


def cdf(y, mu, sigma, delta) -> np.ndarray:
    """P(Y <= y); 0 below zero, the censored mass F(0) at zero."""
    k, theta = shape_scale(mu, sigma)
    y = np.asarray(y, dtype=np.float64)
    return np.where(y < 0, 0.0, special.gammainc(k, np.maximum(y - delta, 0.0) / theta))


def probability_of_zero(mu, sigma, delta) -> np.ndarray:
    """F(0): the point mass on no rain."""
    return cdf(0.0, mu, sigma, delta)


def quantile(u, mu, sigma, delta) -> np.ndarray:
    """The u-quantile: 0 where u <= F(0), else theta * P^-1(k, u) + delta (P the regularised gamma function).

    The inverse gamma function (nrt.csgd.gammainv, fast) is evaluated only where the quantile is positive: it is
    the slow part of drawing an ensemble.
    """
    k, theta = shape_scale(mu, sigma)
    u, delta = np.asarray(u, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    p0 = special.gammainc(k, -delta / theta)  # before broadcasting: members share their parameters
    k, theta, delta, p0, u = np.broadcast_arrays(k, theta, delta, p0, u)
    out = np.zeros(u.shape)
    wet = u > p0
    out[wet] = theta[wet] * gammainv.gammaincinv(k[wet], u[wet]) + delta[wet]
    out[np.isnan(u) | np.isnan(k) | np.isnan(theta) | np.isnan(delta)] = np.nan
    return np.maximum(out, 0.0, where=~np.isnan(out), out=out)


def crps(y, mu, sigma, delta) -> np.ndarray:
    """Closed-form CRPS of the CSGD at the observation y >= 0 (Scheuerer & Hamill 2015, eq. 5).

    With y~ = (y - delta)/theta, c~ = -delta/theta and F_k the gamma(k, 1) CDF:
    CRPS/theta = y~(2F_k(y~) - 1) - c~ F_k(c~)² + k[1 + 2F_k(c~)F_{k+1}(c~) - F_k(c~)² - 2F_{k+1}(y~)]
                 - k/pi B(1/2, k + 1/2)[1 - F_{2k}(2c~)]
    """
    k, theta = shape_scale(mu, sigma)
    y = np.asarray(y, dtype=np.float64)
    y_t = (y - delta) / theta
    c_t = -np.asarray(delta, dtype=np.float64) / theta
    f_k_c = special.gammainc(k, c_t)
    value = (
        y_t * (2.0 * special.gammainc(k, y_t) - 1.0)
        - c_t * f_k_c**2
        + k * (1.0 + 2.0 * f_k_c * special.gammainc(k + 1.0, c_t) - f_k_c**2 - 2.0 * special.gammainc(k + 1.0, y_t))
        - k / np.pi * special.beta(0.5, k + 0.5) * (1.0 - special.gammainc(2.0 * k, 2.0 * c_t))
    )
    return theta * value


def mean(mu, sigma, delta) -> np.ndarray:
    """E[Y] = E[max(0, G + delta)] = mu (1 - F_{k+1}(c~)) + delta (1 - F_k(c~))  (E[G; G > c] = mu Q(k+1, c/theta))."""
    k, theta = shape_scale(mu, sigma)
    c_t = -np.asarray(delta, dtype=np.float64) / theta
    return mu * special.gammaincc(k + 1.0, c_t) + delta * special.gammaincc(k, c_t)
