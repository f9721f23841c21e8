"""A dataset view of the products: the best-available product of each valid time, as one xarray dataset.

A folder holds several cycles' files for one valid time, so a glob (`xarray.open_mfdataset`) would mix
them. `open_best` asks the catalog instead: for each half hour in [start, end] it takes the best product
(smallest lead, then newest cycle; `publish.best_available`) and concatenates them along `time` in the
file layout (time, realization, lat, lon). Each valid time keeps where it came from: `cycle_time` and
`lead` (half hours) as coordinates along `time`, beside the files' own `forecast_reference_time` and
`forecast_period`. Valid times without any product are left out and listed in `missing_valid_times`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import CatalogError, DataError
from nrt.io import atomic_path
from nrt.products.netcdf import ENSEMBLE, TIME_UNITS, epoch_minutes
from nrt.products.publish import best_available
from nrt.timeline import HALF_HOUR, isoformat, utc

# Global attributes that differ from file to file; per-time provenance is in the coordinates instead.
PER_FILE_ATTRS = ("history", "cycle_time", "valid_time", "lead_half_hours", "input_granules", "degraded")


def open_best(catalog, start: dt.datetime, end: dt.datetime, kind: str = ENSEMBLE) -> xr.Dataset:
    """The best-available `kind` product of every half hour from `start` to `end` (valid times), loaded.

    CatalogError when no valid time in the range has a product.
    """
    parts, cycles, leads, missing = [], [], [], []
    t = utc(start)
    while t <= utc(end):
        row = best_available(catalog, t, kind)
        if row is None:
            missing.append(t)
        else:
            with xr.open_dataset(row.path, engine="netcdf4", decode_times=False) as ds:
                parts.append(ds.load())
            cycles.append(epoch_minutes(row.cycle_time))
            leads.append(row.lead)
        t += HALF_HOUR
    if not parts:
        raise CatalogError(f"no {kind} product in the catalog between {isoformat(start)} and {isoformat(end)}")
    combined = xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override", combine_attrs="override")
    units = combined["time"].attrs.get("units", "minutes since 1970-01-01 00:00:00")
    combined = combined.assign_coords(
        cycle_time=("time", np.array(cycles), {"long_name": "cycle that made this valid time's product", "units": units,
                                               "calendar": "standard"}),
        lead=("time", np.array(leads, dtype=np.int32), {"long_name": "lead of the product, half hours from its forecast reference time",
                                                        "units": "1"}),
    )
    for name in PER_FILE_ATTRS:
        combined.attrs.pop(name, None)
    combined.attrs["title"] = f"nrt best-available {kind} products, {isoformat(start)} .. {isoformat(end)}"
    combined.attrs["missing_valid_times"] = " ".join(isoformat(m) for m in missing) or "none"
    return xr.decode_cf(combined)


def write_best(ds: xr.Dataset, path: str | Path) -> Path:
    """Write `open_best`'s dataset as NetCDF4 (time unlimited), through a temp name."""
    path = Path(path)
    if path.suffix != ".nc":
        raise DataError(path, "only NetCDF output (.nc) is supported")
    encoding = {name: {"_FillValue": None} for name in ds.coords}
    encoding.update({name: {"zlib": True, "complevel": 4} for name in ds.data_vars if ds[name].dtype.kind == "f"})
    for name in ("time", "time_bnds", "forecast_reference_time", "cycle_time"):  # one time unit, as CF wants for bounds
        if name in ds.variables:
            encoding[name] = {**encoding.get(name, {}), "units": TIME_UNITS, "calendar": "standard", "dtype": "float64"}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", unlimited_dims=["time"], encoding=encoding)
    return path
