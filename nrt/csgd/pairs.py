"""Read coincident IMERG / truth pairs (netCDF with `prcp`(lat, lon, time) or (time, lat, lon), mm/h) for a fit.

The reference set is ../shared/data/imerg-stageiv/20170801 (IMERG Early and Stage IV at 0.1°, hourly).
Every fault names the file: missing, unreadable, no `prcp`, grids or times that differ between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError

VARIABLE = "prcp"


@dataclass
class Pairs:
    rate: np.ndarray  # (time, lat, lon) IMERG mm/h
    truth: np.ndarray  # (time, lat, lon) mm/h
    times: np.ndarray  # datetime64
    cell_km: tuple[float, float]  # (dy, dx) at the domain's mean latitude
    step_minutes: float  # time step between frames
    files: tuple[str, str]


def read_prcp(path: Path) -> xr.DataArray:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with xr.open_dataset(path) as ds:
            if VARIABLE not in ds:
                raise DataError(path, f"no variable {VARIABLE!r} (has: {', '.join(map(str, ds.data_vars)) or 'none'})")
            da = ds[VARIABLE].load()
    except DataError:
        raise
    except Exception as exc:  # netCDF4 raises many types for a corrupt file
        raise DataError(path, f"cannot read as netCDF ({exc.__class__.__name__}: {exc})") from None
    if set(da.dims) != {"time", "lat", "lon"}:
        raise DataError(path, f"{VARIABLE} has dims {da.dims}, expected time, lat, lon")
    return da.transpose("time", "lat", "lon")


def read_pairs(imerg: str | Path, truth: str | Path, hours: list[int] | None = None) -> Pairs:
    """The pairs on their common grid; `hours` (UTC hours of day) selects a subset, e.g. a training block."""
    imerg, truth = Path(imerg), Path(truth)
    a, b = read_prcp(imerg), read_prcp(truth)
    for name in ("time", "lat", "lon"):
        if a[name].shape != b[name].shape or not np.array_equal(a[name].values, b[name].values):
            raise DataError(truth, f"its {name} axis differs from {imerg.name}'s")
    if hours is not None:
        keep = np.isin(a["time"].dt.hour.values, hours)
        if not keep.any():
            raise DataError(imerg, f"none of the hours {hours} is in the file")
        a, b = a.isel(time=keep), b.isel(time=keep)
    lat, lon = a["lat"].values.astype(np.float64), a["lon"].values.astype(np.float64)
    step = np.diff(a["time"].values).astype("timedelta64[s]").astype(float) / 60.0 if a.sizes["time"] > 1 else np.array([60.0])
    dy = abs(float(np.diff(lat).mean())) * 111.2
    dx = abs(float(np.diff(lon).mean())) * 111.2 * np.cos(np.deg2rad(lat.mean()))
    return Pairs(
        rate=a.values.astype(np.float64),
        truth=b.values.astype(np.float64),
        times=a["time"].values,
        cell_km=(dy, dx),
        step_minutes=float(np.median(step)),
        files=(str(imerg), str(truth)),
    )
