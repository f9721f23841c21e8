"""Ensemble summaries: mean, median, p10, p90, exceedance probabilities, and accumulation files.

The statistics are a pure function of the ensemble (`summarize`). Accumulations need the ensemble-mean
fields of the preceding half hours too: `accumulations` is pure over a dict of those fields, and
`best_mean_fields` gathers them from the best-available summary files through the catalog.

Files. The summary holds the half hour's statistics; only the mean carries the standard name
`lwe_precipitation_rate` (so `ds.cf["lwe_precipitation_rate"]` is unambiguous), and the probabilities
follow IMPROVER: `probability_of_lwe_precipitation_rate_above_threshold` (time, threshold, lat, lon),
whose `threshold` coordinate carries `spp__relative_to_threshold = "greater_than"` (but not IMPROVER's
standard name on the threshold, which would clash with the mean's). Each H-hour
accumulation is its own file (`accumulation_<H>h` kind), because its time bounds are the H-hour window,
not the half hour: `time` is the end of the window and `time_bnds` its start and end. An accumulation
whose history is short says so in `missing_half_hours` and `comment`.

Definitions (per cell, over the members that are not NaN; NaN where no member is valid):
- quantiles use numpy's default linear interpolation between order statistics;
- P(rate > t) is the fraction of members strictly above `t` mm/h;
- the H-hour accumulation ending with valid time V is sum(mean rate × 0.5 h) over the 2H half hours
  V − (2H − 1)·30 min … V; it is NaN wherever any of those half hours is missing, so a gap never
  reads as "no rain".
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import LatLonGrid
from nrt.products.netcdf import SUMMARY, accumulation_kind, epoch_minutes, cf_coords, global_attrs, open_product, product_path, write_dataset
from nrt.timeline import HALF_HOUR, isoformat, utc

log = logging.getLogger("nrt.products")

MEAN_VAR = "precipitation_mean"
PROBABILITY_VAR = "probability_of_lwe_precipitation_rate_above_threshold"
ACCUMULATION_VAR = "precipitation_amount"
DEFAULT_THRESHOLDS = (1.0, 5.0, 10.0, 25.0)
DEFAULT_HOURS = (1, 3, 6)


def _rate(long_name: str, cell_methods: str, standard_name: bool = False) -> dict:
    return {
        **({"standard_name": "lwe_precipitation_rate"} if standard_name else {}),
        "long_name": long_name,
        "units": "mm h-1",
        "cell_methods": cell_methods,
        "grid_mapping": "crs",
    }


def exceedance(precip: np.ndarray, threshold: float) -> np.ndarray:
    """Fraction of valid members with rate > threshold, over axis 0 (member); NaN where none is valid."""
    valid = np.isfinite(precip)
    n = valid.sum(axis=0)
    above = (np.where(valid, precip, -np.inf) > threshold).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, above / np.maximum(n, 1), np.nan).astype(np.float32)


def summarize(precip: xr.DataArray | np.ndarray, thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> dict[str, np.ndarray]:
    """Member statistics of (member, ...) rates: mean, median, p10, p90 and P(> t) for each threshold."""
    values = np.asarray(precip, dtype=np.float32)
    finite = np.isfinite(values)
    partial = finite.any(axis=0) & ~finite.all(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells give NaN, which is what we want
        mean = np.nanmean(values, axis=0)
        # np.quantile is ~30x faster than np.nanquantile; it gives NaN wherever a member is NaN, so only
        # the rare cells with some members missing go through nanquantile.
        quantiles = np.quantile(values, [0.1, 0.5, 0.9], axis=0)
        if partial.any():
            quantiles[:, partial] = np.nanquantile(values[:, partial], [0.1, 0.5, 0.9], axis=0)
    p10, median, p90 = quantiles
    out = {"mean": mean, "median": median, "p10": p10, "p90": p90}
    for t in thresholds:
        out[f"p_gt_{float(t):g}"] = exceedance(values, float(t))
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def accumulations(
    mean_by_valid_time: Mapping[dt.datetime, np.ndarray], valid_time: dt.datetime, hours: Iterable[int] = DEFAULT_HOURS
) -> dict[int, np.ndarray]:
    """mm accumulated over the `h` hours that end with the half hour starting at `valid_time`, for each h.

    `mean_by_valid_time` maps half-hour starts to mean rates (mm/h, one 2-D field each). A missing half
    hour, or a NaN cell in one, makes that accumulation NaN there.
    """
    fields = {utc(t): np.asarray(v, dtype=np.float64) for t, v in mean_by_valid_time.items()}
    valid = utc(valid_time)
    if valid not in fields:
        raise ValueError("the mean field of valid_time itself is required")
    shape = fields[valid].shape
    out = {}
    for h in hours:
        steps = [valid - k * HALF_HOUR for k in range(2 * int(h))]
        total = np.zeros(shape)
        for t in steps:
            total += fields[t] * 0.5 if t in fields else np.nan
        out[int(h)] = total.astype(np.float32)
    return out


def missing_half_hours(mean_by_valid_time: Mapping[dt.datetime, np.ndarray], valid_time: dt.datetime, hours: int) -> list[dt.datetime]:
    """The half-hour starts of the `hours`-hour window ending with `valid_time` that have no field."""
    have = {utc(t) for t in mean_by_valid_time}
    valid = utc(valid_time)
    return sorted(t for t in (valid - k * HALF_HOUR for k in range(2 * int(hours))) if t not in have)


def best_mean_fields(catalog, valid_time: dt.datetime, hours: int, current_mean: np.ndarray) -> dict[dt.datetime, np.ndarray]:
    """`current_mean` at `valid_time` plus the best-available summary means of the preceding half hours.

    Half hours with no summary product, or whose file is unreadable or on another grid, are left out
    (so accumulations covering them are NaN) and logged.
    """
    valid = utc(valid_time)
    fields = {valid: np.asarray(current_mean)}
    for k in range(1, 2 * int(hours)):
        t = valid - k * HALF_HOUR
        row = catalog.best_product(t, kind=SUMMARY)
        if row is None:
            continue
        try:
            mean = open_product(row.path, MEAN_VAR)[MEAN_VAR].values[0]
        except DataError as exc:
            log.warning("accumulation skips %s: %s", t.isoformat(), exc)
            continue
        if mean.shape != fields[valid].shape:
            log.warning("accumulation skips %s: %s is on another grid %s", t.isoformat(), row.path, mean.shape)
            continue
        fields[t] = mean
    return fields


@dataclass(frozen=True)
class ProductStats:
    """Headline numbers of one summary for the daemon's gauges."""

    mean_rain_rate: float  # domain mean of the ensemble mean, mm/h (NaN when nothing is valid)
    max_exceedance: dict[float, float]  # threshold mm/h -> largest exceedance probability over the domain


def product_stats(stats: Mapping[str, np.ndarray], thresholds: Iterable[float]) -> ProductStats:
    def nanmax(a):
        a = np.asarray(a)
        return float(np.nanmax(a)) if np.isfinite(a).any() else float("nan")

    mean = np.asarray(stats["mean"])
    mean_rate = float(np.nanmean(mean)) if np.isfinite(mean).any() else float("nan")
    return ProductStats(mean_rate, {float(t): nanmax(stats[f"p_gt_{float(t):g}"]) for t in thresholds})


def summary_dataset(
    stats: Mapping[str, np.ndarray],
    *,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    attrs: Mapping | None = None,
) -> xr.Dataset:
    """The summary as a CF dataset (time=1, [threshold,] lat, lon) from `summarize` output."""
    coords, aux = cf_coords(grid, valid_time, forecast_reference_time)
    dims = ("time", "lat", "lon")

    def field(a):
        return np.asarray(a, dtype=np.float32).reshape((1, *grid.shape))

    thresholds = sorted(float(k.removeprefix("p_gt_")) for k in stats if k.startswith("p_gt_"))
    # IMPROVER also gives the threshold the diagnostic's standard name; here only the mean carries it, so
    # cf_xarray's ds.cf["lwe_precipitation_rate"] finds one variable. The long name says what it thresholds.
    coords["threshold"] = (
        "threshold",
        np.array(thresholds, dtype=np.float32),
        {"long_name": "threshold of lwe_precipitation_rate", "units": "mm h-1", "spp__relative_to_threshold": "greater_than"},
    )
    probability = np.stack([field(stats[f"p_gt_{t:g}"])[0] for t in thresholds]) if thresholds else np.zeros((0, *grid.shape), np.float32)
    data = {
        MEAN_VAR: (dims, field(stats["mean"]), _rate("ensemble mean precipitation rate", "time: mean realization: mean", standard_name=True)),
        "precipitation_median": (dims, field(stats["median"]), _rate("ensemble median precipitation rate", "time: mean realization: median")),
        "precipitation_p10": (dims, field(stats["p10"]), _rate("10th percentile over members of the precipitation rate", "time: mean")),
        "precipitation_p90": (dims, field(stats["p90"]), _rate("90th percentile over members of the precipitation rate", "time: mean")),
        PROBABILITY_VAR: (
            ("time", "threshold", "lat", "lon"),
            probability[None],
            {
                "long_name": PROBABILITY_VAR,
                "comment": "fraction of valid ensemble members whose precipitation rate exceeds the threshold",
                "units": "1",
                "valid_min": np.float32(0),
                "valid_max": np.float32(1),
                "grid_mapping": "crs",
            },
        ),
    }
    return xr.Dataset({**data, **aux}, coords=coords, attrs=global_attrs("nrt precipitation ensemble summary", attrs))


def write_summary(
    path: str | Path,
    stats: Mapping[str, np.ndarray],
    *,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    attrs: Mapping | None = None,
    quantize: bool = True,
    deflate_level: int = 4,
) -> Path:
    """Write the summary beside its ensemble (CF-1.8 NetCDF4, same coordinates and storage rules)."""
    ds = summary_dataset(stats, grid=grid, valid_time=valid_time, forecast_reference_time=forecast_reference_time, attrs=attrs)
    return write_dataset(Path(path), ds, _data_vars(ds), deflate_level=deflate_level, quantize=quantize, chunks={"threshold": 1, "time": 1})


def _data_vars(ds: xr.Dataset) -> list[str]:
    return [name for name in ds.data_vars if name not in ("time_bnds", "lat_bnds", "lon_bnds", "crs")]


def accumulation_dataset(
    amount: np.ndarray,
    hours: int,
    missing: Iterable[dt.datetime],
    *,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    attrs: Mapping | None = None,
) -> xr.Dataset:
    """The `hours`-hour accumulation (mm) ending with the half hour that starts at `valid_time`, as a CF dataset.

    `time` is the end of the window and `time_bnds` the window itself; `missing` lists the half hours
    with no best-available mean (the accumulation is NaN everywhere when any is missing).
    """
    valid, reference = utc(valid_time), utc(forecast_reference_time)
    end = valid + HALF_HOUR
    start = end - dt.timedelta(hours=int(hours))
    coords, aux = cf_coords(grid, valid, reference)
    time_attrs = {**coords["time"][2], "long_name": f"end of the {int(hours)} h accumulation window"}
    coords["time"] = ("time", [epoch_minutes(end)], time_attrs)
    coords["forecast_period"] = ("time", [(end - reference) / dt.timedelta(minutes=1)], coords["forecast_period"][2])
    aux["time_bnds"] = (("time", "bnds"), [[epoch_minutes(start), epoch_minutes(end)]])
    missing = sorted(utc(t) for t in missing)
    note = f"sum over the {2 * int(hours)} half hours {isoformat(start)} .. {isoformat(end)} of the best-available ensemble-mean rate x 0.5 h"
    if missing:
        note += f"; NaN because {len(missing)} of them had no product (history too short or a gap): see missing_half_hours"
    variable = (
        ("time", "lat", "lon"),
        np.asarray(amount, dtype=np.float32).reshape((1, *grid.shape)),
        {
            "standard_name": "lwe_thickness_of_precipitation_amount",
            "long_name": f"ensemble-mean precipitation accumulated over {int(hours)} h",
            "units": "mm",
            "cell_methods": "time: sum (interval: 30 minutes)",
            "grid_mapping": "crs",
            "missing_half_hours": " ".join(isoformat(t) for t in missing) or "none",
            "comment": note,
        },
    )
    meta = {**(attrs or {}), "accumulation_hours": int(hours), "valid_time": valid}
    return xr.Dataset({ACCUMULATION_VAR: variable, **aux}, coords=coords,
                      attrs=global_attrs(f"nrt {int(hours)} h precipitation accumulation", meta))


def write_accumulations(
    product_dir: Path,
    mean_by_valid_time: Mapping[dt.datetime, np.ndarray],
    hours: Iterable[int],
    *,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    cycle_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    attrs: Mapping | None = None,
    quantize: bool = True,
    deflate_level: int = 4,
    place: Callable[[Path], AbstractContextManager[Path]] = nullcontext,
) -> dict[int, Path]:
    """Write one `accumulation_<H>h` file per window ending with `valid_time`; returns {H: path}.

    A short history gives a file all NaN with the missing half hours named, logged once per window.
    `place(path)` yields the path to write each file to (the publisher's lease-checked staging).
    """
    totals = accumulations(mean_by_valid_time, valid_time, hours)
    written = {}
    for h, amount in totals.items():
        missing = missing_half_hours(mean_by_valid_time, valid_time, h)
        if missing:
            log.info("%d h accumulation ending %s: %d of %d half hours missing", h, isoformat(valid_time + HALF_HOUR), len(missing), 2 * h)
        ds = accumulation_dataset(amount, h, missing, grid=grid, valid_time=valid_time, forecast_reference_time=forecast_reference_time, attrs=attrs)
        path = product_path(product_dir, accumulation_kind(h), valid_time, cycle_time)
        with place(path) as target:
            write_dataset(target, ds, [ACCUMULATION_VAR], deflate_level=deflate_level, quantize=quantize, chunks={"time": 1})
        written[h] = path
    return written
