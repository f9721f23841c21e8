"""Readers for the products pysteps' importers decode (NWC SAF CRR, KNMI, MeteoSwiss, RMI ODIM, FMI) and BoM's CF netCDF.

Each reads one file into a one-frame rain-rate array (see `nrt.realrain.frames`). pysteps gives values and
the projection; the file name gives the time (pysteps' own archive logic does the same).
"""

from __future__ import annotations

import contextlib
import io
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.realrain.frames import MARSHALL_PALMER, dbz_to_rate, parse_utc, projected_lonlat, rain_rate_frames


def pysteps_import(path: Path, importer: str, **kwargs) -> tuple[np.ndarray, dict]:
    """(values with NaN for no data, metadata) from a pysteps importer; any failure is one DataError line."""
    with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints a banner on import
        from pysteps.io import importers
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            values, _, metadata = getattr(importers, importer)(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - the importers raise anything from OSError to KeyError on a bad file
        raise DataError(path, f"not a readable product for pysteps.io.{importer} ({type(exc).__name__}: {exc})") from None
    return np.ma.filled(np.ma.masked_invalid(values), np.nan).astype(np.float64), metadata


@lru_cache(maxsize=16)
def _grid(proj: str, x1: float, y2: float, dx: float, dy: float, nx: int, ny: int):
    """Cell-centre projection coordinates and lon/lat of a north-up grid whose top-left corner is (x1, y2)."""
    x = x1 + dx * (np.arange(nx) + 0.5)
    y = y2 - dy * (np.arange(ny) + 0.5)
    lon, lat = projected_lonlat(proj, x, y)
    return x, y, lon, lat


def frames_from_pysteps(path: Path, values: np.ndarray, metadata: dict, rate: np.ndarray, *, source: str,
                        start, period: timedelta, conversion: str, **attrs) -> xr.DataArray:
    if metadata.get("yorigin", "upper") != "upper":
        raise DataError(path, "expected rows north to south (yorigin 'upper')")
    ny, nx = values.shape
    proj, scale = metadata["projection"], 1.0
    if metadata.get("cartesian_unit") == "km":  # KNMI: PROJ wants the ellipsoid in metres, so coordinates too
        proj, scale = re.sub(r"\+([ab])=([\d.]+)", lambda m: f"+{m[1]}={float(m[2]) * 1000:.3f}", proj), 1000.0
    x, y, lon, lat = _grid(proj, scale * float(metadata["x1"]), scale * float(metadata["y2"]),
                           scale * float(metadata["xpixelsize"]), scale * float(metadata["ypixelsize"]), nx, ny)
    rate = np.where(np.isfinite(lat), rate, np.nan)
    return rain_rate_frames(rate, [start], lon, lat, source=source, period=period, conversion=conversion,
                            files=[path.name], x=x, y=y, crs=proj,
                            institution=str(metadata.get("institution", "")), **attrs)


def _time_in_name(path: Path, pattern: str, fmt: str):
    match = re.search(pattern, path.name)
    if not match:
        raise DataError(path, f"no time in the file name (expected {pattern})")
    return parse_utc(match.group(1), fmt)


def _accumulation(path: Path, importer: str, source: str, minutes: int, name_pattern: str, name_fmt: str,
                  **kwargs) -> xr.DataArray:
    """An accumulation (mm) over `minutes` ending at the time in the file name, as a rate."""
    values, metadata = pysteps_import(path, importer, **kwargs)
    if metadata.get("unit") != "mm" or float(metadata.get("accutime") or minutes) != minutes:
        raise DataError(path, f"expected {minutes}-min accumulations in mm, got unit={metadata.get('unit')} "
                              f"accutime={metadata.get('accutime')}")
    end = _time_in_name(path, name_pattern, name_fmt)
    period = timedelta(minutes=minutes)
    return frames_from_pysteps(path, values, metadata, values * (60.0 / minutes), source=source, start=end - period,
                               period=period, conversion=f"{minutes}-min accumulation (mm) x {60 / minutes:g}")


def read_bom(path: Path) -> xr.DataArray:
    """BoM Rainfields 10-min accumulation (prcp-c10, CF netCDF), read with netCDF4 and its CF grid mapping.

    Not pysteps' import_bom_rf3: it walks the coordinate arrays element by element in Python (about 80 s a
    file on the shared machine, against 0.05 s here).
    """
    import netCDF4
    from pyproj import CRS

    path = Path(path)
    try:
        with netCDF4.Dataset(path) as nc:
            amount = nc["precipitation"]
            if amount.units != "kg m-2":
                raise DataError(path, f"precipitation in {amount.units!r}, expected kg m-2 (mm)")
            values = np.ma.filled(amount[:].astype(np.float64), np.nan)
            x_km, y_km = np.asarray(nc["x"][:], np.float64), np.asarray(nc["y"][:], np.float64)
            crs = CRS.from_cf({k: nc["proj"].getncattr(k) for k in nc["proj"].ncattrs()})
            start, end = (datetime.fromtimestamp(int(nc[v][:]), timezone.utc) for v in ("start_time", "valid_time"))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - netCDF4 raises OSError, KeyError, AttributeError... on a bad file
        raise DataError(path, f"not a readable BoM prcp-c10 netCDF ({type(exc).__name__}: {exc})") from None
    period = end - start
    if period != timedelta(minutes=10):
        raise DataError(path, f"accumulation over {period}, expected 10 min")
    lon, lat = _bom_lonlat(crs.to_wkt(), tuple(x_km), tuple(y_km))
    return rain_rate_frames(values * 6.0, [start], lon, lat, source="BoM prcp-c10", period=period,
                            conversion="10-min accumulation (mm) x 6", files=[path.name], x=x_km * 1000, y=y_km * 1000,
                            crs=crs.to_wkt(), institution="Commonwealth of Australia, Bureau of Meteorology")


@lru_cache(maxsize=4)
def _bom_lonlat(crs_wkt: str, x_km: tuple, y_km: tuple) -> tuple[np.ndarray, np.ndarray]:
    return projected_lonlat(crs_wkt, 1000 * np.asarray(x_km), 1000 * np.asarray(y_km))


def read_knmi(path: Path) -> xr.DataArray:
    """KNMI 5-min radar accumulation (HDF5), file named by the period's end."""
    return _accumulation(Path(path), "import_knmi_hdf5", "KNMI RAD_NL25_RAP_5min", 5, r"_(\d{12})\.h5$", "%Y%m%d%H%M")


def read_mch(path: Path) -> xr.DataArray:
    """MeteoSwiss AQC 5-min accumulation (GIF), file named AQCyyDDDHHMM… by the period's end."""
    return _accumulation(Path(path), "import_mch_gif", "MeteoSwiss AQC", 5, r"^AQC(\d{9})", "%y%j%H%M",
                         product="AQC", unit="mm", accutime=5.0)


def _rate(path: Path, importer: str, source: str, cadence_minutes: int, name_pattern: str, name_fmt: str,
          **kwargs) -> xr.DataArray:
    values, metadata = pysteps_import(path, importer, **kwargs)
    if metadata.get("unit") != "mm/h":
        raise DataError(path, f"expected a rain rate in mm/h, got unit={metadata.get('unit')}")
    return frames_from_pysteps(path, values, metadata, values, source=source,
                               start=_time_in_name(path, name_pattern, name_fmt),
                               period=timedelta(minutes=cadence_minutes),
                               conversion=f"instantaneous rate (mm/h), held for the {cadence_minutes}-min cadence")


def read_saf_crr(path: Path) -> xr.DataArray:
    """NWC SAF Convective Rainfall Rate `crr_intensity` (mm/h), every 15 min, named by the nominal slot time."""
    return _rate(Path(path), "import_saf_crri", "NWC SAF CRR", 15, r"_(\d{8}T\d{6})Z\.nc$", "%Y%m%dT%H%M%S")


def read_rmi(path: Path) -> xr.DataArray:
    """RMI (Belgium) ODIM HDF5 composite rain rate (mm/h), every 5 min, named by the scan time."""
    return _rate(Path(path), "import_odim_hdf5", "RMI radqpe", 5, r"^(\d{14})\.", "%Y%m%d%H%M%S")


def read_fmi(path: Path) -> xr.DataArray:
    """FMI composite reflectivity (gzipped PGM, dBZ) every 5 min, as rain rate by Marshall–Palmer Z = 200 R^1.6."""
    path = Path(path)
    values, metadata = pysteps_import(path, "import_fmi_pgm", gzipped=True)
    if metadata.get("unit") != "dBZ":
        raise DataError(path, f"expected reflectivity in dBZ, got unit={metadata.get('unit')}")
    a, b = MARSHALL_PALMER
    no_echo = float(metadata["zerovalue"])
    return frames_from_pysteps(path, values, metadata, dbz_to_rate(values, no_echo), source="FMI composite dBZ",
                               start=_time_in_name(path, r"^(\d{12})_", "%Y%m%d%H%M"), period=timedelta(minutes=5),
                               conversion=f"reflectivity (dBZ) by Z = {a:g} R^{b:g} (Marshall-Palmer); {no_echo:g} dBZ (no echo) is 0",
                               z_r_relation=f"Z = {a:g} R^{b:g}")
