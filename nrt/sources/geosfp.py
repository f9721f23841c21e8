"""GEOS-FP hourly time-averaged fields (tavg1_2d_slv_Nx, tavg1_2d_flx_Nx) from the NCCS portal.

Names (the time stamp is the centre of the hourly average, HH:30):
- forecast: `GEOS.fp.fcst.tavg1_2d_slv_Nx.YYYYMMDD_HH+YYYYMMDD_HHMM.V01.nc4` under
  `forecast/Y%Y/M%m/D%d/H%H/` of the forecast initialised at YYYYMMDD_HH;
- assimilation: `GEOS.fp.asm.tavg1_2d_slv_Nx.YYYYMMDD_HHMM.V01.nc4` under `das/Y%Y/M%m/D%d/`.
NetCDF4, dims (time, lat, lon), 1152 × 721 (lon −180 … 179.6875 step 0.3125, lat −90 … 90 step 0.25).

The reader interpolates linearly in time to the half-hour's centre, then bilinearly onto the target grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import LatLonGrid
from nrt.sources import RemoteFile, field_stats, http, identity, time_text
from nrt.sources.base import FilePattern
from nrt.timeline import bridge_valid_times, geosfp_hours_for, geosfp_init_for, newest_imerg_start, utc

NAME = "geosfp"

# The one spelling of both names: forecast files (fcst) carry their initialisation, assimilation files (asm) do not.
FILE_PATTERN = FilePattern(
    "GEOS.fp.{stream}.{collection}.[{init:%Y%m%d_%H}+]{valid:%Y%m%d_%H%M}.{version}.nc4",
    stream="asm|fcst", collection=r"[a-z0-9]+_[a-z0-9_]+?_Nx", version=r"V\d{2}",
)

SLV = "tavg1_2d_slv_Nx"
FLX = "tavg1_2d_flx_Nx"
NLON, NLAT = 1152, 721
LON0, DLON = -180.0, 0.3125
LAT0, DLAT = -90.0, 0.25
AVERAGING = timedelta(hours=1)
PRECIP_VARIABLES = ("PRECTOT", "PRECCON")


# ---------------------------------------------------------------- naming and portal layout

def forecast_filename(collection: str, init: datetime, valid: datetime, version: str = "V01") -> str:
    return FILE_PATTERN.compose(stream="fcst", collection=collection, init=utc(init), valid=utc(valid), version=version)


def asm_filename(collection: str, valid: datetime, version: str = "V01") -> str:
    return FILE_PATTERN.compose(stream="asm", collection=collection, init=None, valid=utc(valid), version=version)


def forecast_folder(init: datetime) -> str:
    """`forecast/Y%Y/M%m/D%d/H%H` of the forecast initialised at `init`, relative to the geos-fp root."""
    return f"forecast/{utc(init):Y%Y/M%m/D%d/H%H}"


def asm_folder(valid: datetime) -> str:
    return f"das/{utc(valid):Y%Y/M%m/D%d}"


def parse_name(name: str) -> RemoteFile | None:
    fields = FILE_PATTERN.parse(name)
    if fields is None or (fields["stream"] == "fcst") != (fields["init"] is not None):
        return None
    valid = fields["valid"].replace(tzinfo=timezone.utc)
    init = fields["init"].replace(tzinfo=timezone.utc) if fields["init"] else None
    if valid.minute != 30 or (init is not None and init > valid):
        return None
    subdir = forecast_folder(init) if init else asm_folder(valid)
    return RemoteFile(NAME, name, fields["version"], valid - AVERAGING / 2, valid + AVERAGING / 2, subdir)


def collection_of(name: str) -> str | None:
    match = FILE_PATTERN.fullmatch(name)
    return match["collection"] if match else None


@dataclass(frozen=True)
class Settings:
    """What this module's functions use, taken from the config once by `settings(cfg)`."""

    url: str
    latency: timedelta  # from a forecast's start to its publication
    imerg_latency: timedelta  # the cycle's newest valid time S = floor(t - imerg_latency)
    variables: Mapping[str, tuple[str, ...]]  # by collection


def settings(cfg) -> Settings:
    src = cfg.sources.geosfp
    return Settings(src.url, timedelta(hours=cfg.timeline.geosfp_latency_hours),
                    timedelta(minutes=cfg.timeline.imerg_latency_minutes),
                    {SLV: tuple(src.slv_variables), FLX: tuple(src.flx_variables)})


def forecast_file(collection: str, hour: datetime, now: datetime, latency: timedelta) -> RemoteFile:
    """The file of the newest forecast published by `now` that holds the hourly average centred at `hour`."""
    init = geosfp_init_for(hour, now, latency)
    name = forecast_filename(collection, init, hour)
    return RemoteFile(NAME, name, "V01", hour - AVERAGING / 2, hour + AVERAGING / 2, forecast_folder(init))


def expected_files(s: Settings, t: datetime, latency: timedelta | None = None) -> list[RemoteFile]:
    """Forecast files bracketing every valid time S … t of the cycle at `t`, for each configured collection, from
    the newest forecast published `latency` (default `s.latency`) after its start."""
    t = utc(t)
    newest = newest_imerg_start(t, s.imerg_latency)
    hours = sorted({h for v in bridge_valid_times(newest, t) for h in geosfp_hours_for(v)})
    collections = [c for c, variables in s.variables.items() if variables]
    return [forecast_file(c, h, t, s.latency if latency is None else latency) for c in collections for h in hours]


def remote_url(s: Settings, rf: RemoteFile) -> str:
    return f"{s.url.rstrip('/')}/{rf.relative_path}"


# ---------------------------------------------------------------- reading

def _open(path: Path):
    import netCDF4

    http.require_signature(path, ("hdf5", "netcdf3"), "NetCDF")
    try:
        return netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise DataError(path, f"unreadable NetCDF (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None


def _axis(nc, path: Path, name: str, step: float) -> np.ndarray:
    if name not in nc.variables:
        raise DataError(path, f"no {name} coordinate: not a GEOS-FP file")
    axis = np.asarray(nc.variables[name][:], dtype=np.float64)
    diffs = np.diff(axis)
    if axis.ndim != 1 or axis.size < 2 or np.abs(diffs - step).max() > 1e-4:
        raise DataError(path, f"{name} is not the regular {step}° GEOS-FP axis")
    return axis


def _band(nc, path: Path, var: str, grid: LatLonGrid) -> xr.DataArray:
    """The variable on a lat band covering `grid` (one source row beyond each edge), longitudes wrapped."""
    if var not in nc.variables:
        raise DataError(path, f"no variable {var}")
    lat = _axis(nc, path, "lat", DLAT)
    lon = _axis(nc, path, "lon", DLON)
    v = nc.variables[var]
    if v.ndim != 3 or v.shape[1:] != (lat.size, lon.size):
        raise DataError(path, f"{var} has shape {v.shape}, expected (time, {lat.size}, {lon.size})")
    i0 = max(int(np.searchsorted(lat, grid.lats[0], side="right")) - 1, 0)
    i1 = min(int(np.searchsorted(lat, grid.lats[-1], side="left")) + 1, lat.size)
    raw = v[0, i0:i1, :]
    band = np.ma.filled(np.ma.asarray(raw, dtype=np.float64), np.nan)
    # Unwrap longitudes so the band runs continuously across the target grid, even over the dateline.
    j0 = int(np.floor((grid.lons[0] - lon[0]) / DLON))
    j1 = int(np.ceil((grid.lons[-1] - lon[0]) / DLON)) + 1
    columns = np.arange(j0, j1)
    return xr.DataArray(
        band[:, columns % lon.size],
        coords={"lat": lat[i0:i1], "lon": lon[0] + DLON * columns},
        dims=("lat", "lon"),
        attrs={k: str(v.getncattr(k)) for k in ("units", "long_name") if k in v.ncattrs()},
    )


def _files_for(files_by_time: Mapping[datetime, Path | Sequence[Path]], hour: datetime) -> list[Path]:
    for key, value in files_by_time.items():
        if utc(key) == hour:
            return [Path(value)] if isinstance(value, (str, Path)) else [Path(p) for p in value]
    raise DataError(f"GEOS-FP {hour:%Y-%m-%dT%H:%MZ}", "no file given for this hour")


def _check_time(path: Path, hour: datetime) -> None:
    rf = parse_name(path.name)
    if rf is not None and rf.start + AVERAGING / 2 != hour:
        raise DataError(path, f"file is valid at {time_text(rf.start + AVERAGING / 2)}, not {time_text(hour)}")


def read_geosfp(
    files_by_time: Mapping[datetime, Path | Sequence[Path]], valid: datetime, grid: LatLonGrid, variables: Sequence[str]
) -> xr.Dataset:
    """GEOS-FP `variables` at the centre of the half-hour starting at `valid`, on `grid` (lat, lon).

    `files_by_time` maps each hourly stamp (HH:30) to its file, or to its files when the variables come from
    several collections (slv and flx). Linear in time between the two bracketing hours, then bilinear in space.
    """
    valid = utc(valid)
    before, after = geosfp_hours_for(valid)
    weight = ((valid + timedelta(minutes=15)) - before) / (after - before)
    fields: dict[str, list[xr.DataArray]] = {var: [] for var in variables}
    for hour in (before, after):
        paths = _files_for(files_by_time, hour)
        found: dict[str, xr.DataArray] = {}
        for path in paths:
            _check_time(path, hour)
            with _open(path) as nc:
                for var in variables:
                    if var not in found and var in nc.variables:
                        found[var] = _band(nc, path, var, grid)
        for var in variables:
            if var not in found:
                raise DataError(paths[0], f"no variable {var} in the files for {time_text(hour)}")
            fields[var].append(found[var])
    data_vars = {}
    for var, (a, b) in fields.items():
        if a.shape != b.shape:
            raise DataError(f"GEOS-FP {var}", "the two hours have different grids")
        blended = (1 - weight) * a + weight * b.values
        # Bilinear on the regular lat/lon grid: xarray's interp (scipy) is exact for this case.
        regridded = blended.interp(lat=grid.lats, lon=grid.lons, method="linear")
        if not np.isfinite(regridded.values).all():
            raise DataError(f"GEOS-FP {var}", "fill values or a grid gap inside the domain")
        if var in PRECIP_VARIABLES:  # round-off next to exact zeros must not make rain negative (~ -1e-21)
            regridded = regridded.clip(min=0.0)
        data_vars[var] = (("lat", "lon"), regridded.values.astype(np.float32), a.attrs)
    return xr.Dataset(
        data_vars,
        coords={**grid.coords(), "time": ((), np.datetime64(valid.replace(tzinfo=None), "ns"))},
        attrs={"source": "GEOS-FP", "valid_centre": time_text(valid + timedelta(minutes=15))},
    )


def validate_settings(s: Settings) -> dict:
    return {"variables": s.variables}


def validate(path: str | Path, name: str | None = None, *, variables: Mapping[str, Sequence[str]]) -> None:
    """A downloaded file: NetCDF, a GEOS-FP name, the 1152 × 721 grid and the `variables` of its collection."""
    path = Path(path)
    name = name or path.name
    collection = collection_of(name)
    if collection is None:
        raise DataError(path, f"{name!r} is not a GEOS-FP file name")
    wanted = variables.get(collection, [])
    with _open(path) as nc:
        lat, lon = _axis(nc, path, "lat", DLAT), _axis(nc, path, "lon", DLON)
        if (lat.size, lon.size) != (NLAT, NLON):
            raise DataError(path, f"grid {lon.size} x {lat.size}, expected {NLON} x {NLAT}")
        for var in wanted:
            if var not in nc.variables:
                raise DataError(path, f"no variable {var}")
            values = np.ma.asarray(nc.variables[var][:])
            if np.ma.getmaskarray(values).all() or not np.isfinite(np.ma.filled(values, np.nan)).any():
                raise DataError(path, f"{var} is all fill")


def identify(path: str | Path) -> dict:
    """Statistics of the precipitation field (PRECTOT) where the file has one, else of its first 3-D variable."""
    path = Path(path)
    rf = parse_name(path.name)
    if rf is None:
        raise DataError(path, "not a GEOS-FP file name")
    with _open(path) as nc:
        gridded = [n for n, v in nc.variables.items() if v.ndim == 3]
        main = next((n for n in PRECIP_VARIABLES if n in nc.variables), gridded[0] if gridded else None)
        if main is None:
            raise DataError(path, "no (time, lat, lon) variable")
        values = np.ma.asarray(nc.variables[main][:])
    mask = np.ma.getmaskarray(values)
    data = np.ma.filled(values.astype(np.float64), np.nan)
    return identity(NAME, rf.version, rf, values, field_stats(data, ~mask & np.isfinite(data)), main, path,
                    collection=collection_of(path.name))
