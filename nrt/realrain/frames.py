"""The common shape of every real-rain reader's output: rain rate (mm/h) on the product's own grid.

A frame is an xarray.DataArray (time, y, x) of rain rate in mm/h, NaN where the product has no data,
with 2-D `lat`/`lon` coordinates computed from the product's projection and times as UTC datetime64.
`time` is the START of the period each value stands for (an accumulation's [end - period, end), or a
rate's [scan, scan + cadence)), matching the system's half hours, which are named by their start.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import xarray as xr

#: The Z–R relation used for every reflectivity source (Marshall and Palmer 1948): Z = A R^B.
MARSHALL_PALMER = (200.0, 1.6)


def dbz_to_rate(dbz: np.ndarray, no_echo_dbz: float) -> np.ndarray:
    """Rain rate (mm/h) from reflectivity (dBZ) with Marshall–Palmer Z = 200 R^1.6; `no_echo_dbz` and below is 0.

    Hand-written because it is one line; pysteps.utils.conversion.to_rainrate does the same but needs its
    metadata dictionary and thresholds in rain-rate units.
    """
    a, b = MARSHALL_PALMER
    rate = (10.0 ** (dbz / 10.0) / a) ** (1.0 / b)
    return np.where(dbz <= no_echo_dbz, 0.0, rate)


def projected_lonlat(proj: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D lon/lat (degrees) of the cell centres x (columns) × y (rows) in the projection `proj` (PROJ or WKT).

    Points the projection cannot invert (off a geostationary disk) come back NaN.
    """
    from pyproj import CRS, Transformer

    to_lonlat = Transformer.from_crs(CRS.from_user_input(proj), CRS.from_epsg(4326), always_xy=True)
    xx, yy = np.meshgrid(x, y)
    lon, lat = to_lonlat.transform(xx, yy)
    bad = ~(np.isfinite(lon) & np.isfinite(lat)) | (np.abs(lat) > 90)
    return np.where(bad, np.nan, lon), np.where(bad, np.nan, lat)


def utc_naive(t: datetime) -> np.datetime64:
    """datetime64[ns] of an aware datetime in UTC (xarray's time type; naive datetimes are refused)."""
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t!r}")
    return np.datetime64(t.astimezone(timezone.utc).replace(tzinfo=None), "ns")


def parse_utc(text: str, fmt: str) -> datetime:
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)


def rain_rate_frames(
    rate: np.ndarray,
    starts: list[datetime],
    lon: np.ndarray,
    lat: np.ndarray,
    *,
    source: str,
    period: timedelta,
    conversion: str,
    files: list[str],
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    crs: str = "EPSG:4326",
    **attrs,
) -> xr.DataArray:
    """Wrap (time, y, x) rain rates in mm/h with CF attributes; `starts` are the periods' start times (aware UTC)."""
    rate = np.asarray(rate, dtype=np.float32)
    if rate.ndim == 2:
        rate = rate[None]
    ny, nx = rate.shape[1:]
    coords = {
        "time": ("time", [utc_naive(t) for t in starts],
                 {"standard_name": "time", "long_name": f"start of the {period_text(period)} period (UTC)"}),
        "lat": (("y", "x"), np.asarray(lat), {"standard_name": "latitude", "units": "degrees_north"}),
        "lon": (("y", "x"), np.asarray(lon), {"standard_name": "longitude", "units": "degrees_east"}),
        "y": ("y", np.arange(ny) if y is None else y, {"long_name": "row (north to south)" if y is None else "projection y"}),
        "x": ("x", np.arange(nx) if x is None else x, {"long_name": "column" if x is None else "projection x"}),
    }
    return xr.DataArray(
        rate,
        dims=("time", "y", "x"),
        coords=coords,
        name="rain_rate",
        attrs={
            "standard_name": "rainfall_rate",
            "long_name": f"{source} rain rate",
            "units": "mm h-1",
            "source": source,
            "period_minutes": period.total_seconds() / 60,
            "conversion": conversion,
            "crs": crs,
            "files": "; ".join(files),
            "missing": "NaN where the product has no data",
            **attrs,
        },
    )


def period_text(period: timedelta) -> str:
    minutes = int(period.total_seconds() // 60)
    return f"{minutes}-min"
