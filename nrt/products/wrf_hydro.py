"""WRF-Hydro precipitation forcing: the ensemble mean (or one member) on a WRF-Hydro geogrid.

WRF-Hydro's supplemental precipitation (`forcing_typ` with `YYYYMMDDHHMM.PRECIP_FORCING.nc`) reads
`precip_rate` in mm s-1 on the geogrid's (south_north, west_east) dimensions. The geogrid is read from
its WPS `geo_em` file: the cell-centre latitudes and longitudes `XLAT_M`/`XLONG_M` (what WPS computed
for its Lambert conformal projection; MAP_PROJ = 1 is required, so a mercator or polar grid is refused
by name rather than mis-placed).

Regridding is pyresample's bilinear interpolation from the 0.05° lat/lon grid to the geogrid, described
as a pyresample AreaDefinition from the file's projection attributes (TRUELAT1/2, STAND_LON, CEN_LAT,
DX, DY) and its corner cells. It is not conservative by construction, but the geogrid
(1 km typically) is finer than the product grid, where bilinear interpolation keeps the area-integrated
rain within a fraction of a percent (tests/test_wrf_hydro.py measures it). Geogrid cells outside the
product domain get NaN, and the command names how many: WRF-Hydro would read NaN as a bad value, so a
geogrid reaching outside the domain needs a wider product domain.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import LatLonGrid, to_area_rows
from nrt.io import atomic_path
from nrt.timeline import utc

LAMBERT_CONFORMAL = 1  # WPS MAP_PROJ code
WRF_EARTH_RADIUS_M = 6_370_000.0
PROJECTION_KEYS = ("TRUELAT1", "TRUELAT2", "STAND_LON", "CEN_LAT", "DX", "DY")


@dataclass(frozen=True)
class GeoGrid:
    lats: np.ndarray  # (south_north, west_east) cell centres, degrees
    lons: np.ndarray
    dx: float  # metres
    dy: float
    attrs: dict  # the geo_em global attributes WRF-Hydro users recognise (projection parameters)


def read_geogrid(path: str | Path) -> GeoGrid:
    """The mass-point grid of a WPS `geo_em` file; DataError naming the file if it is not a Lambert conformal one."""
    path = Path(path)
    try:
        with xr.open_dataset(path, decode_times=False) as ds:
            absent = [name for name in ("XLAT_M", "XLONG_M") if name not in ds]
            if absent:
                raise DataError(path, f"not a WPS geo_em file: no {' or '.join(absent)} variable")
            lats = np.asarray(ds["XLAT_M"].values, dtype=np.float64).reshape(ds["XLAT_M"].shape[-2:])
            lons = np.asarray(ds["XLONG_M"].values, dtype=np.float64).reshape(ds["XLONG_M"].shape[-2:])
            attrs = dict(ds.attrs)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a readable NetCDF file ({exc})") from None
    if int(attrs.get("MAP_PROJ", -1)) != LAMBERT_CONFORMAL:
        raise DataError(path, f"MAP_PROJ = {attrs.get('MAP_PROJ')}: only Lambert conformal (1) geogrids are supported")
    absent = [k for k in PROJECTION_KEYS if k not in attrs]
    if absent:
        raise DataError(path, f"geo_em lacks the projection attribute(s) {', '.join(absent)}")
    keep = ("MAP_PROJ", "TRUELAT1", "TRUELAT2", "STAND_LON", "CEN_LAT", "CEN_LON", "DX", "DY")
    return GeoGrid(lats, lons, float(attrs.get("DX", np.nan)), float(attrs.get("DY", np.nan)), {k: attrs[k] for k in keep if k in attrs})


def area_definition(geogrid: GeoGrid):
    """The geogrid as a pyresample AreaDefinition (WRF's Lambert conformal on its 6370 km sphere), rows north first.

    The extent comes from projecting the corner cells' centres, so it matches the file's XLAT_M/XLONG_M.
    """
    from pyproj import Proj
    from pyresample.geometry import AreaDefinition

    a = geogrid.attrs
    proj = {"proj": "lcc", "lat_1": float(a["TRUELAT1"]), "lat_2": float(a["TRUELAT2"]), "lat_0": float(a["CEN_LAT"]),
            "lon_0": float(a["STAND_LON"]), "R": WRF_EARTH_RADIUS_M, "units": "m"}
    x0, y0 = Proj(proj)(geogrid.lons[0, 0], geogrid.lats[0, 0])
    x1, y1 = Proj(proj)(geogrid.lons[-1, -1], geogrid.lats[-1, -1])
    ny, nx = geogrid.lats.shape
    extent = (x0 - geogrid.dx / 2, y0 - geogrid.dy / 2, x1 + geogrid.dx / 2, y1 + geogrid.dy / 2)
    return AreaDefinition("geogrid", "WRF-Hydro geogrid", "lcc", proj, nx, ny, extent)


def regrid(rate: np.ndarray, grid: LatLonGrid, geogrid: GeoGrid) -> np.ndarray:
    """(lat, lon) rates on `grid` -> (south_north, west_east) on the geogrid, bilinear; NaN outside `grid`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "XArray, dask ... not found": only the numpy resampler is used
        from pyresample.bilinear import NumpyBilinearResampler

    # The search radius spans two source cells, so every target inside the grid finds its 4 corners.
    radius = 2.0 * grid.res * 111_320.0
    resampler = NumpyBilinearResampler(grid.area_definition(), area_definition(geogrid), radius_of_influence=radius, neighbours=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pyresample's solver divides by zero for targets off the grid
        out = resampler.resample(to_area_rows(np.asarray(rate, dtype=np.float64)), fill_value=np.nan)
    return to_area_rows(np.asarray(out, dtype=np.float64))  # WRF's south_north runs south first


def forcing_name(valid_time: dt.datetime) -> str:
    """`YYYYMMDDHHMM.PRECIP_FORCING.nc`, stamped with the start of the half hour (as nrt names valid times)."""
    return f"{utc(valid_time):%Y%m%d%H%M}.PRECIP_FORCING.nc"


def write_forcing(out_dir: str | Path, valid_time: dt.datetime, rate_mm_h: np.ndarray, geogrid: GeoGrid, source: str) -> Path:
    """Write one forcing file: `precip_rate(Time, south_north, west_east)` in mm s-1, plus `Times` as WRF writes it."""
    valid = utc(valid_time)
    path = Path(out_dir) / forcing_name(valid)
    stamp = np.array(list(f"{valid:%Y-%m-%d_%H:%M:%S}"), dtype="S1")
    ds = xr.Dataset(
        {
            "precip_rate": (
                ("Time", "south_north", "west_east"),
                (np.asarray(rate_mm_h, dtype=np.float32) / np.float32(3600.0))[None],
                {"units": "mm s-1", "long_name": "precipitation rate", "description": f"nrt {source}, mean over the half hour"},
            ),
            "Times": (("Time", "DateStrLen"), stamp[None]),
        },
        attrs={**geogrid.attrs, "title": "nrt precipitation forcing for WRF-Hydro", "valid_time_start": f"{valid:%Y-%m-%dT%H:%M:%SZ}",
               "period_minutes": 30},
    )
    encoding = {"precip_rate": {"_FillValue": np.float32(np.nan), "zlib": True}}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4", encoding=encoding)
    return path


def export_wrf_hydro(
    ensemble: xr.DataArray, geogrid: GeoGrid, out_dir: str | Path, member: int | None = None
) -> tuple[list[Path], int]:
    """Write the forcing of every time of an ensemble (member, time, lat, lon) in mm/h: its mean, or `member`.

    Returns the paths and the number of geogrid cells outside the product domain (NaN in the files).
    """
    from nrt.products.netcdf import grid_of, times_of

    grid = grid_of(ensemble)
    if member is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
            fields = np.nanmean(ensemble.values, axis=0)
        source = f"{ensemble.sizes['member']}-member ensemble mean"
    else:
        fields = ensemble.values[member]
        source = f"ensemble member {member}"
    outside = int(np.isnan(regrid(np.zeros(grid.shape), grid, geogrid)).sum())
    written = [write_forcing(out_dir, t, regrid(field, grid, geogrid), geogrid, source) for t, field in zip(times_of(ensemble), fields)]
    return written, outside
