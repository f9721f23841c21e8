"""The twin's files in the real formats: IMERG V07 and DPR 2A V07 HDF5, GEOS-FP NetCDF4, an ETOPO-style DEM.

The HDF5 layouts come from the real fixture files (`layouts/*.json`, extracted by
`scripts/extract_twin_layouts.py`): every group, dataset, dtype, DimensionNames and attribute, with the
arrays sized as in the full products. Only the part of an array that the twin simulates is written; the
rest of each chunked dataset is never allocated and reads as the dataset's `_FillValue`.
Every file goes through `nrt.io.atomic_path`.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import IMERG_GRID, ImergWindow, LatLonGrid
from nrt.io import atomic_path
from nrt.timeline import isoformat, utc
from nrt.twin.observe import GEOSFP_LATS, GEOSFP_LONS, GEOSFP_NLAT, GEOSFP_NLON, GeosfpWindow
from nrt.twin.orbit import Granule, Orbit, Scans, gps_seconds

GZIP_LEVEL = 6
IMERG_FLOAT_CHUNK = (1, 145, 1800)  # NASA's chunking of the V07 half-hour grids (24 lon blocks) ...
IMERG_SHORT_CHUNK = (1, 291, 1800)  # ... and of its 16-bit grids (12 lon blocks)
DPR_CHUNK_BYTES = 1 << 20


@cache
def layout(name: str) -> dict:
    """The layout table `imerg_v07` or `dpr_v07_fs`."""
    return json.loads(resources.files("nrt.twin").joinpath(f"layouts/{name}.json").read_text())


def attr_value(spec: dict):
    if spec["kind"] == "bytes":
        return np.bytes_(spec["value"].encode("ascii"))
    if spec["kind"] == "scalar":
        return np.array(spec["value"], dtype=spec["dtype"])[()]
    return np.array(spec["value"], dtype=spec["dtype"])


def header(template: dict, **values) -> np.bytes_:
    """A GPM `key=value;` header with some values replaced (keys keep their order)."""
    lines = [line for line in template["value"].split("\n") if line]
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        out.append(f"{key}={values[key]};" if key in values else line)
    return np.bytes_(("\n".join(out) + "\n").encode("ascii"))


def gpm_time(t: datetime) -> str:
    return utc(t).strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc(t).microsecond // 1000:03d}Z"


def _set_attrs(obj, attrs: dict) -> None:
    for key, spec in attrs.items():
        obj.attrs[key] = attr_value(spec)


def _create_from_layout(f: h5py.File, table: dict, sizes: dict, chunks_for) -> dict[str, h5py.Dataset]:
    """Create every group and dataset of `table` (no data written); returns datasets by path."""
    for group, attrs in sorted(table["groups"].items()):
        _set_attrs(f.require_group(group), attrs)
    created = {}
    for path, spec in sorted(table["datasets"].items()):
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "S":
            text = spec["value"].encode("ascii")
            created[path] = f.create_dataset(path, data=np.array([text], dtype=f"S{len(text)}"))
            _set_attrs(created[path], spec["attrs"])
            continue
        shape = tuple(sizes[d] for d in spec["dims"]) if "dims" in spec else tuple(spec["shape"])
        fill = spec["attrs"].get("_FillValue")
        kwargs = {"fillvalue": attr_value(fill)} if fill else {}
        ds = f.create_dataset(
            path, shape=shape, dtype=dtype, chunks=chunks_for(path, shape, dtype), compression="gzip",
            compression_opts=GZIP_LEVEL, **kwargs,
        )
        _set_attrs(ds, spec["attrs"])
        created[path] = ds
    return created


def _attach_scales(created: dict[str, h5py.Dataset], table: dict) -> None:
    """Make the coordinate datasets HDF5 dimension scales and attach them, as the real files do."""
    scales = {}
    for path, spec in table["datasets"].items():
        if "scale_name" in spec:
            created[path].make_scale(spec["scale_name"])
            scales[path.rsplit("/", 1)[-1]] = created[path]
    for path, spec in table["datasets"].items():
        if "scale_name" in spec or "dims" not in spec:
            continue
        for axis, dim in enumerate(spec["dims"]):
            if dim in scales:
                created[path].dims[axis].attach_scale(scales[dim])


# ---------------------------------------------------------------- IMERG


def _imerg_chunks(path: str, shape: tuple, dtype: np.dtype) -> tuple:
    if len(shape) == 3:
        return IMERG_SHORT_CHUNK if dtype.itemsize == 2 else IMERG_FLOAT_CHUNK
    return shape


def write_imerg(path: Path, start: datetime, window: ImergWindow, fields: dict[str, np.ndarray], version: str) -> Path:
    """One IMERG Early half-hour file; `fields` maps Grid dataset names to (lat, lon) arrays on `window.grid`.

    Datasets not in `fields` (the Intermediate group) exist with their full layout and read as fill.
    """
    table = layout("imerg_v07")
    start = utc(start)
    stop = start + timedelta(minutes=29, seconds=59, milliseconds=999)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["FileHeader"] = header(
            table["root_attrs"]["FileHeader"],
            DOI="10.5067/GPM/IMERG/3B-HH-E/07", DOIshortName="3IMERGHHE", FileName=Path(path).name,
            GenerationDateTime=gpm_time(start + timedelta(hours=4)), StartGranuleDateTime=gpm_time(start),
            StopGranuleDateTime=gpm_time(stop), ProductVersion=version,
        )
        f.attrs["FileInfo"] = attr_value(table["root_attrs"]["FileInfo"])
        created = _create_from_layout(f, table, table["dim_sizes"], _imerg_chunks)
        seconds = int(gps_seconds(start))
        created["Grid/time"][:] = seconds
        created["Grid/time_bnds"][:] = [[seconds, seconds + 1800]]
        created["Grid/lat"][:] = IMERG_GRID.lats.astype(np.float32)
        created["Grid/lon"][:] = IMERG_GRID.lons.astype(np.float32)
        created["Grid/lat_bnds"][:] = IMERG_GRID.lat_bounds.astype(np.float32)
        created["Grid/lon_bnds"][:] = IMERG_GRID.lon_bounds.astype(np.float32)
        _attach_scales(created, table)
        for name, values in fields.items():
            ds = created[f"Grid/{name}"]
            ds[0, window.lon_slice, window.lat_slice] = np.asarray(values, dtype=ds.dtype).T
    return Path(path)


# ---------------------------------------------------------------- DPR


def _dpr_chunks(path: str, shape: tuple, dtype: np.dtype) -> tuple:
    per_scan = int(np.prod(shape[1:])) * dtype.itemsize
    return (max(1, min(shape[0], DPR_CHUNK_BYTES // max(per_scan, 1))),) + shape[1:]


def _fill(values: np.ndarray, fill, dtype) -> np.ndarray:
    return np.where(np.isnan(values), fill, values).astype(dtype)


def write_dpr(
    path: Path, orbit: Orbit, g: Granule, scans: Scans, rate: np.ndarray, elevation: np.ndarray, version: str,
) -> Path:
    """One DPR 2A near-real-time granule: the FS swath of `scans`, `rate` (mm/h, NaN = outside the twin)."""
    table = layout("dpr_v07_fs")
    times = scans.times(orbit.epoch)
    nscan, nray = scans.lat.shape
    sizes = dict(table["dim_sizes"], nscan=nscan, nray=nray)
    rain_pixels = int(np.sum(np.nan_to_num(rate) > 0))
    revolution = orbit.seconds(g.start) / orbit.period_s
    node_seconds = math.floor(revolution) * orbit.period_s
    node_lon = math.degrees(orbit.node_longitude + (orbit.node_rate - 7.2921150e-5) * node_seconds)
    node_lon = (node_lon + 180) % 360 - 180
    roots = table["root_attrs"]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["FileHeader"] = header(
            roots["FileHeader"], FileName=Path(path).name, GenerationDateTime=gpm_time(g.end + timedelta(hours=1)),
            StartGranuleDateTime=gpm_time(g.start), StopGranuleDateTime=gpm_time(g.end), GranuleNumber="",
            ProductVersion=version, TimeInterval="HALF_HOUR", GranuleStart="",
        )
        f.attrs["FileInfo"] = attr_value(roots["FileInfo"])
        f.attrs["InputRecord"] = header(roots["InputRecord"], InputFileNames="", InputGenerationDateTimes="")
        f.attrs["JAXAInfo"] = header(
            roots["JAXAInfo"], GranuleFirstScanUTCDateTime=gpm_time(g.start), GranuleLastScanUTCDateTime=gpm_time(g.end),
            FirstScanLat=f"{scans.sc_lat[0]:.6f}", FirstScanLon=f"{scans.sc_lon[0]:.6f}",
            LastScanLat=f"{scans.sc_lat[-1]:.6f}", LastScanLon=f"{scans.sc_lon[-1]:.6f}",
            NumberOfRainPixelsFS=str(rain_pixels), NumberOfRainPixelsHS="0", ProcessingMode="NRT",
        )
        f.attrs["NavigationRecord"] = header(
            roots["NavigationRecord"], LongitudeOnEquator=f"{node_lon:.6f}",
            UTCDateTimeOnEquator=gpm_time(orbit.epoch + timedelta(seconds=node_seconds)),
        )
        created = _create_from_layout(f, table, sizes, _dpr_chunks)
        f["FS"].attrs["FS_SwathHeader"] = header(
            table["groups"]["FS"]["FS_SwathHeader"], NumberScansGranule=str(nscan), NumberPixels=str(nray),
        )
        days = times.astype("datetime64[D]")
        seconds_of_day = (times - days).astype("timedelta64[ms]").astype(np.int64) / 1000.0
        years = times.astype("datetime64[Y]")
        scan_time = {
            "Year": years.astype(np.int64) + 1970,
            "Month": times.astype("datetime64[M]").astype(np.int64) % 12 + 1,
            "DayOfMonth": (days - times.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1,
            "DayOfYear": (days - years.astype("datetime64[D]")).astype(np.int64) + 1,
            "Hour": (seconds_of_day // 3600).astype(np.int64),
            "Minute": (seconds_of_day % 3600 // 60).astype(np.int64),
            "Second": (seconds_of_day % 60 // 1).astype(np.int64),
            "MilliSecond": np.round(seconds_of_day * 1000).astype(np.int64) % 1000,
            "SecondOfDay": seconds_of_day,
        }
        for name, values in scan_time.items():
            ds = created[f"FS/ScanTime/{name}"]
            ds[:] = values.astype(ds.dtype)
        created["FS/Latitude"][:] = scans.lat.astype(np.float32)
        created["FS/Longitude"][:] = scans.lon.astype(np.float32)
        rate_filled = _fill(rate, -9999.9, np.float32)
        created["FS/SLV/precipRateNearSurface"][:] = rate_filled
        created["FS/SLV/precipRateESurface"][:] = rate_filled
        raining = np.nan_to_num(rate) > 0
        created["FS/PRE/flagPrecip"][:] = np.where(np.isnan(rate), -9999, np.where(raining, 11, 0)).astype(np.int32)
        kind = np.where(rate >= 10.0, 20000000, 10000000)  # convective above 10 mm/h, else stratiform
        created["FS/CSF/typePrecip"][:] = np.where(np.isnan(rate), -9999, np.where(raining, kind, -1111)).astype(np.int32)
        created["FS/PRE/elevation"][:] = _fill(elevation, -9999.9, np.float32)
        created["FS/PRE/landSurfaceType"][:] = np.where(np.isnan(elevation), -9999, 100).astype(np.int32)
        gps = gps_seconds(orbit.epoch) + scans.seconds
        navigation = {
            "scLat": scans.sc_lat, "scLon": scans.sc_lon, "scAlt": np.full(nscan, orbit.altitude_km * 1000.0),
            "dprAlt": np.full(nscan, orbit.altitude_km * 1000.0), "timeMidScan": gps,
            "timeMidScanOffset": np.full(nscan, 0.34323), "scHeadingGround": scans.heading,
            "scHeadingOrbital": scans.heading,
        }
        for name, values in navigation.items():
            ds = created[f"FS/navigation/{name}"]
            ds[:] = values.astype(ds.dtype)
        status = f["FS/scanStatus"]
        status["FractionalGranuleNumber"][:] = 144 + (gps - gps_seconds(orbit.epoch)) / orbit.period_s
        for name in ("dataQuality", "missing", "geoError", "geoWarning", "modeStatus", "pointingStatus", "limitErrorFlag", "dataWarning"):
            status[name][:] = 0
        status["operationalMode"][:] = 1
        status["acsModeMidScan"][:] = 4
        status["SCorientation"][:] = 0
    return Path(path)


# ---------------------------------------------------------------- GEOS-FP

GEOSFP_VARIABLES = {
    "tavg1_2d_slv_Nx": {
        "TQV": ("total_precipitable_water_vapor", "kg m-2"),
        "TQL": ("total_precipitable_liquid_water", "kg m-2"),
        "T2M": ("2-meter_air_temperature", "K"),
        "QV2M": ("2-meter_specific_humidity", "kg kg-1"),
        "U10M": ("10-meter_eastward_wind", "m s-1"),
        "V10M": ("10-meter_northward_wind", "m s-1"),
        "SLP": ("sea_level_pressure", "Pa"),
        "PS": ("surface_pressure", "Pa"),
        "T850": ("air_temperature_at_850_hPa", "K"),
        "U850": ("eastward_wind_at_850_hPa", "m s-1"),
        "V850": ("northward_wind_at_850_hPa", "m s-1"),
        "OMEGA500": ("omega_at_500_hPa", "Pa s-1"),
    },
    "tavg1_2d_flx_Nx": {
        "PRECTOT": ("total_precipitation", "kg m-2 s-1"),
        "PRECCON": ("convective_precipitation", "kg m-2 s-1"),
    },
}
GEOSFP_FILL = np.float32(1.0e15)
GEOSFP_CHUNKS = (1, 91, 144)


def write_geosfp(path: Path, collection: str, init: datetime, valid: datetime, fields: dict, window: GeosfpWindow) -> Path:
    """One hourly-mean forecast file on the full 1152 x 721 grid; only `window` is written, the rest is fill."""
    valid = utc(valid)
    with atomic_path(path) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
            nc.setncatts({
                "Title": f"GEOS-FP forecast {collection} (nrt synthetic twin)",
                "Conventions": "CF-1.7",
                "Institution": "nrt synthetic twin, after NASA Global Modeling and Assimilation Office",
                "Source": "nrt.twin",
                "Filename": Path(path).name,
                "History": f"Forecast initialised {isoformat(init)}",
                "Format": "NetCDF-4/HDF-5",
                "SpatialCoverage": "global",
            })
            nc.createDimension("lon", GEOSFP_NLON)
            nc.createDimension("lat", GEOSFP_NLAT)
            nc.createDimension("time", None)
            lon = nc.createVariable("lon", "f8", ("lon",))
            lon.setncatts({"long_name": "longitude", "units": "degrees_east", "standard_name": "longitude"})
            lon[:] = GEOSFP_LONS
            lat = nc.createVariable("lat", "f8", ("lat",))
            lat.setncatts({"long_name": "latitude", "units": "degrees_north", "standard_name": "latitude"})
            lat[:] = GEOSFP_LATS
            time = nc.createVariable("time", "i4", ("time",))
            time.setncatts({
                "long_name": "time", "units": f"minutes since {valid:%Y-%m-%d %H:%M:%S}",
                "time_increment": np.int32(10000), "begin_date": np.int32(int(f"{valid:%Y%m%d}")),
                "begin_time": np.int32(int(f"{valid:%H%M%S}")),
            })
            time[0] = 0
            for name, (long_name, units) in GEOSFP_VARIABLES[collection].items():
                var = nc.createVariable(
                    name, "f4", ("time", "lat", "lon"), zlib=True, complevel=2, chunksizes=GEOSFP_CHUNKS,
                    fill_value=GEOSFP_FILL,
                )
                var.setncatts({
                    "long_name": long_name.replace("_", " "), "standard_name": long_name, "units": units,
                    "missing_value": GEOSFP_FILL, "fmissing_value": GEOSFP_FILL, "scale_factor": np.float32(1.0),
                    "add_offset": np.float32(0.0), "vmin": np.float32(-GEOSFP_FILL), "vmax": GEOSFP_FILL,
                    "valid_range": np.array([-GEOSFP_FILL, GEOSFP_FILL], dtype=np.float32),
                })
                var.set_auto_maskandscale(False)
                var[0, window.lat_slice, window.lon_slice] = fields[name]
    return Path(path)


# ---------------------------------------------------------------- DEM and truth


def write_dem(path: Path, grid: LatLonGrid, elevation: np.ndarray) -> Path:
    """ETOPO 2022 style: `lat`, `lon` (cell centres, ascending) and `z` (m above sea level), float32."""
    with atomic_path(path) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
            nc.setncatts({
                "title": "nrt synthetic twin relief (ETOPO 2022 layout)",
                "Conventions": "CF-1.8",
                "source": "nrt.twin: synthetic relief, not a real elevation model",
                "geospatial_lat_resolution": grid.res,
                "geospatial_lon_resolution": grid.res,
            })
            nc.createDimension("lat", grid.nlat)
            nc.createDimension("lon", grid.nlon)
            lat = nc.createVariable("lat", "f8", ("lat",))
            lat.setncatts({"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"})
            lat[:] = grid.lats
            lon = nc.createVariable("lon", "f8", ("lon",))
            lon.setncatts({"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"})
            lon[:] = grid.lons
            crs = nc.createVariable("crs", "i4")
            crs.setncatts({"grid_mapping_name": "latitude_longitude", "epsg_code": "EPSG:4326"})
            z = nc.createVariable("z", "f4", ("lat", "lon"), zlib=True, complevel=4, chunksizes=(min(grid.nlat, 512), min(grid.nlon, 512)),
                                  fill_value=np.float32(-99999.0))
            z.setncatts({"standard_name": "height_above_mean_sea_level", "long_name": "z", "units": "m", "grid_mapping": "crs"})
            z[:] = elevation
    return Path(path)


def write_truth(path: Path, grid: LatLonGrid, starts: list[datetime], rain: np.ndarray, winds: np.ndarray, attrs: dict) -> Path:
    """One day of truth as CF-NetCDF: `precipitation` (time, lat, lon) mm/h over each half-hour, and the wind."""
    times = np.array([np.datetime64(utc(t).replace(tzinfo=None), "ns") for t in starts])
    ds = xr.Dataset(
        {
            "precipitation": (("time", "lat", "lon"), rain.astype(np.float32), {
                "standard_name": "rainfall_rate", "long_name": "true precipitation rate over [time, time + 30 min)",
                "units": "mm h-1",
            }),
            "u_wind": ("time", winds[:, 0].astype(np.float32), {"standard_name": "eastward_wind", "long_name": "advecting wind, eastward", "units": "m s-1"}),
            "v_wind": ("time", winds[:, 1].astype(np.float32), {"standard_name": "northward_wind", "long_name": "advecting wind, northward", "units": "m s-1"}),
        },
        coords={"time": ("time", times, {"standard_name": "time", "long_name": "start of the half-hour"}), **grid.coords()},
        attrs={"Conventions": "CF-1.8", "title": "nrt synthetic twin: truth", **attrs},
    )
    encoding = {
        "precipitation": {"zlib": True, "complevel": 4, "chunksizes": (1, grid.nlat, grid.nlon)},
        "time": {"units": "minutes since 1970-01-01 00:00:00", "calendar": "standard", "dtype": "int64"},
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return Path(path)


def read_truth(root: Path, start: datetime | None = None, end: datetime | None = None) -> xr.DataArray:
    """The truth (time, lat, lon) in mm/h from a mirror tree, for half-hours starting in [start, end)."""
    files = sorted((Path(root) / "truth").glob("nrt_twin_truth_*.nc"))
    if not files:
        raise DataError(Path(root) / "truth", "no truth files (is this a twin mirror tree?)")
    days = []
    for file in files:
        with xr.open_dataset(file, engine="netcdf4") as ds:
            days.append(ds["precipitation"].load())
    rain = xr.concat(days, dim="time")
    times = rain["time"].values
    keep = np.ones(times.shape, dtype=bool)
    if start is not None:
        keep &= times >= np.datetime64(utc(start).replace(tzinfo=None), "ns")
    if end is not None:
        keep &= times < np.datetime64(utc(end).replace(tzinfo=None), "ns")
    return rain.isel(time=np.flatnonzero(keep))
