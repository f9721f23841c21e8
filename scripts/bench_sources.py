"""Benchmark the source readers on real-size inputs: `python scripts/bench_sources.py [--repeat N]`.

- IMERG: a global (1, 3600, 1800) granule chunked and gzipped like NASA's, read over the default domain.
- DPR: a full orbit of 7,936 scans × 49 rays crossing the domain, read then gridded to 0.05°.
- GEOS-FP: two hourly files (slv 7 variables + flx 1) on the 1152 × 721 grid, interpolated and regridded.
- DEM: an ETOPO-style 30″ netCDF over the domain plus 1°, block-averaged to 0.05°.
Prints one line per stage with the best wall time of N runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import netCDF4
import numpy as np

from nrt import config
from nrt.grids import IMERG_GRID, target_grid
from nrt.sources import dem, dpr, geosfp, imerg


def write_imerg(path: Path) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        grid = h5.create_group("Grid")
        grid["lat"] = IMERG_GRID.lats.astype(np.float32)
        grid["lon"] = IMERG_GRID.lons.astype(np.float32)
        for name in ("precipitation", "randomError"):
            ds = grid.create_dataset(name, (1, 3600, 1800), np.float32, chunks=(1, 145, 1800), compression="gzip", fillvalue=np.float32(-9999.9))
            ds[0] = rng.gamma(0.3, 2.0, (3600, 1800)).astype(np.float32)  # every chunk written, as in a real granule


def write_dpr(path: Path, centre_lat: float, centre_lon: float) -> None:
    nscan, nray = 7936, 49
    t = np.arange(nscan) / nscan  # one orbit; scan 800 passes over the domain centre going north
    phase = np.arcsin(centre_lat / 65) - 2 * np.pi * t[800]
    lat = (65 * np.sin(2 * np.pi * t + phase))[:, None] + np.zeros((1, nray))
    lon = (centre_lon + 360 * (t - t[800]))[:, None] + 0.045 * (np.arange(nray) - 24)[None, :]  # ~5 km rays
    lon = (lon + 180) % 360 - 180
    rng = np.random.default_rng(1)
    rate = np.where(rng.random((nscan, nray)) < 0.1, rng.gamma(0.8, 3.0, (nscan, nray)), 0).astype(np.float32)
    start = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
    times = [start + timedelta(seconds=0.6 * k) for k in range(nscan)]
    with h5py.File(path, "w") as h5:
        fs = h5.create_group("FS")
        fs["Latitude"] = lat.astype(np.float32)
        fs["Longitude"] = lon.astype(np.float32)
        fs.create_group("SLV")["precipRateNearSurface"] = rate
        st = fs.create_group("ScanTime")
        for key, attr in (("Year", "year"), ("Month", "month"), ("DayOfMonth", "day"), ("Hour", "hour"), ("Minute", "minute"), ("Second", "second")):
            st[key] = np.array([getattr(x, attr) for x in times], np.int16)
        st["MilliSecond"] = np.array([x.microsecond // 1000 for x in times], np.int16)


def write_geosfp(path: Path, variables: list[str]) -> None:
    lat = geosfp.LAT0 + geosfp.DLAT * np.arange(geosfp.NLAT)
    lon = geosfp.LON0 + geosfp.DLON * np.arange(geosfp.NLON)
    rng = np.random.default_rng(2)
    with netCDF4.Dataset(path, "w") as nc:
        for name, values in (("time", [0]), ("lat", lat), ("lon", lon)):
            nc.createDimension(name, len(values))
            nc.createVariable(name, "f8", (name,))[:] = values
        for var in variables:
            v = nc.createVariable(var, "f4", ("time", "lat", "lon"), zlib=True, fill_value=np.float32(1e15))
            v[0] = rng.standard_normal((lat.size, lon.size)).astype(np.float32)


def write_etopo(path: Path, grid) -> None:
    west, south, east, north = grid.extent
    res = 1 / 120
    lat = np.arange(south - 1 + res / 2, north + 1, res)
    lon = np.arange(west - 1 + res / 2, east + 1, res)
    with netCDF4.Dataset(path, "w") as nc:
        for name, values in (("lat", lat), ("lon", lon)):
            nc.createDimension(name, values.size)
            nc.createVariable(name, "f8", (name,))[:] = values
        nc.createVariable("z", "f4", ("lat", "lon"), zlib=True)[:] = np.random.default_rng(3).normal(300, 50, (lat.size, lon.size))


def timed(label: str, repeat: int, func) -> None:
    best = min(_once(func) for _ in range(repeat))
    print(f"{label:<52} best {best * 1000:8.1f} ms", flush=True)


def _once(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cfg = config.load(None)
    domain = cfg.domain.box()
    grid = target_grid(domain)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        granule = tmp / imerg.filename(datetime(2024, 6, 1, 12, tzinfo=timezone.utc))
        write_imerg(granule)
        timed("IMERG read_imerg, global granule, domain window", args.repeat, lambda: imerg.read_imerg([granule], domain))
        timed("IMERG read_imerg + randomError", args.repeat, lambda: imerg.read_imerg([granule], domain, ("randomError",)))

        swath_file = tmp / dpr.nrt_filename(datetime(2024, 6, 1, 12, tzinfo=timezone.utc), datetime(2024, 6, 1, 13, 19, tzinfo=timezone.utc))
        write_dpr(swath_file, *domain.center[::-1])
        swath = dpr.read_dpr(swath_file)
        covered = int(dpr.grid_swath(swath, grid).coverage.sum())
        print(f"(the synthetic orbit covers {covered} of {grid.nlat * grid.nlon} target cells)")
        timed("DPR read_dpr, full orbit 7936 x 49", args.repeat, lambda: dpr.read_dpr(swath_file))
        timed("DPR grid_swath, full orbit -> 0.05 deg domain", args.repeat, lambda: dpr.grid_swath(swath, grid))

        hours = geosfp.geosfp_hours_for(datetime(2024, 6, 1, 12, tzinfo=timezone.utc))
        init = datetime(2024, 6, 1, 6, tzinfo=timezone.utc)
        files = {}
        for hour in hours:
            slv = tmp / geosfp.forecast_filename(geosfp.SLV, init, hour)
            flx = tmp / geosfp.forecast_filename(geosfp.FLX, init, hour)
            write_geosfp(slv, cfg.sources.geosfp.slv_variables)
            write_geosfp(flx, cfg.sources.geosfp.flx_variables)
            files[hour] = [slv, flx]
        variables = cfg.sources.geosfp.slv_variables + cfg.sources.geosfp.flx_variables
        timed("GEOS-FP read_geosfp, 8 variables, 2 hours", args.repeat, lambda: geosfp.read_geosfp(files, datetime(2024, 6, 1, 12, tzinfo=timezone.utc), grid, variables))

        etopo = tmp / "etopo.nc"
        write_etopo(etopo, grid)
        timed("DEM load_dem, 30 arc-second netCDF, no cache", args.repeat, lambda: dem.load_dem(etopo, grid))
        dem.load_dem(etopo, grid, cache_dir=tmp / "cache")
        timed("DEM load_dem, from the cache", args.repeat, lambda: dem.load_dem(etopo, grid, cache_dir=tmp / "cache"))


if __name__ == "__main__":
    main()
