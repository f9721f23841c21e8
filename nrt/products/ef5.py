"""EF5 forcing export: one single-band Float32 GeoTIFF per member and half hour.

EF5 (github.com/HyDROSLab/EF5, `TifGrid.cpp`) reads TIF forcings with libtiff + libgeotiff: it needs
one Float32 sample per pixel, reads rows with `TIFFReadScanline` (so strips, not tiles), takes the
upper-left corner from ModelTiepoint and the cell size from ModelPixelScale, and the missing value from
the GDAL_NODATA tag. Rows are therefore written north-up (our arrays are latitude-ascending, so they are
flipped here), with RasterPixelIsArea and EPSG:4326 geokeys.

File names carry only EF5's time tokens (`DatedName.cpp`: YYYY MM DD HH UU SS):
`member_07/prcp.YYYYMMDDHHUU.tif`, so one control-file block with `LOC=.../member_07` and
`NAME=prcp.YYYYMMDDHHUU.tif` reads member 7. EF5 steps from the begin time and, for the step ending at
t, reads the file stamped t; a half hour [V, V+30 min) is therefore stamped V+30 min by default
(`stamp="end"`); `stamp="start"` names it V instead.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
import xarray as xr

from nrt.io import atomic_path
from nrt.products.netcdf import grid_of, read_ensemble, times_of
from nrt.timeline import HALF_HOUR, utc

NODATA = -9999.0
PREFIX = "prcp"

# GeoTIFF tag codes and GeoKey values (GeoTIFF 1.1 spec, OGC 19-008r4).
TAG_MODEL_PIXEL_SCALE = 33550
TAG_MODEL_TIEPOINT = 33922
TAG_GEO_KEY_DIRECTORY = 34735
TAG_GDAL_NODATA = 42113
GT_MODEL_TYPE, GT_RASTER_TYPE, GEOGRAPHIC_TYPE, GEOG_ANGULAR_UNITS = 1024, 1025, 2048, 2054
MODEL_TYPE_GEOGRAPHIC, RASTER_PIXEL_IS_AREA, GCS_WGS84, ANGULAR_DEGREE = 2, 1, 4326, 9102
ROWS_PER_STRIP = 16


def ef5_name(valid_time: dt.datetime, stamp: Literal["end", "start"] = "end") -> str:
    """`prcp.YYYYMMDDHHUU.tif` for the half hour starting at `valid_time`."""
    t = utc(valid_time) + (HALF_HOUR if stamp == "end" else dt.timedelta(0))
    return f"{PREFIX}.{t:%Y%m%d%H%M}.tif"


def member_dir(out_dir: Path, member: int) -> Path:
    return Path(out_dir) / f"member_{int(member):02d}"


def geotiff_tags(west: float, north: float, res: float, nodata: float) -> list[tuple]:
    """tifffile `extratags` for a north-up WGS 84 lon/lat raster whose upper-left corner is (west, north)."""
    geokeys = (
        1, 1, 0, 4,  # directory version, key revision 1.0, 4 keys
        GT_MODEL_TYPE, 0, 1, MODEL_TYPE_GEOGRAPHIC,
        GT_RASTER_TYPE, 0, 1, RASTER_PIXEL_IS_AREA,
        GEOGRAPHIC_TYPE, 0, 1, GCS_WGS84,
        GEOG_ANGULAR_UNITS, 0, 1, ANGULAR_DEGREE,
    )
    return [
        (TAG_MODEL_PIXEL_SCALE, "d", 3, (res, res, 0.0), True),
        (TAG_MODEL_TIEPOINT, "d", 6, (0.0, 0.0, 0.0, west, north, 0.0), True),
        (TAG_GEO_KEY_DIRECTORY, "H", len(geokeys), geokeys, True),
        (TAG_GDAL_NODATA, "s", 0, f"{nodata:g}", True),
    ]


def write_geotiff(path: Path, rows_north_up: np.ndarray, tags: list[tuple]) -> Path:
    """One Float32 band in deflated strips, written to a temp name and renamed."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(rows_north_up, dtype=np.float32),
            photometric="minisblack",
            rowsperstrip=ROWS_PER_STRIP,
            compression="zlib",
            extratags=tags,
            metadata=None,
            software="nrt",
        )
    return Path(path)


def export_ef5(
    ensemble: str | Path | xr.DataArray,
    out_dir: str | Path,
    *,
    stamp: Literal["end", "start"] = "end",
    nodata: float = NODATA,
) -> list[Path]:
    """Write every member and time of an ensemble (file path or (member, time, lat, lon) DataArray) for EF5.

    NaN (no data) becomes `nodata`, which the GDAL_NODATA tag declares. Existing files of the same time are
    replaced atomically, so a directory exported from the best-available product stays readable while it
    is updated. Returns the written paths.
    """
    precip = read_ensemble(ensemble) if isinstance(ensemble, (str, Path)) else ensemble
    if precip.dims != ("member", "time", "lat", "lon"):
        raise ValueError(f"ensemble must be (member, time, lat, lon), got {precip.dims}")
    grid = grid_of(precip)
    west, _, _, north = grid.extent
    tags = geotiff_tags(west, north, grid.res, nodata)
    members = precip["member"].values if "member" in precip.coords else np.arange(precip.sizes["member"])
    values = np.asarray(precip.values, dtype=np.float32)
    written = []
    for i, member in enumerate(members):
        for j, t in enumerate(times_of(precip)):
            rows = np.where(np.isfinite(values[i, j]), values[i, j], np.float32(nodata))[::-1]  # north-up
            written.append(write_geotiff(member_dir(out_dir, member) / ef5_name(t, stamp), rows, tags))
    return written


def control_block(out_dir: str | Path, member: int) -> str:
    """The EF5 `[PrecipForcing ...]` block that reads one member of an export."""
    return "\n".join(
        [
            f"[PrecipForcing NRT_M{int(member):02d}]",
            "TYPE=TIF",
            "UNIT=mm/h",
            "FREQ=30u",
            f"LOC={member_dir(Path(out_dir), member)}",
            f"NAME={PREFIX}.YYYYMMDDHHUU.tif",
        ]
    )
