"""DWD RADOLAN readers: RW hourly accumulations (ESRI-ASCII in a tar.gz) and YW 5-min accumulations (binary).

The grid is RADOLAN's polar stereographic one (pyproj gives its cell-centre lon/lat); wradlib decodes YW.
Files are named by the end of their accumulation period.
"""

from __future__ import annotations

import io
import re
import tarfile
from datetime import timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.realrain.frames import parse_utc, projected_lonlat, rain_rate_frames

ASCII_HEADER = ("ncols", "nrows", "xllcorner", "yllcorner", "cellsize", "nodata_value")


#: RADOLAN's polar stereographic projection on DWD's sphere (R = 6370.04 km), true at 60° N, centred on 10° E.
RADOLAN_PROJ = "+proj=stere +lat_0=90 +lat_ts=60 +lon_0=10 +a=6370040 +b=6370040 +x_0=0 +y_0=0 +units=m +no_defs"
#: Projected lower-left corner (m) of each composite size (DWD's RADOLAN format description; wradlib's table).
LOWER_LEFT_M = {(900, 900): (-523462.2, -4658644.7), (1100, 900): (-443462.2, -4758644.7)}


@lru_cache(maxsize=4)
def radolan_lonlat(nrows: int, ncols: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre lon/lat of a 1-km RADOLAN grid, rows south to north (the binary files' and wradlib's order)."""
    x0, y0 = LOWER_LEFT_M[(nrows, ncols)]
    return projected_lonlat(RADOLAN_PROJ, x0 + 1000.0 * (np.arange(ncols) + 0.5), y0 + 1000.0 * (np.arange(nrows) + 0.5))


def _esri_ascii(text: str, where: str) -> np.ndarray:
    """An ESRI-ASCII grid (rows north to south) with NODATA as NaN.

    Six `key value` header lines, then the numbers, which pandas' C parser reads (GDAL, the format's usual
    reader, is not a dependency here).
    """
    import pandas as pd

    lines = text.split("\n", 6)
    try:
        header = {k.lower(): float(v) for k, v in (line.split() for line in lines[:6])}
        values = pd.read_csv(io.StringIO(lines[6]), sep=r"\s+", header=None, dtype=np.float64).to_numpy().ravel()
    except (ValueError, IndexError, pd.errors.ParserError) as exc:
        raise DataError(where, f"not an ESRI-ASCII grid ({exc})") from None
    if set(header) != set(ASCII_HEADER):
        raise DataError(where, f"ESRI-ASCII header keys {sorted(header)}, expected {sorted(ASCII_HEADER)}")
    nrows, ncols = int(header["nrows"]), int(header["ncols"])
    if values.size != nrows * ncols:
        raise DataError(where, f"{values.size} values for a {nrows} x {ncols} grid (truncated?)")
    corner = LOWER_LEFT_M.get((nrows, ncols), (np.nan, np.nan))
    offset = max(abs(header["xllcorner"] - corner[0]), abs(header["yllcorner"] - corner[1]))
    if not offset <= 1000:  # also an unknown grid size (NaN)
        raise DataError(where, f"lower-left corner ({header['xllcorner']}, {header['yllcorner']}) m is not the "
                               f"RADOLAN {nrows} x {ncols} grid's ({corner[0]:.0f}, {corner[1]:.0f})")
    grid = values.reshape(nrows, ncols)
    return np.where(grid == header["nodata_value"], np.nan, grid)


def read_radolan_rw(path: Path) -> xr.DataArray:
    """RADOLAN RW: hourly accumulations in 0.1 mm, one ESRI-ASCII member per hour (RW_YYYYMMDD-HHMM.asc,
    named by the hour's end) in a tar.gz; the hourly mean rate is the accumulation itself."""
    path = Path(path)
    grids = {}
    try:
        with tarfile.open(path, "r|gz") as tar:  # streamed: one pass through the gzip, members in archive order
            for member in tar:
                if not (member.isfile() and member.name.endswith(".asc")):
                    continue
                where = f"{path}:{member.name}"
                if not re.search(r"RW_\d{8}-\d{4}\.asc$", member.name):
                    raise DataError(where, "not named RW_YYYYMMDD-HHMM.asc")
                grids[member.name] = _esri_ascii(tar.extractfile(member).read().decode("ascii"), where)
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a readable tar.gz of RADOLAN RW ASCII grids ({type(exc).__name__}: {exc})") from None
    names = sorted(grids)
    frames = [grids[n][::-1] * 0.1 for n in names]  # rows south to north, as wradlib's grid
    starts = [parse_utc(re.search(r"RW_(\d{8}-\d{4})\.asc$", n).group(1), "%Y%m%d-%H%M") - timedelta(hours=1) for n in names]
    if not frames:
        raise DataError(path, "no RW_*.asc grids inside")
    lon, lat = radolan_lonlat(*frames[0].shape)
    return rain_rate_frames(np.stack(frames), starts, lon, lat, source="DWD RADOLAN RW", period=timedelta(hours=1),
                            conversion="hourly accumulation (0.1 mm) x 0.1 = mean rate over the hour",
                            files=[f"{path.name}:{n}" for n in names], crs=RADOLAN_PROJ)


def read_radolan_yw(path: Path) -> xr.DataArray:
    """RADOLAN YW: 5-min accumulations (binary, gzipped), read by wradlib; no-data and clutter pixels are NaN."""
    import wradlib

    path = Path(path)
    try:
        data, attrs = wradlib.io.read_radolan_composite(str(path))
    except Exception as exc:  # noqa: BLE001 - wradlib raises anything from OSError to ValueError on a bad file
        raise DataError(path, f"not a readable RADOLAN composite ({type(exc).__name__}: {exc})") from None
    if attrs.get("producttype") != "YW" or int(attrs.get("intervalseconds", 0)) != 300:
        raise DataError(path, f"expected a 5-min YW product, got {attrs.get('producttype')} every {attrs.get('intervalseconds')} s")
    data = np.where(data == attrs["nodataflag"], np.nan, np.asarray(data, dtype=np.float64))
    data.flat[np.asarray(attrs.get("cluttermask", []), dtype=np.int64)] = np.nan
    lon, lat = radolan_lonlat(*data.shape)
    end = attrs["datetime"].replace(tzinfo=timezone.utc)
    return rain_rate_frames(data * 12.0, [end - timedelta(minutes=5)], lon, lat, source="DWD RADOLAN YW",
                            period=timedelta(minutes=5), conversion="5-min accumulation (mm) x 12",
                            files=[path.name], crs=RADOLAN_PROJ)
