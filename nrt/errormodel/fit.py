"""Fit the error model to real pairs by the method of simulated moments.

The truth of the pairs goes through `degrade` (at 0.1°, k = 1) with a few fixed seeds; Nelder–Mead moves the
parameters until the simulated estimate's statistics against that truth, averaged over the seeds, match the
real estimate's. One seed is not enough: a day over one region holds few heavy cells, and one draw of their
multiplicative error moves the bias by ±10 %, so a one-seed fit learns its draw. The bias is solved in closed
form at every step (it is the last factor of `degrade`), and randomError's curve is the real pairs' RMS error
by estimated rate. Fixed seeds, so the objective is deterministic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from nrt.errors import DataError
from nrt.errormodel.degrade import degrade
from nrt.errormodel.params import ErrorModel
from nrt.errormodel.statistics import SPREAD_KEYS, THRESHOLDS, mean_statistics, pair_statistics

log = logging.getLogger("nrt.errormodel")

# Where the search starts (near an earlier fit, to keep the refit short); the displacement scale and lifetime,
# the occurrence length and the dry threshold are structural and stay fixed.
START = ErrorModel(
    bias=1.0, smoothing_km=20.0, smoothing_minutes=20.0, displacement_km=20.0, displacement_scale_km=200.0,
    displacement_lifetime_h=3.0, log_sigma=0.65, error_length_km=30.0, error_lifetime_h=1.5, miss_fraction=0.6,
    miss_rate_mmh=0.9, false_fraction=0.025, false_mmh=0.45, occurrence_length_km=30.0, dry_below_mmh=0.01,
    random_error_floor_mmh=0.0, random_error_coef=0.0, random_error_exponent=1.0,
)
FITTED = (
    "smoothing_km", "smoothing_minutes", "displacement_km", "log_sigma", "error_length_km", "error_lifetime_h",
    "miss_fraction", "miss_rate_mmh", "false_fraction", "false_mmh",
)
FRACTIONS = {"miss_fraction", "false_fraction"}  # searched as logits, the rest as logarithms
MIN_WET_CELLS = 50
FIT_SEEDS = (20170801, 20170802, 20170803, 20170804)


@dataclass(frozen=True)
class FitResult:
    model: ErrorModel
    real: dict  # statistics of the real estimate against the truth
    modelled: dict  # statistics of the fitted model's estimate against the same truth
    evaluations: int
    mismatch: float


def _to_search(model: ErrorModel) -> np.ndarray:
    values = model.as_dict()
    return np.array([special.logit(values[n]) if n in FRACTIONS else math.log(values[n]) for n in FITTED])


def _from_search(x: np.ndarray, base: ErrorModel) -> ErrorModel:
    return base.replace(**{n: float(special.expit(v) if n in FRACTIONS else math.exp(v)) for n, v in zip(FITTED, x)})


def mismatch(real: dict, modelled: dict) -> float:
    """Sum of squared, scaled differences between the statistics the model must match."""
    terms = [
        (modelled["correlation"] - real["correlation"]) / 0.02,
        math.log(modelled["error_length_km"] / real["error_length_km"]) / 0.1,
        (modelled["estimate_lag1"] - real["estimate_lag1"]) / 0.05,
        (modelled["error_lag1"] - real["error_lag1"]) / 0.05,
    ]
    for thr in map(str, THRESHOLDS):
        for kind in ("hit", "miss", "false"):
            terms.append(math.log(modelled["detection"][thr][kind] / real["detection"][thr][kind]) / 0.1)
    for r, m in zip(real["bins"], modelled["bins"]):
        terms.append(math.log((m["fraction"] + 1e-4) / (r["fraction"] + 1e-4)) / 0.2)
        if m["fraction"] > 0:  # truth given the estimate
            terms.append(math.log((m["truth_mean"] + 0.05) / (r["truth_mean"] + 0.05)) / 0.15)
            terms.append((m["truth_wet"] - r["truth_wet"]) / 0.05)
        else:
            terms.append(10.0)
    terms = np.nan_to_num(np.array(terms), nan=100.0, posinf=100.0, neginf=100.0)
    return float(np.sum(terms**2))


def random_error_curve(real: dict) -> dict[str, float]:
    """randomError = hypot(floor, coef · rate^exponent): floor from the dry bin, the rest a log-log fit of the
    RMS error (truth − estimate) on the mean estimate of the wet bins."""
    floor = real["bins"][0]["rms_error"]
    wet = [b for b in real["bins"][1:] if b["fraction"] > 0 and b["rms_error"] > floor]
    if len(wet) < 2:
        return {"random_error_floor_mmh": floor, "random_error_coef": 0.0, "random_error_exponent": 1.0}
    rate = np.log([b["estimate_mean"] for b in wet])
    growth = np.log([math.sqrt(b["rms_error"] ** 2 - floor**2) for b in wet])
    exponent, intercept = np.polyfit(rate, growth, 1)
    return {"random_error_floor_mmh": floor, "random_error_coef": math.exp(intercept), "random_error_exponent": max(exponent, 0.0)}


def _check_rain(values: np.ndarray, name: str) -> None:
    wet = int(np.sum(np.nan_to_num(values) >= THRESHOLDS[0]))
    if wet < MIN_WET_CELLS:
        raise DataError(name, f"only {wet} cells with rain >= {THRESHOLDS[0]} mm/h (need {MIN_WET_CELLS}): "
                              "nothing to fit the error model to")


def fit_error_model(
    estimate: np.ndarray, truth: np.ndarray, latitude: float, *, frame_minutes: float = 60.0,
    seeds: tuple[int, ...] = FIT_SEEDS, max_evaluations: int = 150, names: tuple[str, str] = ("estimate", "truth"),
    start: ErrorModel = START,
) -> FitResult:
    """Parameters under which `degrade(truth)` resembles `estimate`; both (time, lat, lon) mm/h at 0.1°.

    Refuses (DataError naming `names`) when either has almost no rain: the statistics would be undefined.
    """
    _check_rain(truth, names[1])
    _check_rain(estimate, names[0])
    real = pair_statistics(estimate, truth, latitude)
    base = start.replace(bias=1.0, **random_error_curve(real))
    evaluations = 0
    best = {"mismatch": math.inf}

    def simulate(model: ErrorModel) -> tuple[ErrorModel, dict]:
        runs = [degrade(truth, 0.1, model, seed, frame_minutes, latitude).precipitation.astype(np.float64)
                for seed in seeds]
        bias = real["estimate_mean"] / max(np.mean([np.nanmean(r[np.isfinite(truth)]) for r in runs]), 1e-12)
        each = [pair_statistics(r * bias, truth, latitude) for r in runs]
        modelled = mean_statistics(each)
        modelled["spread"] = {k: [min(e[k] for e in each), max(e[k] for e in each)] for k in SPREAD_KEYS}
        return model.replace(bias=float(bias)), modelled

    def objective(x: np.ndarray) -> float:
        nonlocal evaluations
        evaluations += 1
        model, modelled = simulate(_from_search(x, base))
        value = mismatch(real, modelled)
        if value < best["mismatch"]:
            best.update(mismatch=value, model=model, modelled=modelled)
        if evaluations % 25 == 0:
            log.info("error model fit: %d evaluations, best mismatch %.2f", evaluations, best["mismatch"])
        return value

    x0 = _to_search(base)
    simplex = np.vstack([x0, x0 + 0.25 * np.eye(len(x0))])
    optimize.minimize(objective, x0, method="Nelder-Mead",
                      options={"initial_simplex": simplex, "maxfev": max_evaluations, "xatol": 0.01, "fatol": 0.01})
    return FitResult(best["model"], real, best["modelled"], evaluations, best["mismatch"])
