"""Block means from a fine regular grid to IMERG's 0.1°, with missing cells."""

from __future__ import annotations

import numpy as np

IMERG_RES_DEG = 0.1


def block_factor(truth_res_deg: float) -> int:
    """How many fine cells span one 0.1° cell; the fine resolution must divide 0.1°."""
    factor = round(IMERG_RES_DEG / truth_res_deg)
    if factor < 1 or abs(factor * truth_res_deg - IMERG_RES_DEG) > 1e-6:
        raise ValueError(f"truth resolution {truth_res_deg}° does not divide IMERG's {IMERG_RES_DEG}°")
    return factor


def block_mean(truth: np.ndarray, factor: int) -> np.ndarray:
    """(time, lat/k, lon/k) mean of each k x k block's valid cells; NaN where fewer than half are valid."""
    t, ny, nx = truth.shape
    if ny % factor or nx % factor:
        raise ValueError(f"truth grid {ny} x {nx} is not a whole number of {factor} x {factor} blocks")
    blocks = np.asarray(truth, dtype=np.float64).reshape(t, ny // factor, factor, nx // factor, factor)
    valid = np.isfinite(blocks)
    count = valid.sum(axis=(2, 4))
    total = np.where(valid, blocks, 0.0).sum(axis=(2, 4))
    return np.where(2 * count >= factor * factor, total / np.maximum(count, 1), np.nan)
