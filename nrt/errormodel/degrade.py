"""Fine truth -> IMERG-like 0.1° estimates: the one degradation used by the twin and by radar training sets.

Order of the errors, each at 0.1° after the block mean:
1. displacement by a smooth random field (RMS `displacement_km` per component);
2. smoothing in space (FWHM `smoothing_km`) and in time (FWHM `smoothing_minutes`);
3. the smoothed truth is dry below `dry_below_mmh`; light rain is missed with probability
   `miss_fraction · exp(-rate / miss_rate_mmh)`, decided by a spatially and temporally correlated field;
4. a mean-one lognormal multiplicative error M = exp(σz - σ²/2), z a unit normal field with e-folding distance
   `error_length_km` and e-folding time `error_lifetime_h`;
5. false alarms on a fraction `false_fraction` of dry cells (mean `false_mmh`), where another correlated
   field is highest;
6. the whole estimate times `bias`, so the mean scales exactly.
Missing truth stays missing. `randomError`, IMERG's RMS error estimate, grows with the estimated rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from nrt.errormodel.aggregate import IMERG_RES_DEG, block_factor, block_mean
from nrt.errormodel.fields import correlated_normal, frame_memory, padded_shape
from nrt.errormodel.params import ErrorModel
from nrt.grids import KM_PER_DEGREE

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# One independent random stream per error component, so turning one off leaves the others alike.
STREAMS = {"shift_y": 0, "shift_x": 1, "miss": 2, "multiplicative": 3, "false": 4}


@dataclass(frozen=True)
class Degraded:
    """IMERG-like fields, (time, lat, lon) float32 at 0.1°: mm/h, mm/h and a [0, 1] quality index."""

    precipitation: np.ndarray
    random_error: np.ndarray
    quality_index: np.ndarray


def cell_km(latitude: float) -> tuple[float, float]:
    """(north-south, east-west) size in km of a 0.1° cell at `latitude`."""
    return KM_PER_DEGREE * IMERG_RES_DEG, KM_PER_DEGREE * IMERG_RES_DEG * math.cos(math.radians(latitude))


def _latitude(truth, latitude: float | None) -> float:
    if latitude is not None:
        return float(latitude)
    coords = getattr(truth, "coords", None)
    return float(np.mean(coords["lat"])) if coords is not None and "lat" in coords else 0.0


def displace(field: np.ndarray, shift_rows: np.ndarray, shift_cols: np.ndarray) -> np.ndarray:
    """Each frame sampled at (row - shift_rows, col - shift_cols), bilinear; NaN cells renormalised away."""
    valid = np.isfinite(field)
    filled = np.where(valid, field, 0.0)
    rows, cols = np.mgrid[0 : field.shape[1], 0 : field.shape[2]].astype(np.float64)
    out = np.empty_like(filled)
    for t in range(field.shape[0]):
        where = [rows - shift_rows[t], cols - shift_cols[t]]
        moved = ndimage.map_coordinates(filled[t], where, order=1, mode="nearest")
        weight = ndimage.map_coordinates(valid[t].astype(np.float64), where, order=1, mode="nearest")
        out[t] = np.where(weight > 0, moved / np.maximum(weight, 1e-12), 0.0)
    return np.where(valid, out, np.nan)


def smooth(field: np.ndarray, sigma: tuple[float, float, float]) -> np.ndarray:
    """Gaussian smoothing over (time, lat, lon) that ignores missing cells (normalised convolution)."""
    if not any(sigma):
        return field
    valid = np.isfinite(field)
    total = ndimage.gaussian_filter(np.where(valid, field, 0.0), sigma, mode="nearest")
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="nearest")
    return np.where(valid, total / np.maximum(weight, 1e-12), np.nan)


def false_alarm_rates(normal: np.ndarray, fraction: float, mean_mmh: float) -> np.ndarray:
    """Rates on the `fraction` of cells where `normal` is highest: its excess over the threshold, scaled to mean
    `mean_mmh`; zero elsewhere. Rates start at zero at the threshold, so they change smoothly with the parameters."""
    if fraction <= 0 or mean_mmh <= 0:
        return np.zeros_like(normal)
    level = float(special.ndtri(1.0 - fraction))
    mean_excess = math.exp(-level * level / 2) / math.sqrt(2 * math.pi) / fraction - level
    return np.where(normal > level, (normal - level) * (mean_mmh / mean_excess), 0.0)


def random_error(precipitation: np.ndarray, params: ErrorModel) -> np.ndarray:
    """IMERG's randomError: an RMS error that grows with the estimated rate (fit on the real pairs)."""
    rate = np.nan_to_num(precipitation)
    growing = params.random_error_coef * np.power(rate, params.random_error_exponent, where=rate > 0, out=np.zeros_like(rate))
    return np.where(np.isfinite(precipitation), np.hypot(params.random_error_floor_mmh, growing), np.nan)


def degrade(
    truth, truth_res_deg: float, params: ErrorModel, seed: int, frame_minutes: float = 30.0,
    latitude: float | None = None,
) -> Degraded:
    """IMERG-like estimates of `truth` ((time, lat, lon) mm/h on a grid whose resolution divides 0.1°; NaN = no data).

    Frames are `frame_minutes` apart, so the errors keep their stated lifetimes whatever the time step. The
    east-west size of a cell is taken at `latitude` (default: the mean of `truth`'s "lat" coordinate when it is
    an xarray object, else the equator). The same seed gives the same result.
    """
    values = np.asarray(truth, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"truth must be (time, lat, lon), got shape {values.shape}")
    coarse = block_mean(values, block_factor(truth_res_deg))
    frames, shape = coarse.shape[0], coarse.shape[1:]
    spacing = cell_km(_latitude(truth, latitude))
    p = params
    padded = padded_shape(shape, spacing, max(p.displacement_scale_km, p.error_length_km, p.occurrence_length_km))

    def field(stream: str, length_km: float, lifetime_h: float) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), STREAMS[stream]]))
        return correlated_normal(rng, frames, shape, padded, spacing, length_km, frame_memory(frame_minutes, lifetime_h))

    signal = coarse
    if p.displacement_km > 0:
        shift_rows = field("shift_y", p.displacement_scale_km, p.displacement_lifetime_h) * (p.displacement_km / spacing[0])
        shift_cols = field("shift_x", p.displacement_scale_km, p.displacement_lifetime_h) * (p.displacement_km / spacing[1])
        signal = displace(signal, shift_rows, shift_cols)
    sigma = (p.smoothing_minutes / frame_minutes, p.smoothing_km / spacing[0], p.smoothing_km / spacing[1])
    signal = smooth(signal, tuple(s / FWHM_PER_SIGMA for s in sigma))
    signal = np.where(signal < p.dry_below_mmh, 0.0, signal)  # NaN stays NaN
    if p.miss_fraction > 0 and p.miss_rate_mmh > 0:
        chance = p.miss_fraction * np.exp(-np.nan_to_num(signal) / p.miss_rate_mmh)
        missed = special.ndtr(field("miss", p.occurrence_length_km, p.error_lifetime_h)) < chance
        signal = np.where(missed, 0.0, signal)
    normal = field("multiplicative", p.error_length_km, p.error_lifetime_h)
    estimate = signal * np.exp(p.log_sigma * normal - p.log_sigma**2 / 2)
    spurious = false_alarm_rates(field("false", p.occurrence_length_km, p.error_lifetime_h), p.false_fraction, p.false_mmh)
    estimate = p.bias * (estimate + np.where(signal == 0, spurious, 0.0))
    quality = np.where(np.isfinite(estimate), np.clip(1.0 - np.abs(p.log_sigma * normal), 0.0, 1.0), np.nan)
    return Degraded(
        precipitation=estimate.astype(np.float32),
        random_error=random_error(estimate, p).astype(np.float32),
        quality_index=quality.astype(np.float32),
    )
