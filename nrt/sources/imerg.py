"""IMERG half-hourly granules (Early run in operations; Late and Final names parse too, for archives and tests).

Names: `3B-HHR-E.MS.MRG.3IMERG.YYYYMMDD-SHHMMSS-EHHMMSS.MMMM.V07B.RT-H5` on the PPS NRT server (listed at
`/text/imerg/early/YYYYMM/`, served from `/imerg/early/YYYYMM/`), the same name ending `.HDF5` at GES DISC
under `GPM_3IMERGHHE.07/YYYY/DDD/`. `MMMM` is minutes into the day; the start time always comes from the
name because `Grid/time` has a different epoch in V06 and V07.

Layout: `Grid/precipitation` (V07) or `Grid/precipitationCal` (V06), float32 mm/hr stored (time, lon, lat)
with `_FillValue` -9999.9, plus `Grid/lat`, `Grid/lon`. The reader reads only the domain's hyperslab, located
with the file's own lat/lon vectors so cut files (the real test files) and global files both work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import h5py
import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import IMERG_GRID, Domain, LatLonGrid, imerg_window
from nrt.sources import RemoteFile, field_stats, identity
from nrt.sources import http
from nrt.sources.base import FilePattern
from nrt.timeline import HALF_HOUR, motion_starts, newest_imerg_start, utc

NAME = "imerg"

# The one spelling of the name: parse_name reads it, filename writes it. `run` is the tag of _RUN_TAG.
FILE_PATTERN = FilePattern(
    "3B-HHR{run}.MS.MRG.3IMERG.{start:%Y%m%d}-S{start:%H%M%S}-E{end:%H%M%S}.{minutes:04d}.{version}.{ext}",
    run="-E|-L|", version=r"V\d{2}[A-Z]", ext="RT-H5|HDF5",
)

#: Dataset holding the main field, by major version; later majors fall back to the newest layout.
PRECIP_DATASET = {"V06": "Grid/precipitationCal", "V07": "Grid/precipitation"}
EXTRA_DATASETS = {
    "randomError": "Grid/randomError",
    "probabilityLiquidPrecipitation": "Grid/probabilityLiquidPrecipitation",
}
VARIABLE_ATTRS = {
    "precipitation": {"units": "mm/h", "standard_name": "lwe_precipitation_rate", "long_name": "IMERG merged precipitation rate"},
    "randomError": {"units": "mm/h", "long_name": "IMERG random error (RMS) of the precipitation rate"},
    "probabilityLiquidPrecipitation": {"units": "percent", "long_name": "probability of liquid precipitation"},
}
GLOBAL_SHAPE = (IMERG_GRID.nlon, IMERG_GRID.nlat)  # as stored: (lon, lat)
_RUN_TAG = {"E": "-E", "L": "-L", "F": ""}
_RUN_OF_TAG = {tag: run for run, tag in _RUN_TAG.items()}
_RUN_FOLDER = {"E": "early", "L": "late"}
_GESDISC_PRODUCT = {"E": "GPM_3IMERGHHE", "L": "GPM_3IMERGHHL", "F": "GPM_3IMERGHH"}
_EXT = {"pps": "RT-H5", "gesdisc": "HDF5"}


# ---------------------------------------------------------------- naming and server layout

def filename(start: datetime, version: str = "V07B", run: str = "E", server: str = "pps") -> str:
    """The file name of the half-hour granule starting at `start` (run E/L/F; server pps -> .RT-H5, gesdisc -> .HDF5)."""
    start = utc(start)
    return FILE_PATTERN.compose(run=_RUN_TAG[run], start=start, end=start + HALF_HOUR - timedelta(seconds=1),
                                minutes=start.hour * 60 + start.minute, version=version, ext=_EXT[server])


def major(version: str) -> str:
    """'V07B' -> '07'."""
    return version[1:3]


def pps_folder(start: datetime, run: str = "E") -> str:
    """Folder on the PPS NRT server, relative to its root: `imerg/early/YYYYMM`."""
    return f"imerg/{_RUN_FOLDER[run]}/{utc(start):%Y%m}"


def pps_listing_path(t: datetime, run: str = "E") -> str:
    """Listing of that folder on the PPS NRT server: `text/imerg/early/YYYYMM/`."""
    return f"text/{pps_folder(t, run)}/"


def gesdisc_folder(start: datetime, version: str = "V07B", run: str = "E") -> str:
    """Folder at GES DISC relative to `.../data/GPM_L3`: `GPM_3IMERGHHE.07/YYYY/DDD`."""
    start = utc(start)
    return f"{_GESDISC_PRODUCT[run]}.{major(version)}/{start:%Y}/{start:%j}"


def pps_relative_path(rf: RemoteFile) -> str:
    return f"{pps_folder(rf.start, _run_of(rf.name))}/{rf.name}"


def gesdisc_relative_path(rf: RemoteFile) -> str:
    return f"{gesdisc_folder(rf.start, rf.version, _run_of(rf.name))}/{rf.name}"


def _run_of(name: str) -> str:
    fields = FILE_PATTERN.parse(name)
    return _RUN_OF_TAG[fields["run"]] if fields else "E"


def parse_name(name: str) -> RemoteFile | None:
    fields = FILE_PATTERN.parse(name)
    if fields is None:
        return None
    start = fields["start"].replace(tzinfo=timezone.utc)
    if fields["minutes"] != start.hour * 60 + start.minute or start.minute % 30 or start.second:
        return None
    run = _RUN_OF_TAG[fields["run"]]
    if fields["ext"] == "RT-H5":
        if run == "F":
            return None  # the final run is never on the NRT server
        subdir = pps_folder(start, run)
    else:
        subdir = gesdisc_folder(start, fields["version"], run)
    return RemoteFile(NAME, name, fields["version"], start, start + HALF_HOUR, subdir)


def _remote_file(start: datetime, version: str, server: str) -> RemoteFile:
    subdir = pps_folder(start) if server == "pps" else gesdisc_folder(start, version)
    return RemoteFile(NAME, filename(start, version, "E", server), version, utc(start), utc(start) + HALF_HOUR, subdir)


@dataclass(frozen=True)
class Settings:
    """What this module's functions use, taken from the config once by `settings(cfg)`."""

    server: str  # pps or gesdisc
    pps_url: str
    gesdisc_url: str
    versions: tuple[str, ...]
    latency: timedelta
    motion_granules: int
    domain: Domain  # validate: a granule must hold plausible data here
    min_valid_fraction: float
    max_rate_mmh: float


def settings(cfg) -> Settings:
    src = cfg.sources.imerg
    return Settings(src.server, src.pps_url, src.gesdisc_url, tuple(src.versions),
                    timedelta(minutes=cfg.timeline.imerg_latency_minutes), cfg.timeline.motion_granules,
                    cfg.domain.box(), src.min_valid_fraction, src.max_rate_mmh)


def expected_files(s: Settings, t: datetime) -> list[RemoteFile]:
    """The motion-window granules that should exist at cycle time `t` (newest S = floor(t - latency))."""
    newest = newest_imerg_start(t, s.latency)
    return [_remote_file(start, max(s.versions), s.server) for start in motion_starts(newest, s.motion_granules)]


def remote_url(s: Settings, rf: RemoteFile) -> str:
    base = s.pps_url if rf.name.endswith(".RT-H5") else s.gesdisc_url
    return f"{base.rstrip('/')}/{rf.relative_path}"


def list_url(s: Settings, t: datetime) -> str:
    if s.server == "pps":
        return f"{s.pps_url.rstrip('/')}/{pps_listing_path(t)}"
    return f"{s.gesdisc_url.rstrip('/')}/{gesdisc_folder(t, max(s.versions))}/"


def parse_listing(s: Settings, text: str, url: str) -> list[RemoteFile]:
    if s.server == "pps":
        folder = urlsplit(url).path.split("/text/", 1)[-1]
        names = http.parse_pps_listing(text, folder, FILE_PATTERN)
    else:
        names = http.parse_html_listing(text, url, FILE_PATTERN)
    return [rf for rf in map(parse_name, names) if rf is not None]


def select(s: Settings, t: datetime, expected: list[RemoteFile], listed: list[RemoteFile]) -> tuple[list[RemoteFile], list[str]]:
    """For each expected half-hour, the listed Early granule of the newest allowed version."""
    allowed = set(s.versions)
    ext = _EXT[s.server]
    chosen, missing = [], []
    for want in expected:
        candidates = [
            rf for rf in listed
            if rf.start == want.start and rf.version in allowed and rf.name.endswith(ext) and _run_of(rf.name) == "E"
        ]
        if candidates:
            chosen.append(max(candidates, key=lambda rf: rf.version))
        else:
            missing.append(f"{want.name}: not listed on the server yet")
    return chosen, missing


# ---------------------------------------------------------------- reading

def _header(h5: h5py.File) -> dict[str, str]:
    raw = h5.attrs.get("FileHeader")
    if raw is None:
        return {}
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    pairs = (item.strip().split("=", 1) for item in text.split(";") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


def _precip_dataset(h5: h5py.File, path, version: str) -> h5py.Dataset:
    if "Grid" not in h5:
        algorithm = _header(h5).get("AlgorithmID", "unknown")
        raise DataError(path, f"no Grid group: not an IMERG file (AlgorithmID={algorithm})")
    preferred = PRECIP_DATASET.get(f"V{major(version)}", PRECIP_DATASET["V07"])
    for name in (preferred, *PRECIP_DATASET.values()):
        if name in h5:
            return h5[name]
    raise DataError(path, f"missing {preferred}: not an IMERG half-hourly file")


def _parse_or_fail(path: Path, name: str | None) -> RemoteFile:
    name = name or path.name
    rf = parse_name(name)
    if rf is None:
        raise DataError(path, f"{name!r} is not an IMERG half-hourly file name")
    return rf


def _axis_offset(axis: np.ndarray, path, label: str) -> int:
    """Index of the file's first cell in IMERG's global axis (0 for a global file; >0 for a cut)."""
    if axis.ndim != 1 or axis.size == 0:
        raise DataError(path, f"Grid/{label} is not a 1-D coordinate")
    step = np.diff(axis.astype(np.float64))
    if step.size and (np.abs(step - IMERG_GRID.res).max() > 1e-3):
        raise DataError(path, f"Grid/{label} is not the ascending 0.1° IMERG axis")
    reference = IMERG_GRID.lats if label == "lat" else IMERG_GRID.lons
    offset = int(round((float(axis[0]) - float(reference[0])) / IMERG_GRID.res))
    if offset < 0 or offset + axis.size > reference.size:
        raise DataError(path, f"Grid/{label} runs outside the global IMERG grid")
    return offset


def _window(h5: h5py.File, path, domain: Domain, stored_shape: tuple[int, ...]) -> tuple[slice, slice, LatLonGrid]:
    """(lon_slice, lat_slice) into the file's arrays for `domain`, from the file's own lat/lon vectors."""
    try:
        lat = h5["Grid/lat"][:]
        lon = h5["Grid/lon"][:]
    except KeyError as exc:
        raise DataError(path, f"missing Grid/lat or Grid/lon ({exc})") from None
    if stored_shape[1:] != (lon.size, lat.size):
        raise DataError(path, f"precipitation shape {stored_shape} does not match lon {lon.size} x lat {lat.size}")
    window = imerg_window(domain)
    lat0, lon0 = _axis_offset(lat, path, "lat"), _axis_offset(lon, path, "lon")
    lat_slice = slice(window.lat_slice.start - lat0, window.lat_slice.stop - lat0)
    lon_slice = slice(window.lon_slice.start - lon0, window.lon_slice.stop - lon0)
    if lat_slice.start < 0 or lon_slice.start < 0 or lat_slice.stop > lat.size or lon_slice.stop > lon.size:
        covered = f"lat {lat[0]:.2f}..{lat[-1]:.2f}, lon {lon[0]:.2f}..{lon[-1]:.2f}"
        raise DataError(path, f"file covers {covered}, not the domain {domain}")
    if not (
        np.allclose(lat[lat_slice], window.grid.lats, atol=1e-3) and np.allclose(lon[lon_slice], window.grid.lons, atol=1e-3)
    ):
        raise DataError(path, "Grid/lat or Grid/lon disagree with the IMERG grid inside the domain")
    return lon_slice, lat_slice, window.grid


def _as_mmh(raw: np.ndarray) -> np.ndarray:
    """float32 with NaN for fill: -9999.9 and any other negative value (rates and errors are never negative)."""
    data = raw.astype(np.float32)
    data[~(data >= 0)] = np.nan
    return data


def _read_granule(path: Path, name: str | None, domain: Domain, variables: Sequence[str]) -> tuple[RemoteFile, dict, LatLonGrid, tuple]:
    """One granule's window: (name info, {variable: (lat, lon) array}, 0.1° grid, stored shape of the main field)."""
    http.require_signature(path, ("hdf5",), "HDF5")
    rf = _parse_or_fail(path, name)
    try:
        with h5py.File(path, "r") as h5:
            precip = _precip_dataset(h5, path, rf.version)
            lon_slice, lat_slice, grid = _window(h5, path, domain, precip.shape)
            fields = {}
            for var in dict.fromkeys(("precipitation", *variables)):
                if var == "precipitation":
                    dataset = precip
                elif var in EXTRA_DATASETS:
                    if EXTRA_DATASETS[var] not in h5:
                        raise DataError(path, f"missing {EXTRA_DATASETS[var]}")
                    dataset = h5[EXTRA_DATASETS[var]]
                else:
                    raise DataError(path, f"unknown IMERG variable {var!r}")
                if dataset.shape != precip.shape:
                    raise DataError(path, f"{dataset.name} has shape {dataset.shape}, precipitation {precip.shape}")
                # The hyperslab: only the domain window is read, then (lon, lat) -> (lat, lon).
                fields[var] = _as_mmh(dataset[0, lon_slice, lat_slice]).T
    except OSError as exc:
        raise DataError(path, f"unreadable HDF5 (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None
    if not np.isfinite(fields["precipitation"]).any():
        raise DataError(path, "precipitation is all fill inside the domain window")
    return rf, fields, grid, precip.shape


def read_imerg(paths: Iterable[str | Path], domain: Domain, variables: Sequence[str] = ("precipitation",)) -> xr.Dataset:
    """IMERG granules over `domain` as a Dataset of (time, lat, lon) float32 fields, mm/h, NaN for fill.

    `variables` may add "randomError" and "probabilityLiquidPrecipitation". Time is each granule's start,
    taken from its file name; granules are sorted by it.
    """
    variables = tuple(dict.fromkeys(("precipitation", *variables)))
    granules = [_read_granule(Path(p), None, domain, variables) for p in paths]
    if not granules:
        raise ValueError("read_imerg needs at least one file")
    granules.sort(key=lambda g: g[0].start)
    starts = [g[0].start for g in granules]
    if len(set(starts)) != len(starts):
        dup = next(g[0].name for g in granules if starts.count(g[0].start) > 1)
        raise DataError(dup, "two files for the same half-hour")
    grid = granules[0][2]
    times = np.array([s.replace(tzinfo=None) for s in starts], dtype="datetime64[ns]")
    coords = {"time": ("time", times, {"standard_name": "time", "long_name": "granule start (UTC)"}), **grid.coords()}
    data_vars = {
        var: (("time", "lat", "lon"), np.stack([g[1][var] for g in granules]), dict(VARIABLE_ATTRS[var]))
        for var in variables
    }
    attrs = {
        "source": "IMERG",
        "versions": ",".join(sorted({g[0].version for g in granules})),
        "files": ",".join(g[0].name for g in granules),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def validate_settings(s: Settings) -> dict:
    return {"domain": s.domain, "limits": s}


def validate(path: str | Path, name: str | None = None, *, domain: Domain, limits) -> None:
    """A downloaded granule: HDF5, the IMERG layout at global size, a named half-hour, plausible data in the
    domain (`limits`: `min_valid_fraction`, `max_rate_mmh`)."""
    path = Path(path)
    _rf, fields, _grid, shape = _read_granule(path, name, domain, ("precipitation",))
    if shape[1:] != GLOBAL_SHAPE:
        raise DataError(path, f"precipitation shape {shape}, expected (1, {GLOBAL_SHAPE[0]}, {GLOBAL_SHAPE[1]}) for a global granule")
    plausible(fields["precipitation"], path, limits)


def plausible(precip: np.ndarray, path, limits) -> None:
    """Refuse a window that is nearly all fill or holds rates no rain reaches (a scaling or units error)."""
    finite = np.isfinite(precip)
    if finite.mean() < limits.min_valid_fraction:
        raise DataError(path, f"precipitation holds data in only {int(finite.sum())} of {finite.size} cells inside the "
                              f"domain (sources.imerg.min_valid_fraction {limits.min_valid_fraction:g})")
    peak = float(precip[finite].max())
    if peak > limits.max_rate_mmh:
        raise DataError(path, f"precipitation reaches {peak:g} mm/h inside the domain, above the plausible "
                              f"{limits.max_rate_mmh:g} mm/h (sources.imerg.max_rate_mmh; wrong units or scaling?)")


def identify(path: str | Path) -> dict:
    """Source, version, span and statistics of the main precipitation field as stored (fill excluded)."""
    path = Path(path)
    http.require_signature(path, ("hdf5",), "HDF5")
    rf = _parse_or_fail(path, None)
    try:
        with h5py.File(path, "r") as h5:
            precip = _precip_dataset(h5, path, rf.version)
            values = precip[...]
            name = precip.name
            product_version = _header(h5).get("ProductVersion", rf.version)
    except OSError as exc:
        raise DataError(path, f"unreadable HDF5 (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from None
    return identity(NAME, product_version, rf, values, field_stats(values, values >= 0), name.lstrip("/"), path,
                    run={"E": "early", "L": "late", "F": "final"}[_run_of(rf.name)])
