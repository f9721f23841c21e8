"""Unit normal random fields with an exponential correlation in space and in time.

corr(d, Δt) = exp(-d / length) · exp(-Δt / lifetime): the length and lifetime are the e-folding distances the
error model states and the tests check. Hand-written rather than pysteps.noise because pysteps' parametric
filter is a power law with a scale break, whose correlation length is not a parameter; the exponential
covariance here has a closed-form spectrum instead. In time each field is AR(1) from frame to frame.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft


def padded_shape(shape: tuple[int, int], spacing_km: tuple[float, float], longest_km: float) -> tuple[int, int]:
    """The periodic grid the fields live on: `shape` plus three of the longest lengths, so the wrap-around is
    below exp(-3) correlated."""
    return tuple(fft.next_fast_len(n + int(math.ceil(3 * longest_km / d))) for n, d in zip(shape, spacing_km))


def exponential_filter(padded: tuple[int, int], spacing_km: tuple[float, float], length_km: float) -> np.ndarray:
    """rfft2 amplitudes that give unit variance and corr(d) = exp(-d / length_km).

    The 2-D Fourier transform of exp(-d/L) is 2πL² (1 + (2πkL)²)^(-3/2), so the amplitude is its square root.
    """
    ky = np.fft.fftfreq(padded[0], d=spacing_km[0])[:, None]
    kx = np.fft.rfftfreq(padded[1], d=spacing_km[1])[None, :]
    spectrum = (1.0 + (2 * np.pi * length_km) ** 2 * (ky**2 + kx**2)) ** -1.5
    weights = np.full(kx.shape, 2.0)  # rfft holds the mirrored half of the spectrum once
    weights[:, 0] = 1.0
    if padded[1] % 2 == 0:
        weights[:, -1] = 1.0
    n = padded[0] * padded[1]
    return np.sqrt(spectrum * n / np.sum(spectrum * weights))


def ar1_white(rng: np.random.Generator, frames: int, padded: tuple[int, int], memory: float) -> np.ndarray:
    """(frames, *padded) unit white noise, AR(1) in time with lag-one correlation `memory`."""
    white = rng.standard_normal((frames, *padded), dtype=np.float32)  # single precision: twice as fast, ample for noise
    innovation = math.sqrt(1.0 - memory**2)
    for t in range(1, frames):
        white[t] = memory * white[t - 1] + innovation * white[t]
    return white


def correlated_normal(
    rng: np.random.Generator, frames: int, shape: tuple[int, int], padded: tuple[int, int],
    spacing_km: tuple[float, float], length_km: float, memory: float,
) -> np.ndarray:
    """(frames, *shape) unit normal fields, exponentially correlated over `length_km`, AR(1) in time.

    A length of zero gives independent cells (the white noise itself).
    """
    white = ar1_white(rng, frames, padded, memory)
    if length_km > 0:
        spectrum = fft.rfft2(white, axes=(-2, -1)) * exponential_filter(padded, spacing_km, length_km).astype(np.float32)
        white = fft.irfft2(spectrum, s=padded, axes=(-2, -1))
    return white[:, : shape[0], : shape[1]]


def frame_memory(frame_minutes: float, lifetime_h: float) -> float:
    """Lag-one correlation of an exponentially correlated process sampled every `frame_minutes`."""
    return math.exp(-frame_minutes / 60.0 / lifetime_h) if lifetime_h > 0 else 0.0
