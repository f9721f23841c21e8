"""The inverse of the regularised lower incomplete gamma function P(k, x), fast for many values at once.

scipy.special.gammaincinv is exact but costs several microseconds a value (more for the small shapes k << 1
that light rain gives), and a 30-member ensemble needs it up to a million times per valid time. Here a start
interpolated from a table of log P^-1(k, Phi(z)) on a fixed (log k, z) grid is polished by two Newton steps on
log P in t = log x (nearly linear in t for small x): 6-9 times faster, relative error below 1e-10. Values
outside the table, above u = 0.999, or that do not come out finite, fall back to gammaincinv.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special

LOG_K = np.linspace(-8.0, 6.0, 113)  # shapes 3e-4 .. 400
Z = np.linspace(-8.0, 8.0, 321)  # normal scores of u
UPPER = 0.999
NEWTON_STEPS = 2  # from the table's start: relative error below 1e-10 against gammaincinv


@functools.cache
def _table() -> np.ndarray:
    x = special.gammaincinv(np.exp(LOG_K)[:, None], special.ndtr(Z)[None, :])
    return np.log(np.maximum(x, 1e-300))


def _bilinear(log_k: np.ndarray, z: np.ndarray) -> np.ndarray:
    table = _table()
    fi = (log_k - LOG_K[0]) / (LOG_K[1] - LOG_K[0])
    fj = (z - Z[0]) / (Z[1] - Z[0])
    i = np.clip(fi.astype(np.int64), 0, len(LOG_K) - 2)
    j = np.clip(fj.astype(np.int64), 0, len(Z) - 2)
    wi, wj = fi - i, fj - j
    return ((1 - wi) * ((1 - wj) * table[i, j] + wj * table[i, j + 1])
            + wi * ((1 - wj) * table[i + 1, j] + wj * table[i + 1, j + 1]))


def gammaincinv(k, u) -> np.ndarray:
    """x with P(k, x) = u, for arrays k > 0 and 0 < u < 1 of one shape (as scipy.special.gammaincinv)."""
    k, u = np.broadcast_arrays(np.asarray(k, dtype=np.float64), np.asarray(u, dtype=np.float64))
    log_k, z = np.log(k), special.ndtri(u)
    # Newton on log P loses digits as P -> 1; the top 0.1 % goes to scipy.
    inside = (log_k >= LOG_K[0]) & (log_k <= LOG_K[-1]) & (z >= Z[0]) & (u <= UPPER)
    out = np.empty(k.shape)
    out[~inside] = special.gammaincinv(k[~inside], u[~inside])
    k, u, log_k = k[inside], u[inside], log_k[inside]
    t = _bilinear(log_k, z[inside])
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        for _ in range(NEWTON_STEPS):
            p = special.gammainc(k, np.exp(t))
            t = t - (np.log(p) - np.log(u)) * p / np.exp(k * t - np.exp(t) - special.gammaln(k))
    x = np.exp(t)
    bad = ~np.isfinite(x)
    x[bad] = special.gammaincinv(k[bad], u[bad])
    out[inside] = x
    return out
