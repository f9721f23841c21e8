"""Météo-France MeteoNet 5-min radar rainfall (`rainfall_ZONE_YYYY_MM.P.npz`): accumulations in 0.01 mm, -1 missing.

The grid is regular lat/lon at 0.01° (EPSG:4326). MeteoNet ships the pixel-centre coordinates in a separate
`radar_coords_ZONE.npz` that is not among our files, so the grid is rebuilt from each zone's documented
north-west pixel centre (MeteoNet documentation: NW zone 51.896°N 5.842°W, SE zone 46.25°N 2.0°E); the
half-pixel ambiguity there is 0.005°, a tenth of a 0.05° cell.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.realrain.frames import rain_rate_frames

RESOLUTION = 0.01
NORTH_WEST_CENTRE = {"NW": (51.896, -5.842), "SE": (46.25, 2.0)}  # (lat, lon) of pixel [0, 0]


def _pickled_datetimes(raw: bytes, where: str) -> list[datetime]:
    """The datetimes in an object-array .npy (a pickle), decoded WITHOUT unpickling.

    MeteoNet stores its dates as pickled `datetime.datetime` objects. Loading a pickle from outside could run
    code, so this walks the pickle's opcodes (pickletools, no object is built) and decodes each datetime's
    10-byte state: year (2 bytes, big-endian), month, day, hour, minute, second, microsecond (3 bytes).
    """
    header_len = int.from_bytes(raw[8:10], "little") if raw[6] == 1 else int.from_bytes(raw[8:12], "little")
    body = raw[(10 if raw[6] == 1 else 12) + header_len:]
    times, after_datetime_class = [], False
    try:
        for op, arg, _ in pickletools.genops(body):
            if op.name in ("GLOBAL", "STACK_GLOBAL") and arg == "datetime datetime":
                after_datetime_class = True
            elif op.name == "SHORT_BINBYTES" and after_datetime_class and len(arg) == 10:
                b = arg
                times.append(datetime(b[0] * 256 + b[1], b[2], b[3], b[4], b[5], b[6],
                                      int.from_bytes(b[7:10], "big"), tzinfo=timezone.utc))
    except ValueError as exc:
        raise DataError(where, f"dates are not a readable pickle of datetimes ({exc})") from None
    return times


def read_meteonet(path: Path) -> xr.DataArray:
    """All frames of one MeteoNet rainfall file as rain rates; each frame is named by its 5 minutes' end."""
    path = Path(path)
    match = re.match(r"rainfall_(NW|SE)_\d{4}_\d{2}\.\d\.npz$", path.name)
    if not match:
        raise DataError(path, "not a MeteoNet rainfall_{NW,SE}_YYYY_MM.P.npz file")
    try:
        with zipfile.ZipFile(path) as archive:
            dates_raw = archive.read("dates.npy")
        data = np.load(path, allow_pickle=False)["data"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"not a readable MeteoNet npz ({type(exc).__name__}: {exc})") from None
    ends = _pickled_datetimes(dates_raw, f"{path}:dates.npy")
    if data.ndim != 3 or len(ends) != data.shape[0]:
        raise DataError(path, f"{len(ends)} dates for data of shape {data.shape}")
    lat0, lon0 = NORTH_WEST_CENTRE[match.group(1)]
    ny, nx = data.shape[1:]
    lon, lat = np.meshgrid(lon0 + RESOLUTION * np.arange(nx), lat0 - RESOLUTION * np.arange(ny))
    rate = np.where(data < 0, np.nan, data * 0.01 * 12.0)
    period = timedelta(minutes=5)
    return rain_rate_frames(rate, [t - period for t in ends], lon, lat, source=f"Meteo-France MeteoNet {match.group(1)}",
                            period=period, conversion="5-min accumulation (0.01 mm) x 0.01 x 12", files=[path.name])
