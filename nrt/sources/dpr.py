"""GPM DPR level-2A swaths: the near-surface precipitation rate, gridded to the 0.05° target grid.

Names:
- NRT (PPS, listed at `/text/radar/DprL2/`, served from `/radar/DprL2/`), about 30 minutes each, no orbit:
  `2A.GPM.DPR.V920211125.20220818-S004128-E011127.V07A.RT-H5`
- research (one orbit each): `2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5`, at GES DISC
  under `GPM_2ADPR.07/YYYY/DDD/`.

Layout: V07 group `FS` (V06 `NS`) with `Latitude`, `Longitude`, `SLV/precipRateNearSurface` (nscan, nray)
float32 mm/hr, fill -9999.9, and per-scan `ScanTime/{Year,Month,DayOfMonth,Hour,Minute,Second,MilliSecond}`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import LatLonGrid, from_area_rows
from nrt.sources import RemoteFile, field_stats, http, identity
from nrt.sources.base import FilePattern
from nrt.timeline import utc

NAME = "dpr"

# The one spelling of both names: NRT files (.RT-H5) carry no orbit number, research files (.HDF5) always do.
FILE_PATTERN = FilePattern(
    "2A.GPM.DPR.{algorithm}.{start:%Y%m%d}-S{start:%H%M%S}-E{end:%H%M%S}[.{orbit:06d}].{version}.{ext}",
    algorithm=r"V\d+-?\d{8}", version=r"V\d{2}[A-Z]", ext="RT-H5|HDF5",
)

SWATH_GROUPS = ("FS", "NS")  # V07 full swath, V06 normal scan
RATE = "SLV/precipRateNearSurface"
SCAN_TIME_FIELDS = ("Year", "Month", "DayOfMonth", "Hour", "Minute", "Second", "MilliSecond")
PPS_FOLDER = "radar/DprL2"
DEFAULT_ALGORITHM = {"V07": "V9-20211125", "V06": "V8-20180723"}


# ---------------------------------------------------------------- naming and server layout

def _algorithm(version: str, nrt: bool) -> str:
    algorithm = DEFAULT_ALGORITHM.get(version[:3], DEFAULT_ALGORITHM["V07"])
    return algorithm.replace("-", "") if nrt else algorithm


def nrt_filename(start: datetime, end: datetime, version: str = "V07A", algorithm: str | None = None) -> str:
    """NRT name, e.g. `2A.GPM.DPR.V920211125.20220818-S004128-E011127.V07A.RT-H5`."""
    start, end = utc(start), utc(end)
    return FILE_PATTERN.compose(algorithm=algorithm or _algorithm(version, nrt=True), start=start, end=end, orbit=None,
                                version=version, ext="RT-H5")


def research_filename(start: datetime, end: datetime, orbit: int, version: str = "V07A", algorithm: str | None = None) -> str:
    """Research (orbit) name, e.g. `2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5`."""
    start, end = utc(start), utc(end)
    return FILE_PATTERN.compose(algorithm=algorithm or _algorithm(version, nrt=False), start=start, end=end, orbit=orbit,
                                version=version, ext="HDF5")


def pps_listing_path() -> str:
    """The NRT listing on the PPS server, relative to its root."""
    return f"text/{PPS_FOLDER}/"


def pps_relative_path(rf: RemoteFile) -> str:
    return f"{PPS_FOLDER}/{rf.name}"


def gesdisc_folder(start: datetime, version: str = "V07A") -> str:
    """Research files at GES DISC relative to `.../data/GPM_L2`: `GPM_2ADPR.07/YYYY/DDD`."""
    start = utc(start)
    return f"GPM_2ADPR.{version[1:3]}/{start:%Y}/{start:%j}"


def parse_name(name: str) -> RemoteFile | None:
    fields = FILE_PATTERN.parse(name)
    if fields is None:
        return None
    nrt = fields["ext"] == "RT-H5"
    if nrt == (fields["orbit"] is not None):
        return None
    start = fields["start"].replace(tzinfo=timezone.utc)
    end_clock = datetime.combine(start.date(), fields["end"].time(), timezone.utc)
    end = end_clock if end_clock > start else end_clock + timedelta(days=1)  # a granule may cross midnight
    subdir = PPS_FOLDER if nrt else gesdisc_folder(start, fields["version"])
    return RemoteFile(NAME, name, fields["version"], start, end, subdir)


@dataclass(frozen=True)
class Settings:
    """What this module's functions use, taken from the config once by `settings(cfg)`."""

    pps_url: str
    gesdisc_url: str  # research (orbit) files
    versions: tuple[str, ...]
    lookback: timedelta


def settings(cfg) -> Settings:
    src = cfg.sources.dpr
    return Settings(src.pps_url, src.gesdisc_url, tuple(src.versions), timedelta(hours=src.lookback_hours))


def expected_files(s: Settings, t: datetime) -> list[RemoteFile]:
    """DPR names cannot be predicted (granule edges follow the orbit); the listing decides, see `select`."""
    return []


def remote_url(s: Settings, rf: RemoteFile) -> str:
    base = s.pps_url if rf.name.endswith(".RT-H5") else s.gesdisc_url
    return f"{base.rstrip('/')}/{rf.relative_path}"


def list_url(s: Settings, t: datetime) -> str:
    return f"{s.pps_url.rstrip('/')}/{pps_listing_path()}"


def parse_listing(s: Settings, text: str, url: str) -> list[RemoteFile]:
    names = http.parse_pps_listing(text, PPS_FOLDER, FILE_PATTERN)
    return [rf for rf in map(parse_name, names) if rf is not None and rf.name.endswith(".RT-H5")]


def select(s: Settings, t: datetime, expected: list[RemoteFile], listed: list[RemoteFile]) -> tuple[list[RemoteFile], list[str]]:
    """Listed NRT swaths of an allowed version overlapping [t - lookback, t]; nothing counts as missing."""
    t = utc(t)
    since = t - s.lookback
    allowed = set(s.versions)
    return [rf for rf in listed if rf.version in allowed and rf.start < t and rf.end > since], []


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class DprSwath:
    """Footprints of one swath (nscan, nray): geolocation, rate (mm/h, NaN fill) and each scan's time."""

    lat: np.ndarray
    lon: np.ndarray
    rate: np.ndarray
    scan_time: np.ndarray  # (nscan,) datetime64[ns], NaT where the file has fill
    name: str
    version: str

    @property
    def empty(self) -> bool:
        return self.rate.shape[0] == 0


def _group(h5: h5py.File, path) -> h5py.Group:
    for name in SWATH_GROUPS:
        if name in h5 and RATE in h5[name]:
            return h5[name]
    found = ", ".join(sorted(h5.keys())[:6]) or "nothing"
    raise DataError(path, f"no FS/NS {RATE}: not a DPR 2A file (top level holds {found})")


def scan_times(group: h5py.Group, rows: slice = slice(None)) -> np.ndarray:
    """Per-scan UTC times as datetime64[ns] from the ScanTime fields; NaT where any field is fill."""
    f = {k: group[f"ScanTime/{k}"][rows].astype(np.int64) for k in SCAN_TIME_FIELDS}
    bad = (
        (f["Year"] < 1900) | (f["Month"] < 1) | (f["Month"] > 12) | (f["DayOfMonth"] < 1) | (f["DayOfMonth"] > 31)
        | (f["Hour"] < 0) | (f["Hour"] > 23) | (f["Minute"] < 0) | (f["Minute"] > 59)
        | (f["Second"] < 0) | (f["Second"] > 60) | (f["MilliSecond"] < 0) | (f["MilliSecond"] > 999)
    )
    year = np.where(bad, 1970, f["Year"])
    month = np.where(bad, 1, f["Month"])
    day = np.where(bad, 1, f["DayOfMonth"])
    days = ((year - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (month - 1).astype("timedelta64[M]")).astype(
        "datetime64[D]"
    ) + (day - 1).astype("timedelta64[D]")
    ms = ((f["Hour"] * 60 + f["Minute"]) * 60 + f["Second"]) * 1000 + f["MilliSecond"]
    times = days.astype("datetime64[ms]") + np.where(bad, 0, ms).astype("timedelta64[ms]")
    times = times.astype("datetime64[ns]")
    times[bad] = np.datetime64("NaT")
    return times


def _as_rate(raw: np.ndarray) -> np.ndarray:
    rate = raw.astype(np.float32)
    rate[~(rate >= 0)] = np.nan  # fill -9999.9; a rate is never negative
    return rate


def _as_degrees(raw: np.ndarray, limit: float) -> np.ndarray:
    values = raw.astype(np.float32)
    values[~(np.abs(values) <= limit)] = np.nan
    return values


def _np_time(t: datetime) -> np.datetime64:
    return np.datetime64(utc(t).replace(tzinfo=None), "ns")


def _read(path: Path, name: str | None, start: datetime | None, end: datetime | None) -> DprSwath:
    http.require_signature(path, ("hdf5",), "HDF5")
    name = name or path.name
    rf = parse_name(name)
    if rf is None:
        raise DataError(path, f"{name!r} is not a DPR 2A file name")
    try:
        with h5py.File(path, "r") as h5:
            group = _group(h5, path)
            times = scan_times(group)
            keep = ~np.isnat(times)
            if start is not None:
                keep &= times >= _np_time(start)
            if end is not None:
                keep &= times < _np_time(end)
            rows = np.flatnonzero(keep)
            nray = group[RATE].shape[1]
            if rows.size == 0:
                empty = np.empty((0, nray), np.float32)
                return DprSwath(empty, empty.copy(), empty.copy(), times[:0], rf.name, rf.version)
            # Scans are in time order, so the half-hour is one contiguous hyperslab.
            block = slice(int(rows[0]), int(rows[-1]) + 1)
            inside = keep[block]
            lat = _as_degrees(group["Latitude"][block], 90)[inside]
            lon = _as_degrees(group["Longitude"][block], 180)[inside]
            rate = _as_rate(group[RATE][block])[inside]
    except OSError as exc:
        raise DataError(path, f"unreadable HDF5 (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None
    except KeyError as exc:
        raise DataError(path, f"missing DPR dataset: {exc}") from None
    if start is None and end is None and not np.isfinite(rate).any():
        raise DataError(path, f"{RATE} is all fill")
    return DprSwath(lat, lon, rate, times[block][inside], rf.name, rf.version)


def read_dpr(path: str | Path, start: datetime | None = None, end: datetime | None = None) -> DprSwath:
    """The swath's scans with start <= scan time < end (all scans when both are None)."""
    return _read(Path(path), None, start, end)


def grid_swath(swath: DprSwath, grid: LatLonGrid, footprint_km: float = 5.0) -> xr.Dataset:
    """Footprint-weighted average of the swath on `grid` (pyresample kd-tree, Gaussian weights).

    The search radius is footprint/√2, the largest distance from a point inside the swath to the nearest
    footprint centre on a ~footprint-spaced lattice, so the swath has no holes and spills at most ~1 km past
    its edge; the Gaussian width is the footprint's FWHM. Returns `precipitation` (mm/h, NaN outside the swath
    or where DPR has no retrieval), `coverage` (cell inside the swath) and `scan_time` of the nearest footprint.
    """
    from pyresample import geometry, kd_tree

    radius_m = footprint_km * 1000 / math.sqrt(2)
    # pyresample weighs exp(-d²/σ²) (no factor 2), so this σ gives a Gaussian whose FWHM is the footprint.
    sigma_m = footprint_km * 1000 / (2 * math.sqrt(math.log(2)))
    precipitation = np.full(grid.shape, np.nan, np.float32)
    coverage = np.zeros(grid.shape, bool)
    cell_time = np.full(grid.shape, np.datetime64("NaT"), "datetime64[ns]")

    lat, lon = swath.lat, swath.lon
    times = np.broadcast_to(swath.scan_time[:, None], lat.shape)
    west, south, east, north = grid.extent
    margin_lat = radius_m / 111_195 + 1e-6
    margin_lon = margin_lat / max(math.cos(math.radians(max(abs(south), abs(north)))), 1e-3)
    near = (
        np.isfinite(lat) & np.isfinite(lon) & ~np.isnat(times)
        & (lat >= south - margin_lat) & (lat <= north + margin_lat)
        & (lon >= west - margin_lon) & (lon <= east + margin_lon)
    )
    if near.any():
        source = geometry.SwathDefinition(lons=lon[near].astype(np.float64), lats=lat[near].astype(np.float64))
        area = grid.area_definition()
        reference = times[near].min()
        seconds = (times[near] - reference) / np.timedelta64(1, "ms") / 1000.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "possible more than N neighbours": weights still sum right
            valid_in, valid_out, index, _ = kd_tree.get_neighbour_info(source, area, radius_m, neighbours=1)
            nearest_seconds = kd_tree.get_sample_from_neighbour_info(
                "nn", area.shape, seconds, valid_in, valid_out, index, fill_value=None
            )
            rate = kd_tree.resample_gauss(
                source, np.ma.masked_invalid(swath.rate[near]), area, radius_m, sigmas=sigma_m,
                neighbours=16, fill_value=None,
            )
        inside = ~np.ma.getmaskarray(nearest_seconds)
        coverage = from_area_rows(inside)
        rate = np.ma.filled(np.ma.masked_array(rate, mask=np.ma.getmaskarray(rate) | ~inside).astype(np.float32), np.nan)
        precipitation = from_area_rows(rate)
        ms = np.round(np.ma.filled(nearest_seconds, 0.0) * 1000).astype(np.int64).astype("timedelta64[ms]")
        cell_time = np.where(inside, reference + ms, np.datetime64("NaT")).astype("datetime64[ns]")
        cell_time = from_area_rows(cell_time)

    coords = grid.coords()
    return xr.Dataset(
        {
            "precipitation": (("lat", "lon"), np.ascontiguousarray(precipitation), {
                "units": "mm/h", "standard_name": "lwe_precipitation_rate",
                "long_name": "DPR near-surface precipitation rate, footprint-weighted on the grid",
            }),
            "coverage": (("lat", "lon"), np.ascontiguousarray(coverage), {"long_name": "cell inside the DPR swath"}),
            "scan_time": (("lat", "lon"), np.ascontiguousarray(cell_time), {"long_name": "scan time of the nearest footprint (UTC)"}),
        },
        coords=coords,
        attrs={"source": "GPM DPR 2A", "file": swath.name, "version": swath.version, "footprint_km": footprint_km},
    )


def validate_settings(s: Settings) -> dict:
    return {}


def validate(path: str | Path, name: str | None = None) -> None:
    """A downloaded swath: HDF5, the FS/NS layout, a DPR name and some non-fill rate."""
    _read(Path(path), name, None, None)


def identify(path: str | Path) -> dict:
    path = Path(path)
    http.require_signature(path, ("hdf5",), "HDF5")
    rf = parse_name(path.name)
    if rf is None:
        raise DataError(path, "not a DPR 2A file name")
    try:
        with h5py.File(path, "r") as h5:
            group = _group(h5, path)
            values = group[RATE][...]
            field = f"{group.name.lstrip('/')}/{RATE}"
    except OSError as exc:
        raise DataError(path, f"unreadable HDF5 (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None
    return identity(NAME, rf.version, rf, values, field_stats(values, values >= 0), field, path,
                    orbit=FILE_PATTERN.parse(rf.name)["orbit"])
