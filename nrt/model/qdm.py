"""Quantile delta mapping (QDM) of the precipitation condition onto the training input's distribution.

Cannon, Sobie & Murdock (2015, J. Climate 28, 6938), as Hess et al. (2025) use it on the coarse input of a
generative downscaler: a wet value x of the current field(s), at its non-exceedance probability tau among
them, becomes

    x' = F_train^-1(tau) * x / F_ref^-1(tau)

the training input's quantile times the relative change of x against the run-time input's own climatology
(the reference). What differs between the run-time input's climatology and the training input's (a new IMERG
version, a new region) is removed; the field's departure from its climatology is kept, multiplicatively, as
suits precipitation. Without a reference (`reference=None`, "the current field is its own climatology") the
relative change is 1 and QDM is plain quantile mapping: every field takes the training distribution,
however wet or dry it really is.

Zeros are handled explicitly: only wet values (>= the threshold stored with the quantiles) are mapped, with
distributions conditional on wet; dry cells and NaN stay as given, and mapped values stay at least the
threshold, so the wet fraction is the input's. The map keeps the cells' order: the ratio of two empirical
quantile curves can dip, so mapped values are made non-decreasing in x (a running maximum).

Written here rather than taken from xclim (`sdba.QuantileDeltaMapping`): that trains on and adjusts time
series of xarray objects and would be a large dependency, while this maps one field between two stored
quantile curves (the checkpoint's and the reference file's) with numpy interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

WET_MMH = 0.1
LEVELS = (*np.round(np.linspace(0.01, 0.99, 99), 4).tolist(), 0.995, 0.999)


@dataclass(frozen=True)
class WetQuantiles:
    """Quantiles of the wet values (>= `threshold` mm/h) of a precipitation sample, and its wet fraction."""

    threshold: float
    wet_fraction: float
    levels: tuple[float, ...]
    values: tuple[float, ...]  # mm/h at `levels`
    cells: int  # finite values in the sample

    def __post_init__(self):
        levels, values = np.asarray(self.levels, float), np.asarray(self.values, float)
        if self.threshold <= 0:
            raise ValueError(f"threshold {self.threshold} must be positive")
        if levels.ndim != 1 or levels.shape != values.shape or levels.size < 2:
            raise ValueError("levels and values must be equal-length lists of at least 2")
        if not (np.all(np.diff(levels) > 0) and levels[0] > 0 and levels[-1] < 1):
            raise ValueError("levels must increase strictly inside (0, 1)")
        if not (np.all(np.isfinite(values)) and np.all(np.diff(values) >= 0) and values[0] >= self.threshold):
            raise ValueError(f"values must be finite, non-decreasing and at least the threshold {self.threshold}")

    def quantile(self, tau: np.ndarray) -> np.ndarray:
        """F^-1(tau), linear between levels, held at the end values outside them."""
        return np.interp(tau, self.levels, self.values)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "wet_fraction": self.wet_fraction, "levels": list(self.levels),
                "values": list(self.values), "cells": self.cells}

    @classmethod
    def from_dict(cls, data: dict) -> WetQuantiles:
        """Raises ValueError (or KeyError, TypeError) on an incomplete or inconsistent description."""
        return cls(float(data["threshold"]), float(data["wet_fraction"]), tuple(float(v) for v in data["levels"]),
                   tuple(float(v) for v in data["values"]), int(data["cells"]))


def wet_quantiles(sample: np.ndarray, threshold: float = WET_MMH, levels=LEVELS) -> WetQuantiles:
    """`WetQuantiles` of the finite values of `sample` (any shape, mm/h)."""
    values = np.asarray(sample, dtype=np.float64)
    values = values[np.isfinite(values)]
    wet = values[values >= threshold]
    if wet.size == 0:
        raise ValueError(f"no value reaches {threshold} mm/h: no wet distribution to describe")
    return WetQuantiles(float(threshold), float(wet.size / values.size), tuple(float(v) for v in levels),
                        tuple(float(v) for v in np.quantile(wet, levels)), int(values.size))


def qdm(precip: np.ndarray, target: WetQuantiles, reference: WetQuantiles | None = None) -> np.ndarray:
    """`precip` (any shape, mm/h) with its wet values mapped onto `target`, relative to `reference`.

    The current distribution is that of the wet values of `precip` itself (all members together);
    tau = (rank - 1/2) / n, ties sharing their mean rank.
    """
    if reference is not None and reference.threshold != target.threshold:
        raise ValueError(f"reference threshold {reference.threshold} differs from the target's {target.threshold}")
    out = np.array(precip, dtype=np.float32, copy=True)
    x = np.asarray(precip, dtype=np.float64)
    wet = np.isfinite(x) & (x >= target.threshold)
    if not wet.any():
        return out
    values = x[wet]
    tau = (rankdata(values) - 0.5) / values.size
    mapped = target.quantile(tau)
    if reference is not None:
        mapped = mapped * values / reference.quantile(tau)
    order = np.argsort(values, kind="stable")
    mapped[order] = np.maximum.accumulate(np.maximum(mapped[order], target.threshold))
    out[wet] = mapped
    return out


def training_input_quantiles(precip_channel: np.ndarray, dataset: str, dataset_sha256: str) -> dict:
    """The checkpoint JSON's `input_quantiles`: `WetQuantiles` of the training set's precipitation channel
    (physical mm/h at 0.05°, as the network sees it before the transform), and where they came from."""
    return {"precip": wet_quantiles(precip_channel).to_dict(),
            "source": f"training set {dataset} (sha256 {dataset_sha256}): every finite cell of channel precip"}
