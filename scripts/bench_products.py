"""Benchmark the product writers on real rain texture: sizes and times per valid time.

Members are the wettest frame of the BoM radar day in ../shared/data (10-min mm ×6 -> mm/h, block-averaged
to the grid), each shifted a few cells and scaled by log-normal noise, as a stand-in for diffusion members.

    OMP_NUM_THREADS=1 python scripts/bench_products.py [--members 30] [--scale 1]

`--scale k` tiles the field k×k times (scale 4 ≈ a 264×528 domain). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from nrt import config
from nrt.store import Catalog
from nrt.grids import Domain, LatLonGrid, target_grid
from nrt.products import export_ef5, publish_settings, publish_valid_time, quicklook, read_ensemble, summarize, write_ensemble
from nrt.products.summary import write_summary

RADAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "radar" / "bom" / "prcp-c10" / "66" / "2020" / "10" / "31"


def real_rain(shape: tuple[int, int]) -> np.ndarray:
    frames = sorted(RADAR.glob("*.nc"))
    best, wettest = None, -1.0
    for path in frames[::6]:
        with xr.open_dataset(path) as ds:
            values = np.nan_to_num(ds["precipitation"].values) * 6.0  # mm per 10 min -> mm/h
        wet = float(np.mean(values > 0.1))
        if wet > wettest:
            best, wettest = values, wet
    ny, nx = shape
    fy, fx = best.shape[0] // ny, best.shape[1] // nx
    block = best[: ny * fy, : nx * fx].reshape(ny, fy, nx, fx).mean(axis=(1, 3))
    return block.astype(np.float32)


def members(base: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, *base.shape), np.float32)
    for m in range(n):
        shifted = np.roll(base, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        out[m] = shifted * rng.lognormal(0.0, 0.4, base.shape).astype(np.float32)
    return out


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()

    iowa = target_grid(Domain(-96.7, 40.3, -90.1, 43.6))
    grid = LatLonGrid(iowa.res, iowa.lat0, iowa.lon0, iowa.nlat * args.scale, iowa.nlon * args.scale)
    base = np.tile(real_rain(iowa.shape), (args.scale, args.scale))
    ens = xr.DataArray(members(base, args.members)[:, None], dims=("member", "time", "lat", "lon"))
    valid = dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.timezone.utc)
    ref = valid - dt.timedelta(hours=4)
    report = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}", "grid": list(grid.shape),
              "members": args.members, "wet_fraction": round(float(np.mean(base > 0.1)), 3)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        opts = dict(grid=grid, valid_time=valid, forecast_reference_time=ref, lead=8)
        path, report["ensemble_write_s"] = timed(write_ensemble, tmp / "q.nc", ens, quantize=True, **opts)
        report["ensemble_bytes_quantized"] = path.stat().st_size
        raw, report["ensemble_write_unquantized_s"] = timed(write_ensemble, tmp / "raw.nc", ens, quantize=False, **opts)
        report["ensemble_bytes_unquantized"] = raw.stat().st_size
        report["ensemble_bytes_uncompressed"] = int(ens.nbytes)
        stats, report["summarize_s"] = timed(summarize, ens.values[:, 0])
        summ, report["summary_write_s"] = timed(
            write_summary, tmp / "s.nc", stats, grid=grid, valid_time=valid, forecast_reference_time=ref,
        )
        report["summary_bytes"] = summ.stat().st_size
        tifs, report["ef5_export_s"] = timed(export_ef5, path, tmp / "ef5")
        report["ef5_files"], report["ef5_bytes"] = len(tifs), sum(p.stat().st_size for p in tifs)
        _, report["quicklook_s"] = timed(quicklook, read_ensemble(path), tmp / "q.png")

        cfg = config.from_dict({"general": {"workdir": str(tmp / "work")}, "products": {"ef5_export": True}}, "<bench>")
        with Catalog.from_config(cfg, migrate=True) as catalog:
            _, report["publish_valid_time_s"] = timed(
                publish_valid_time, ens, settings=publish_settings(cfg), catalog=catalog, grid=grid, valid_time=valid, cycle_time=valid,
                forecast_reference_time=valid - dt.timedelta(hours=4), lead=8, quicklook=True,
            )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}, indent=1))


if __name__ == "__main__":
    main()
