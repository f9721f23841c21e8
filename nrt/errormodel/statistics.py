"""Statistics of an estimate against its truth at 0.1°: what the error model is fit to and checked on.

The same function scores real IMERG against Stage IV and the modelled IMERG against the same Stage IV, so the
fit, the test and the docs compare like with like.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft

from nrt.errormodel.degrade import cell_km

RATE_BINS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, math.inf)  # mm/h of the estimate
THRESHOLDS = (0.1, 1.0)  # mm/h, for hits, misses and false alarms
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
MAX_LAG_KM = 150.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def error_correlogram(error: np.ndarray, spacing_km: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(distance km, correlation) of the error field with itself at that distance, pooled over frames.

    Lagged products come from zero-padded FFTs, divided by the number of valid pairs at each lag, then
    averaged in rings one north-south cell wide.
    """
    valid = np.isfinite(error)
    anomaly = np.where(valid, error - np.nanmean(error), 0.0)
    ny, nx = error.shape[1:]
    size = (2 * ny, 2 * nx)
    # Power spectra summed over frames before the inverse transform: one inverse FFT each, not one per frame.
    products = fft.irfft2((np.abs(fft.rfft2(anomaly, s=size)) ** 2).sum(axis=0), s=size)
    pairs = fft.irfft2((np.abs(fft.rfft2(valid.astype(np.float64), s=size)) ** 2).sum(axis=0), s=size)
    covariance = products / np.maximum(np.round(pairs), 1.0)
    lag_y = np.fft.fftfreq(size[0], d=1.0 / size[0])[:, None] * spacing_km[0]
    lag_x = np.fft.fftfreq(size[1], d=1.0 / size[1])[None, :] * spacing_km[1]
    distance = np.hypot(lag_y, lag_x)
    ring = np.round(distance / spacing_km[0]).astype(int)
    use = (distance <= MAX_LAG_KM) & (np.round(pairs) >= 100)
    rings = np.unique(ring[use])
    centres = np.array([distance[use & (ring == r)].mean() for r in rings])
    if covariance[0, 0] <= 0:  # no error at all: no correlation to speak of
        return centres, np.full(centres.shape, np.nan)
    correlation = np.array([covariance[use & (ring == r)].mean() for r in rings]) / covariance[0, 0]
    return centres, correlation


def efolding_km(distance: np.ndarray, correlation: np.ndarray) -> float:
    """First distance where the correlation falls to 1/e (linear between rings); NaN if it never does."""
    below = np.flatnonzero(correlation < math.exp(-1))
    if below.size == 0 or below[0] == 0:
        return math.nan
    i = below[0]
    d0, d1, c0, c1 = distance[i - 1], distance[i], correlation[i - 1], correlation[i]
    return float(d0 + (c0 - math.exp(-1)) / (c0 - c1) * (d1 - d0))


def pair_statistics(estimate: np.ndarray, truth: np.ndarray, latitude: float) -> dict:
    """Bias, correlation, truth given the estimate by rate bin, detection at 0.1 and 1 mm/h, the error's
    e-folding distance and lag-one autocorrelations, for (time, lat, lon) arrays at 0.1°.

    Fractions are of all cells where both are valid.
    """
    est = np.asarray(estimate, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    both = np.isfinite(est) & np.isfinite(tru)
    e, t = est[both], tru[both]
    bins = []
    for lo, hi in zip(RATE_BINS[:-1], RATE_BINS[1:]):
        inside = (e >= lo) & (e < hi)
        sample = t[inside]
        bins.append({
            "low": lo, "high": hi, "fraction": float(inside.mean()),
            "estimate_mean": float(e[inside].mean()) if sample.size else math.nan,
            "truth_mean": float(sample.mean()) if sample.size else math.nan,
            "truth_quantiles": [float(q) for q in np.quantile(sample, QUANTILES)] if sample.size else [math.nan] * len(QUANTILES),
            "truth_wet": float((sample >= THRESHOLDS[0]).mean()) if sample.size else math.nan,
            "rms_error": float(np.sqrt(np.mean((sample - e[inside]) ** 2))) if sample.size else math.nan,
        })
    detection = {
        str(thr): {
            "hit": float(((e >= thr) & (t >= thr)).mean()),
            "miss": float(((e < thr) & (t >= thr)).mean()),
            "false": float(((e >= thr) & (t < thr)).mean()),
        }
        for thr in THRESHOLDS
    }
    error = np.where(both, est - tru, np.nan)
    spacing = cell_km(latitude)
    distance, correlation = error_correlogram(error, spacing)
    return {
        "cells": int(both.sum()),
        "truth_mean": float(t.mean()),
        "estimate_mean": float(e.mean()),
        "bias": float(e.mean() / t.mean()) if t.mean() > 0 else math.nan,
        "correlation": _corr(e, t),
        "bins": bins,
        "detection": detection,
        "error_length_km": efolding_km(distance, correlation),
        "error_correlogram": {"distance_km": distance.tolist(), "correlation": correlation.tolist()},
        "estimate_lag1": _corr(est[1:], est[:-1]) if est.shape[0] > 1 else math.nan,
        "error_lag1": _corr(error[1:], error[:-1]) if est.shape[0] > 1 else math.nan,
    }


def _bin_label(b: dict) -> str:
    return f"≥ {b['low']:g}" if math.isinf(b["high"]) else f"{b['low']:g}–{b['high']:g}"


def _q10_50_90(b: dict) -> str:
    return ", ".join(f"{b['truth_quantiles'][QUANTILES.index(q)]:.2f}" for q in (0.1, 0.5, 0.9))


def comparison_table(real: dict, modelled: dict) -> str:
    """Markdown: real against modelled, side by side, for every statistic the model is fit to or checked on."""
    rows = [
        ("bias (mean estimate / mean truth)", "bias", "{:.3f}"),
        ("correlation", "correlation", "{:.3f}"),
    ]
    rows += [(f"{kind} fraction at {thr} mm/h", (thr, kind), "{:.4f}") for thr in real["detection"]
             for kind in ("hit", "miss", "false")]
    rows += [
        ("error e-folding distance (km)", "error_length_km", "{:.1f}"),
        ("lag-1 autocorrelation of the estimate", "estimate_lag1", "{:.3f}"),
        ("lag-1 autocorrelation of the error", "error_lag1", "{:.3f}"),
    ]
    spread = modelled.get("spread", {})

    def value(stats: dict, key):
        return stats["detection"][key[0]][key[1]] if isinstance(key, tuple) else stats[key]

    lines = ["| statistic | real IMERG Early | modelled (mean over seeds) | modelled range over seeds |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        low_high = " – ".join(fmt.format(v) for v in spread[key]) if key in spread else ""
        lines.append(f"| {name} | {fmt.format(value(real, key))} | {fmt.format(value(modelled, key))} | {low_high} |")
    lines += [
        "",
        "| IMERG bin (mm/h) | share of cells real / model | truth mean real / model | truth q10, q50, q90 real | "
        "truth q10, q50, q90 model | P(truth ≥ 0.1) real / model |",
        "|---|---|---|---|---|---|",
    ]
    for r, m in zip(real["bins"], modelled["bins"]):
        lines.append(
            f"| {_bin_label(r)} | {r['fraction']:.4f} / {m['fraction']:.4f} | {r['truth_mean']:.2f} / "
            f"{m['truth_mean']:.2f} | {_q10_50_90(r)} | {_q10_50_90(m)} | {r['truth_wet']:.2f} / {m['truth_wet']:.2f} |"
        )
    return "\n".join(lines)


SPREAD_KEYS = ("bias", "correlation", "error_length_km", "estimate_lag1", "error_lag1")


def mean_statistics(many: list[dict]) -> dict:
    """The element-wise mean of several `pair_statistics` results (numbers, lists and nested dicts alike)."""
    first = many[0]
    if isinstance(first, dict):
        return {k: mean_statistics([m[k] for m in many]) for k in first}
    if isinstance(first, list):
        return [mean_statistics(list(column)) for column in zip(*many)]
    finite = [v for v in many if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def modelled_statistics(
    model, truth: np.ndarray, latitude: float, seeds: tuple[int, ...], frame_minutes: float = 60.0,
) -> dict:
    """`pair_statistics` of `degrade(truth)` against `truth` itself, averaged over `seeds`, with each headline
    statistic's range over the seeds under "spread": one day of one region is a small sample of the errors."""
    from nrt.errormodel.degrade import degrade

    each = [pair_statistics(degrade(truth, 0.1, model, seed, frame_minutes, latitude).precipitation, truth, latitude)
            for seed in seeds]
    mean = mean_statistics(each)
    mean["spread"] = {k: [min(e[k] for e in each), max(e[k] for e in each)] for k in SPREAD_KEYS}
    return mean
