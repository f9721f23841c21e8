"""Read a coincident pair of gridded files (an estimate and its truth, e.g. IMERG Early and Stage IV at 0.1°)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from nrt.errors import DataError


@dataclass(frozen=True)
class Pair:
    estimate: np.ndarray  # (time, lat, lon) mm/h
    truth: np.ndarray
    latitude: float  # mean latitude, for the east-west size of a cell


def _read(path: str | os.PathLike, variable: str):
    import xarray as xr

    try:
        with xr.open_dataset(path) as ds:
            if variable not in ds:
                raise DataError(path, f"no variable {variable!r} (has {', '.join(map(str, ds.data_vars))})")
            da = ds[variable]
            if set(da.dims) != {"time", "lat", "lon"}:
                raise DataError(path, f"{variable!r} has dimensions {da.dims}, expected time, lat and lon")
            da = da.transpose("time", "lat", "lon").load()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read as netCDF: {exc}") from None
    return da


def read_pair(estimate_path, truth_path, variable: str = "prcp") -> Pair:
    """Both files' `variable` as (time, lat, lon) float64, checked to share one 0.1° grid and the same times."""
    est, tru = _read(estimate_path, variable), _read(truth_path, variable)
    if est.shape != tru.shape:
        raise DataError(truth_path, f"shape {tru.shape} differs from {estimate_path}'s {est.shape}")
    for name in ("time", "lat", "lon"):
        a, b = est[name].values, tru[name].values
        same = np.array_equal(a, b) if name == "time" else np.allclose(a, b, atol=1e-3)
        if not same:
            raise DataError(truth_path, f"its {name} coordinate differs from {estimate_path}'s")
    lat, lon = est["lat"].values.astype(np.float64), est["lon"].values.astype(np.float64)
    for name, axis in (("lat", lat), ("lon", lon)):
        res = float(np.median(np.abs(np.diff(axis)))) if axis.size > 1 else 0.1
        if abs(res - 0.1) > 0.005:  # float32 coordinates: 0.1016 still means 0.1
            raise DataError(estimate_path, f"{name} spacing {res:.4f}°, the error model is fit at IMERG's 0.1°")
    return Pair(estimate=est.values.astype(np.float64), truth=tru.values.astype(np.float64), latitude=float(lat.mean()))
