"""The nowcast's CF output: the precipitation ensemble and the motion as `xr.DataArray`s on the input's grid."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import xarray as xr

from nrt.grids import KM_PER_DEGREE, LatLonGrid
from nrt.nowcast.methods import TIMESTEP_MINUTES


def space_coords(frames: xr.DataArray, grid: LatLonGrid) -> dict:
    """The frames' own lat/lon values (so results align with the input exactly) with CF attributes."""
    return {name: (name, frames[name].values, attrs) for name, (_, _, attrs) in grid.coords().items()}


def as_dataarray(forecast, space, newest_time, leads, requested, chosen, reasons, settings, seed) -> xr.DataArray:
    valid = [newest_time + int(lead) * timedelta(minutes=TIMESTEP_MINUTES) for lead in leads]
    coords = space | {
        "member": ("member", np.arange(forecast.shape[0], dtype=np.int32), {"long_name": "ensemble member"}),
        "time": ("time", pd.DatetimeIndex(valid).tz_convert(None).values, {"standard_name": "time", "long_name": "valid time (start of the half hour)"}),
        "forecast_period": ("time", (leads * TIMESTEP_MINUTES).astype(np.int32), {"standard_name": "forecast_period", "units": "minutes"}),
        "forecast_reference_time": ((), pd.Timestamp(newest_time).tz_convert(None).to_datetime64(), {"standard_name": "forecast_reference_time", "long_name": "start of the newest input granule"}),
    }
    return xr.DataArray(
        forecast,
        dims=("member", "time", "lat", "lon"),
        coords=coords,
        name="precipitation",
        attrs={
            "units": "mm h-1",
            "standard_name": "lwe_precipitation_rate",
            "long_name": "nowcast precipitation rate",
            "nowcast_method_requested": requested,
            "nowcast_method": chosen,
            "nowcast_motion": settings.motion,
            "nowcast_degraded": ",".join(reasons),
            "nowcast_seed": int(seed),
            "nowcast_threshold_mmh": float(settings.rain_threshold_mmh),
        },
    )


def velocity_dataarray(velocity: np.ndarray, grid: LatLonGrid, space: dict) -> xr.DataArray:
    seconds = TIMESTEP_MINUTES * 60
    dx_m = 1000 * KM_PER_DEGREE * grid.res * np.cos(np.radians(grid.lats))[:, np.newaxis]
    dy_m = 1000 * KM_PER_DEGREE * grid.res
    eastward, northward = velocity[0] * dx_m / seconds, velocity[1] * dy_m / seconds
    return xr.DataArray(
        np.stack([eastward, northward]).astype(np.float32),
        dims=("component", "lat", "lon"),
        coords=space | {"component": ("component", ["eastward", "northward"])},
        name="motion",
        attrs={"units": "m s-1", "long_name": "advection velocity of the rain field"},
    )
