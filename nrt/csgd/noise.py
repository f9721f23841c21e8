"""Space-time correlated standard normal noise: exponential spatial covariance, AR(1) in time.

Each frame is white noise filtered in Fourier space by the square root of the spectrum of the covariance
exp(-d/L) on a grid padded by at least 3 L, so the periodic wrap-around adds at most exp(-3) of spurious
correlation; frames follow z_t = rho z_{t-1} + sqrt(1 - rho²) e_t with rho = exp(-dt/tau).
Hand-written rather than pysteps.noise.generate_noise_2d_fft_filter: that generator rescales every field to
zero mean and unit variance, which removes exactly the large scales a correlated error must keep, and it draws
one field per call from the global numpy state.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft


def padded_shape(shape: tuple[int, int], cell_km: tuple[float, float], length_km: float) -> tuple[int, int]:
    return tuple(fft.next_fast_len(n + math.ceil(3.0 * length_km / d)) for n, d in zip(shape, cell_km))


def exponential_filter(shape: tuple[int, int], cell_km: tuple[float, float], length_km: float) -> np.ndarray:
    """rfft2 amplitude filter whose output has covariance exp(-d/L) (d in km) and unit variance."""
    ny, nx = shape
    dy = np.minimum(np.arange(ny), ny - np.arange(ny)) * cell_km[0]
    dx = np.minimum(np.arange(nx), nx - np.arange(nx)) * cell_km[1]
    covariance = np.exp(-np.hypot(dy[:, None], dx[None, :]) / length_km)
    spectrum = np.maximum(fft.rfft2(covariance).real, 0.0)  # the periodic embedding can leave tiny negatives
    # irfft2(rfft2(w) * filter) of unit white noise w has variance mean(full spectrum); rescale it to 1.
    full_mean = (spectrum[:, 0].sum() + 2 * spectrum[:, 1:].sum() - (spectrum[:, -1].sum() if nx % 2 == 0 else 0.0)) / (ny * nx)
    return np.sqrt(spectrum / full_mean)


def correlated_normal(
    rng: np.random.Generator,
    members: int,
    frames: int,
    shape: tuple[int, int],
    cell_km: tuple[float, float],
    length_km: float,
    lag1: float,
) -> np.ndarray:
    """(members, frames, lat, lon) float32 standard normal noise, exp(-d/L) in space and lag-1 correlation
    `lag1` between consecutive frames."""
    big = padded_shape(shape, cell_km, length_km)
    amplitude = exponential_filter(big, cell_km, length_km).astype(np.float32)
    innovation_scale = math.sqrt(max(1.0 - lag1**2, 0.0))
    out = np.empty((members, frames, *shape), dtype=np.float32)
    state = None
    for t in range(frames):
        white = rng.standard_normal((members, *big), dtype=np.float32)
        field = fft.irfft2(fft.rfft2(white, workers=1) * amplitude, s=big, workers=1)[:, : shape[0], : shape[1]]
        state = field if state is None else lag1 * state + innovation_scale * field
        out[:, t] = state
    return out
