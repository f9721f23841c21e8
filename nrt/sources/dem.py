"""The static DEM: an ETOPO 2022 style netCDF (`lat`, `lon`, `z`) or a GeoTIFF (e.g. GMTED2010 tiles),
averaged onto the 0.05° target grid with the elevation standard deviation as a second field, and cached.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import LatLonGrid, target_grid
from nrt.io import atomic_path
from nrt.sources import RemoteFile, field_stats, http, significant

NAME = "dem"

FILE_PATTERN = re.compile(r"(?P<stem>[A-Za-z0-9][\w.+-]*)\.(?P<ext>nc|nc4|tif|tiff)")

#: A static file has no time span; the catalog still needs one, so it is pinned to the epoch.
STATIC = datetime(1970, 1, 1, tzinfo=timezone.utc)
LAT_NAMES = ("lat", "latitude", "y")
LON_NAMES = ("lon", "longitude", "x")
Z_NAMES = ("z", "elevation", "Band1")
_ROWS_PER_BLOCK = 512
_SIGNATURES = ("hdf5", "netcdf3", "tiff")


def parse_name(name: str) -> RemoteFile | None:
    if not FILE_PATTERN.fullmatch(name):
        return None
    return RemoteFile(NAME, name, "static", STATIC, STATIC, "")


@dataclass(frozen=True)
class Settings:
    """What this module's functions use, taken from the config once by `settings(cfg)`."""

    url: str  # a URL or a local path
    grid: LatLonGrid  # validate: the DEM must cover every cell


def settings(cfg) -> Settings:
    return Settings(cfg.sources.dem.url, target_grid(cfg.domain.box()))


def expected_files(s: Settings, t: datetime) -> list[RemoteFile]:
    """The one configured DEM file (a URL or a local path), whatever the time."""
    name = Path(urlsplit(s.url).path).name
    rf = parse_name(name)
    if rf is None:
        raise DataError(s.url, "DEM must be a .nc, .nc4, .tif or .tiff file")
    return [rf]


def remote_url(s: Settings, rf: RemoteFile) -> str:
    return s.url


def _is_tiff(path: Path) -> bool:
    return http.has_signature(path, ("tiff",))


# ---------------------------------------------------------------- reading

def _pick(names, candidates, path, what):
    for name in candidates:
        if name in names:
            return name
    raise DataError(path, f"no {what} variable (looked for {', '.join(candidates)})")


def _read_netcdf_window(path: Path, grid: LatLonGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import netCDF4

    west, south, east, north = grid.extent
    try:
        with netCDF4.Dataset(path, "r") as nc:
            names = nc.variables.keys()
            lat = np.asarray(nc.variables[_pick(names, LAT_NAMES, path, "latitude")][:], np.float64)
            lon = np.asarray(nc.variables[_pick(names, LON_NAMES, path, "longitude")][:], np.float64)
            z = nc.variables[_pick(names, Z_NAMES, path, "elevation")]
            if z.shape != (lat.size, lon.size):
                raise DataError(path, f"elevation shape {z.shape} is not (lat {lat.size}, lon {lon.size})")
            rows = np.flatnonzero((lat >= south) & (lat < north))
            cols = np.flatnonzero((lon >= west) & (lon < east))
            if rows.size == 0 or cols.size == 0:
                raise DataError(path, f"DEM does not cover the grid extent {grid.extent}")
            block = np.ma.asarray(z[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], dtype=np.float64)
    except OSError as exc:
        raise DataError(path, f"unreadable NetCDF (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None
    return np.ma.filled(block, np.nan), lat[rows[0] : rows[-1] + 1], lon[cols[0] : cols[-1] + 1]


def _tiff_geometry(page, path: Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Cell-centre latitudes and longitudes of a north-up geographic GeoTIFF, and its nodata value."""
    scale = page.tags.get("ModelPixelScaleTag")
    tie = page.tags.get("ModelTiepointTag")
    if scale is None or tie is None:
        raise DataError(path, "GeoTIFF without ModelPixelScaleTag/ModelTiepointTag georeferencing")
    sx, sy = float(scale.value[0]), float(scale.value[1])
    ti, tj, _, tx, ty, _ = (float(v) for v in tie.value[:6])
    keys = page.geotiff_tags or {}
    point = int(keys.get("GTRasterTypeGeoKey", 1)) == 2  # RasterPixelIsPoint: the tie point is a cell centre
    half = 0.0 if point else 0.5
    nrow, ncol = page.shape[:2]
    lons = tx + (np.arange(ncol) - ti + half) * sx
    lats = ty - (np.arange(nrow) - tj + half) * sy
    nodata_tag = page.tags.get("GDAL_NODATA")
    nodata = float(str(nodata_tag.value).strip("\x00 ")) if nodata_tag is not None else None
    return lats, lons, nodata


def _read_tiff_window(path: Path, grid: LatLonGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import tifffile

    west, south, east, north = grid.extent
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            lats, lons, nodata = _tiff_geometry(page, path)
            rows = np.flatnonzero((lats >= south) & (lats < north))
            cols = np.flatnonzero((lons >= west) & (lons < east))
            if rows.size == 0 or cols.size == 0:
                raise DataError(path, f"DEM does not cover the grid extent {grid.extent}")
            data = page.asarray()
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise DataError(path, f"unreadable GeoTIFF: {str(exc).splitlines()[0][:160]}") from None
    block = data[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    if nodata is not None:
        block[block == nodata] = np.nan
    return block, lats[rows[0] : rows[-1] + 1], lons[cols[0] : cols[-1] + 1]


def read_window(path: str | Path, grid: LatLonGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DEM cells whose centres fall inside `grid`'s extent: (z, lat, lon), NaN for fill."""
    path = Path(path)
    http.require_signature(path, _SIGNATURES, "a NetCDF or GeoTIFF DEM")
    return _read_tiff_window(path, grid) if _is_tiff(path) else _read_netcdf_window(path, grid)


def block_average(z: np.ndarray, lat: np.ndarray, lon: np.ndarray, grid: LatLonGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation and count of the source cells whose centres fall in each grid cell.

    Written with bincount because pyresample's bucket resampler needs dask; any source resolution and
    alignment works, not only integer divisors of the grid spacing.
    """
    west, south, _, _ = grid.extent
    row = np.floor((lat - south) / grid.res + 1e-9).astype(np.int64)
    col = np.floor((lon - west) / grid.res + 1e-9).astype(np.int64)
    rr, cc = np.meshgrid(row, col, indexing="ij")
    ok = np.isfinite(z) & (rr >= 0) & (rr < grid.nlat) & (cc >= 0) & (cc < grid.nlon)
    cell = (rr * grid.nlon + cc)[ok]
    values = z[ok]
    size = grid.nlat * grid.nlon
    count = np.bincount(cell, minlength=size)
    total = np.bincount(cell, weights=values, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        spread = np.bincount(cell, weights=(values - mean[cell]) ** 2, minlength=size)
        std = np.sqrt(spread / count)
    return mean.reshape(grid.shape), std.reshape(grid.shape), count.reshape(grid.shape)


def _cache_file(path: Path, grid: LatLonGrid, cache_dir: Path) -> Path:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{grid.res}|{grid.lat0}|{grid.lon0}|{grid.nlat}|{grid.nlon}"
    return Path(cache_dir) / f"dem_{hashlib.sha256(key.encode()).hexdigest()[:20]}.nc"


def _compute(path: Path, grid: LatLonGrid) -> xr.Dataset:
    z, lat, lon = read_window(path, grid)
    mean, std, count = block_average(z, lat, lon, grid)
    empty = int((count == 0).sum())
    if empty:
        raise DataError(path, f"no DEM data in {empty} of {count.size} grid cells")
    return xr.Dataset(
        {
            "elevation": (("lat", "lon"), mean.astype(np.float32), {
                "units": "m", "standard_name": "height_above_mean_sea_level", "long_name": "mean elevation in the cell",
            }),
            "elevation_std": (("lat", "lon"), std.astype(np.float32), {
                "units": "m", "long_name": "standard deviation of the source elevations in the cell",
            }),
        },
        coords=grid.coords(),
        attrs={"source": path.name, "method": "block average of source cells by cell-centre location"},
    )


def load_dem(path: str | Path, grid: LatLonGrid, cache_dir: str | Path | None = None) -> xr.Dataset:
    """Elevation and its standard deviation on `grid`; cached in `cache_dir` (keyed by file and grid)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    if cache_dir is None:
        return _compute(path, grid)
    cached = _cache_file(path, grid, Path(cache_dir))
    if cached.is_file():
        try:
            return xr.load_dataset(cached, engine="netcdf4")
        except (OSError, ValueError):
            cached.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    ds = _compute(path, grid)
    with atomic_path(cached) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    return ds


def validate_settings(s: Settings) -> dict:
    return {"grid": s.grid}


def validate(path: str | Path, name: str | None = None, *, grid: LatLonGrid) -> None:
    """A DEM file: readable, georeferenced, and covering every cell of `grid`."""
    _compute(Path(path), grid)


def _netcdf_stats(path: Path) -> tuple[list[int], dict, str]:
    import netCDF4

    try:
        with netCDF4.Dataset(path, "r") as nc:
            z = nc.variables[_pick(nc.variables.keys(), Z_NAMES, path, "elevation")]
            n = good = 0
            lo, hi, total = np.inf, -np.inf, 0.0
            for start in range(0, z.shape[0], _ROWS_PER_BLOCK):  # bounded memory for global 30" grids
                block = np.ma.filled(np.ma.asarray(z[start : start + _ROWS_PER_BLOCK], dtype=np.float64), np.nan)
                valid = block[np.isfinite(block)]
                n += block.size
                good += valid.size
                if valid.size:
                    lo, hi, total = min(lo, valid.min()), max(hi, valid.max()), total + valid.sum()
            shape, name = list(z.shape), z.name
    except OSError as exc:
        raise DataError(path, f"unreadable NetCDF (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None
    stats = {"valid_fraction": significant(good / n) if n else 0.0, "min": None, "max": None, "mean": None}
    if good:
        stats.update(min=significant(float(lo)), max=significant(float(hi)), mean=significant(total / good))
    return shape, stats, name


def identify(path: str | Path) -> dict:
    path = Path(path)
    http.require_signature(path, _SIGNATURES, "a NetCDF or GeoTIFF DEM")
    if _is_tiff(path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _, _, nodata = _tiff_geometry(page, path)
            data = page.asarray().astype(np.float64)
        valid = np.isfinite(data) & ((data != nodata) if nodata is not None else True)
        shape, stats, name = list(data.shape), field_stats(data, valid), "band 1"
    else:
        shape, stats, name = _netcdf_stats(path)
    return {"source": NAME, "version": "static", "start": None, "end": None, "shape": shape, **stats, "field": name, "path": str(path)}
