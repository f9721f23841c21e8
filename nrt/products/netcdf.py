"""CF-1.8 NetCDF4 files: the ensemble, its summary and its accumulations, plus their names on disk.

Layout (DESIGN.md, "Array order"): in memory an ensemble is (member, time, lat, lon); on disk it is
(time, realization, lat, lon) with `time` the unlimited (record) dimension, so `cdo mergetime`, `ncrcat`
and `xarray.open_mfdataset` concatenate products in time. `write_dataset` turns the memory layout into the
file layout and `open_product` turns it back, so code above the I/O edge only sees `member`.

Every file shares one coordinate block (`cf_coords`): `time` with half-hour bounds (the value is the start
of the half hour, as IMERG names granules), `lat`/`lon` with bounds, `forecast_reference_time` (start of
the IMERG granule the nowcast came from) and `forecast_period` (valid time minus that) as auxiliary
coordinates along `time` (so concatenating two cycles' files keeps both references instead of one), and
a `crs` grid-mapping variable (WGS 84 latitude_longitude, from pyproj).

`Conventions` says CF-1.8: the files use nothing newer, and cfchecks 4.1 (the checker users run) knows
CF up to 1.8 and rejects any newer label outright. Files are written through `nrt.io.atomic_path`: a crash
leaves at most a hidden `.name.part-*` file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

import nrt
from nrt.errors import DataError
from nrt.grids import LatLonGrid
from nrt.io import atomic_path
from nrt.timeline import HALF_HOUR, isoformat, utc

CONVENTIONS = "CF-1.8"
TIME_UNITS = "minutes since 1970-01-01 00:00:00"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
PRECIP_VAR = "precipitation"
INPUT_VAR = "input_precipitation"  # the verification baseline, see ensemble_dataset
MEMBER_DIM, REALIZATION_DIM = "member", "realization"  # in memory, in files
# least_significant_digit=2 keeps 0.01 mm/h: netCDF4 rounds to a power of two finer than 10**-2 (1/128),
# so the stored error is at most 1/256 mm/h and the zeroed low mantissa bits deflate well.
QUANTIZE_DIGITS = 2

ENSEMBLE, SUMMARY, QUICKLOOK = "ensemble", "summary", "quicklook"


def accumulation_kind(hours: int) -> str:
    """Product kind of the `hours`-hour accumulation file, e.g. `accumulation_3h`."""
    return f"accumulation_{int(hours)}h"


def _suffix(kind: str) -> str:
    return ".png" if kind == QUICKLOOK else ".nc"


def _stamp(t: dt.datetime) -> str:
    return utc(t).strftime("%Y%m%dT%H%MZ")


def product_path(product_dir: Path, kind: str, valid_time: dt.datetime, cycle_time: dt.datetime) -> Path:
    """`<dir>/YYYY/MM/DD/nrt_<kind>_<valid>_c<cycle>.<ext>`: one file per kind, valid time and cycle, dated by valid time."""
    valid = utc(valid_time)
    name = f"nrt_{kind}_{_stamp(valid)}_c{_stamp(cycle_time)}{_suffix(kind)}"
    return Path(product_dir) / f"{valid:%Y}" / f"{valid:%m}" / f"{valid:%d}" / name


def epoch_minutes(t: dt.datetime) -> float:
    return (utc(t) - EPOCH) / dt.timedelta(minutes=1)


def crs_attrs() -> dict:
    """CF grid-mapping attributes of WGS 84 longitude/latitude (EPSG:4326), as pyproj spells them."""
    from pyproj import CRS

    return CRS.from_epsg(4326).to_cf()


def provenance(input_granules: Sequence[str], method: str, checkpoint_sha256: str, nowcast_method: str | None,
               degraded: Sequence[str], check) -> dict:
    """The provenance attributes of a cycle's products (see `global_attrs`); `check` is the downscaling's
    input check (`nrt.downscale.InputVerdict`), None when it did not run."""
    return {
        "input_granules": ",".join(input_granules),
        "method": method,
        "checkpoint_sha256": checkpoint_sha256,
        "nowcast_method": nowcast_method or "none",
        "software_version": nrt.__version__,
        "degraded": ",".join(degraded) or "none",
        "input_check": (check.reason or "ok") if check else "not_run",
        "input_max_abs_z": f"{check.max_z:.2f}" if check else "nan",
    }


def global_attrs(title: str, attrs: Mapping | None, created: dt.datetime | None = None) -> dict:
    """CF global attributes plus provenance; lists become space-separated text, datetimes ISO text.

    Provenance keys the pipeline passes: `input_granules` (names), `checkpoint_sha256`, `nowcast_method`,
    `degraded` (flags; empty when the cycle ran clean), `cycle_time`.
    """
    created = utc(created or dt.datetime.now(dt.timezone.utc))
    out = {
        "Conventions": CONVENTIONS,
        "title": title,
        "institution": "nrt near-real-time precipitation service",
        "source": "IMERG Early half-hourly precipitation, pysteps nowcast, CorrDiff-style residual diffusion downscaling",
        "history": f"{isoformat(created)} written by nrt {nrt.__version__}",
        "references": "Mardani et al. (2025), Residual corrective diffusion modeling for km-scale atmospheric downscaling",
        "software_version": nrt.__version__,
        "input_granules": "",
        "checkpoint_sha256": "",
        "nowcast_method": "",
        "degraded": "",
    }
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            value = isoformat(value)
        elif isinstance(value, bool):
            value = int(value)  # netCDF has no boolean attribute type
        elif isinstance(value, (list, tuple, set)):
            value = " ".join(str(v) for v in value)
        out[key] = value
    return out


def cf_coords(
    grid: LatLonGrid,
    valid_time: dt.datetime,
    forecast_reference_time: dt.datetime,
) -> tuple[dict, dict]:
    """Coordinates and auxiliary variables (bounds, crs) shared by the ensemble and summary files."""
    valid, reference = utc(valid_time), utc(forecast_reference_time)
    if valid < reference:
        raise ValueError(f"valid time {isoformat(valid)} precedes the forecast reference time {isoformat(reference)}")
    time_attrs = {"units": TIME_UNITS, "calendar": "standard"}
    coords = grid.coords()
    coords["lat"][2].update(bounds="lat_bnds", long_name="latitude of the cell centre")
    coords["lon"][2].update(bounds="lon_bnds", long_name="longitude of the cell centre")
    coords.update(
        time=("time", [epoch_minutes(valid)], {"standard_name": "time", "long_name": "start of the half hour", "axis": "T", "bounds": "time_bnds", **time_attrs}),
        forecast_reference_time=(
            "time",
            [epoch_minutes(reference)],
            {"standard_name": "forecast_reference_time", "long_name": "start of the newest IMERG Early granule used", **time_attrs},
        ),
        forecast_period=("time", [(valid - reference) / dt.timedelta(minutes=1)], {"standard_name": "forecast_period", "units": "minutes"}),
    )
    aux = {
        "time_bnds": (("time", "bnds"), [[epoch_minutes(valid), epoch_minutes(valid + HALF_HOUR)]]),
        "lat_bnds": (("lat", "bnds"), grid.lat_bounds),
        "lon_bnds": (("lon", "bnds"), grid.lon_bounds),
        "crs": ((), np.int32(0), crs_attrs()),
    }
    return coords, aux


def _encoding(ds: xr.Dataset, data_vars: list[str], deflate_level: int, quantize: bool, chunks: dict) -> dict:
    enc = {}
    for name in ds.variables:
        if name in data_vars:
            var = ds[name]
            spec = {
                "zlib": deflate_level > 0,
                "complevel": deflate_level,
                "shuffle": True,
                "chunksizes": tuple(chunks.get(d, ds.sizes[d]) for d in var.dims),
                "_FillValue": np.float32(np.nan),
                "dtype": "float32",
            }
            if quantize and var.attrs.get("units") in ("mm h-1", "mm"):
                spec["least_significant_digit"] = QUANTIZE_DIGITS
            enc[name] = spec
        else:
            enc[name] = {"_FillValue": None}  # coordinates and bounds never hold missing values
    return enc


def to_file_layout(ds: xr.Dataset) -> xr.Dataset:
    """The on-disk layout: `member` renamed `realization`, and `time` first, then `realization`/`threshold`."""
    if MEMBER_DIM in ds.dims:
        ds = ds.rename({MEMBER_DIM: REALIZATION_DIM})
    leading = [d for d in ("time", REALIZATION_DIM, "threshold") if d in ds.dims]
    return ds.transpose(*leading, ...)


def to_memory_layout(ds: xr.Dataset) -> xr.Dataset:
    """The in-memory layout of a product read from disk: (member, time, lat, lon)."""
    if REALIZATION_DIM in ds.dims:
        ds = ds.rename({REALIZATION_DIM: MEMBER_DIM}).transpose(MEMBER_DIM, ...)
    return ds


def write_dataset(path: Path, ds: xr.Dataset, data_vars: list[str], *, deflate_level: int, quantize: bool, chunks: dict) -> Path:
    """Write in the file layout, `time` unlimited, through a temp name then rename, so readers never see a partial file.

    `ds` may be in the memory layout (`member`); `chunks` names dimensions as `ds` does.
    """
    path = Path(path)
    ds = to_file_layout(ds).copy()
    chunks = {REALIZATION_DIM if d == MEMBER_DIM else d: n for d, n in chunks.items()}
    encoding = _encoding(ds, data_vars, deflate_level, quantize, chunks)
    for name in ds.variables:
        if name not in data_vars:
            ds.variables[name].encoding["coordinates"] = None  # only data variables list the auxiliary coordinates
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding, unlimited_dims=["time"])
    return path


def ensemble_dataset(
    precip: xr.DataArray,
    *,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    lead: int,
    attrs: Mapping | None = None,
    input_precipitation: np.ndarray | None = None,
) -> xr.Dataset:
    """The ensemble as a CF dataset in the memory layout (pure): `precip` is (member, time=1, lat, lon) or (member, lat, lon), mm/h.

    `input_precipitation` ([time=1,] lat, lon, mm/h), when given, is the model's coarse input bilinearly
    upsampled (IMERG at lead 0, the nowcast member mean later): the baseline `nrt.verify` scores beside the ensemble.
    """
    if precip.ndim == 3:
        precip = precip.expand_dims("time", axis=1)
    if precip.dims != ("member", "time", "lat", "lon") or precip.shape[1] != 1 or precip.shape[2:] != grid.shape:
        raise ValueError(f"ensemble must be (member, time=1, lat, lon) on a {grid.shape} grid, got {dict(precip.sizes)}")
    expected = utc(forecast_reference_time) + lead * HALF_HOUR
    if utc(valid_time) != expected:
        raise ValueError(f"lead {lead} from {isoformat(forecast_reference_time)} gives {isoformat(expected)}, not {isoformat(valid_time)}")
    coords, aux = cf_coords(grid, valid_time, forecast_reference_time)
    members = precip["member"].values.astype(np.int32) if "member" in precip.coords else np.arange(precip.shape[0], dtype=np.int32)
    coords[MEMBER_DIM] = (MEMBER_DIM, members, {"standard_name": "realization", "long_name": "ensemble member", "units": "1"})
    variable = (
        ("member", "time", "lat", "lon"),
        np.asarray(precip.values, dtype=np.float32),
        {
            "standard_name": "lwe_precipitation_rate",
            "long_name": "surface precipitation rate, ensemble member",
            "units": "mm h-1",
            "cell_methods": "time: mean",
            "grid_mapping": "crs",
        },
    )
    data = {PRECIP_VAR: variable}
    if input_precipitation is not None:
        # No standard name: `lwe_precipitation_rate` names the ensemble alone, so ds.cf[...] finds one variable.
        input_attrs = {k: v for k, v in variable[2].items() if k != "standard_name"}
        data[INPUT_VAR] = (
            ("time", "lat", "lon"),
            np.asarray(input_precipitation, dtype=np.float32).reshape(1, *grid.shape),
            {**input_attrs, "long_name": "model input precipitation rate (IMERG Early or nowcast), bilinearly upsampled"},
        )
    meta = {**(attrs or {}), "lead_half_hours": int(lead), "valid_time": utc(valid_time)}
    return xr.Dataset({**data, **aux}, coords=coords, attrs=global_attrs("nrt precipitation ensemble", meta))


def write_ensemble(
    path: str | Path,
    precip: xr.DataArray,
    *,
    grid: LatLonGrid,
    valid_time: dt.datetime,
    forecast_reference_time: dt.datetime,
    lead: int,
    attrs: Mapping | None = None,
    quantize: bool = True,
    deflate_level: int = 4,
    input_precipitation: np.ndarray | None = None,
) -> Path:
    """Write one valid time's ensemble as CF-1.8 NetCDF4 (time, realization, lat, lon), deflated + shuffled, chunked one member by one map.

    `lead` counts half-hours from `forecast_reference_time` (the IMERG start S) to `valid_time`; the two must
    agree. With `quantize`, values keep 0.01 mm/h (error <= 1/256 mm/h). Returns `path`.
    """
    ds = ensemble_dataset(precip, grid=grid, valid_time=valid_time, forecast_reference_time=forecast_reference_time, lead=lead, attrs=attrs,
                          input_precipitation=input_precipitation)
    chunks = {"member": 1, "time": 1}
    return write_dataset(Path(path), ds, data_vars(ds), deflate_level=deflate_level, quantize=quantize, chunks=chunks)


def data_vars(ds: xr.Dataset) -> list[str]:
    """The ensemble file's data variables: the members, and the upsampled input when present."""
    return [name for name in (PRECIP_VAR, INPUT_VAR) if name in ds]


def open_product(path: str | Path, variable: str = PRECIP_VAR) -> xr.Dataset:
    """Open an nrt NetCDF product in the memory layout (loaded, file closed); DataError if it is not one."""
    path = Path(path)
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a readable NetCDF file ({exc})") from None
    if variable not in ds:
        raise DataError(path, f"no '{variable}' variable: not an nrt product of this kind")
    return to_memory_layout(ds)


def read_ensemble(path: str | Path) -> xr.DataArray:
    """The ensemble (member, time, lat, lon) mm/h with its coordinates and the file's global attributes."""
    ds = open_product(path)
    precip = ds[PRECIP_VAR]
    precip.attrs = {**ds.attrs, **precip.attrs}
    return precip


def grid_of(ds: xr.Dataset | xr.DataArray) -> LatLonGrid:
    """The regular grid of a product's lat/lon coordinates."""
    lats, lons = ds["lat"].values, ds["lon"].values
    res = float(np.round(np.median(np.diff(lats)) if lats.size > 1 else np.median(np.diff(lons)), 6))
    return LatLonGrid(res, float(lats[0]), float(lons[0]), lats.size, lons.size)


def times_of(ds: xr.Dataset | xr.DataArray) -> list[dt.datetime]:
    """The `time` coordinate as tz-aware UTC datetimes."""
    values = ds["time"].values.astype("datetime64[s]").astype(np.int64)
    return [EPOCH + dt.timedelta(seconds=int(s)) for s in values]
