"""Benchmark `nrt twin generate`: one day of the default demo domain, files included, on at most 2 CPU cores.

    python scripts/bench_twin.py [--day 2024-06-01] [--repeat 3] [--quicklook docs/figures/twin_quicklook.png]

Prints one JSON line per run (wall and CPU seconds, seconds per stage, files and bytes written, peak RSS) and a
summary. `--quicklook` draws the truth, IMERG Early, a DPR swath, GEOS-FP and the DEM from the last run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402 - the thread limits must precede numpy
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from nrt import config  # noqa: E402
from nrt.timeline import utc  # noqa: E402
from nrt.twin import naming  # noqa: E402
from nrt.twin.generate import generate  # noqa: E402
from nrt.twin.spec import TwinSpec  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_bytes(root: Path) -> int:
    seen, total = set(), 0
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if stat.st_ino not in seen:  # the GES DISC copies are hard links
                seen.add(stat.st_ino)
                total += stat.st_size
    return total


def quicklook(root: Path, spec: TwinSpec, out: Path) -> None:
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr
    from matplotlib.colors import LogNorm

    from nrt.sources import dpr, geosfp, imerg
    from nrt.grids import target_grid
    from nrt.twin.writers import read_truth

    swath_file = next((root / naming.DPR_FOLDER).glob("*.RT-H5"), None)
    when = dpr.parse_name(swath_file.name).start if swath_file else spec.start + timedelta(hours=12)
    half_hour = when.replace(minute=when.minute // 30 * 30, second=0, microsecond=0)
    truth = read_truth(root, half_hour, half_hour + timedelta(minutes=30))[0]
    grid = target_grid(spec.domain)
    box = spec.domain
    estimate = imerg.read_imerg([root / naming.imerg_pps_path(half_hour, spec.imerg.version)], box.buffered(3))
    valid = half_hour.replace(minute=30)
    with xr.open_dataset(root / naming.geosfp_forecast_path(geosfp.FLX, valid.replace(hour=valid.hour // 6 * 6, minute=0), valid)) as ds:
        prectot = (ds.PRECTOT[0] * 3600).sel(lat=slice(box.south - 3, box.north + 3), lon=slice(box.west - 3, box.east + 3)).load()
    with xr.open_dataset(root / naming.DEM_FILE) as ds:
        relief = ds.z[::5, ::5].load()

    norm = LogNorm(0.1, 50)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    panels = [
        (axes[0, 0], truth, f"truth {half_hour:%Y-%m-%d %H:%M} UTC (0.05°)"),
        (axes[0, 1], estimate.precipitation[0], "IMERG Early (0.1°, degraded)"),
        (axes[1, 0], prectot, "GEOS-FP PRECTOT forecast (mm/h)"),
    ]
    for ax, field, title in panels:
        values = field.where(field > 0)
        mesh = ax.pcolormesh(field.lon, field.lat, values, norm=norm, cmap="viridis")
        ax.set_title(title)
    fig.colorbar(mesh, ax=axes[:, 0], label="mm/h", shrink=0.6)
    if swath_file:
        with h5py.File(swath_file, "r") as f:
            rate, lat, lon = f["FS/SLV/precipRateNearSurface"][:], f["FS/Latitude"][:], f["FS/Longitude"][:]
        inside = rate >= 0
        axes[0, 2].scatter(lon[inside], lat[inside], s=0.5, c="0.85")
        rain = rate > 0
        axes[0, 2].scatter(lon[rain], lat[rain], s=1, c=rate[rain], norm=norm, cmap="viridis")
        granule = dpr.parse_name(swath_file.name)
        axes[0, 2].set_title(f"DPR swath {granule.start:%H:%M}-{granule.end:%H:%M} UTC")
    axes[1, 1].pcolormesh(relief.lon, relief.lat, relief, cmap="terrain")
    axes[1, 1].set_title("synthetic DEM (m)")
    wet = estimate.precipitation.values > 0
    axes[1, 2].hist(np.log10(truth.values[truth.values > 0]), bins=40, alpha=0.6, density=True, label="truth 0.05°")
    axes[1, 2].hist(np.log10(estimate.precipitation.values[wet]), bins=40, alpha=0.6, density=True, label="IMERG 0.1°")
    axes[1, 2].set_xlabel("log10 rain rate (mm/h)")
    axes[1, 2].legend()
    axes[1, 2].set_title("rain-rate distribution")
    west, south, east, north = grid.extent
    for ax in (axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]):
        ax.plot([west, east, east, west, west], [south, south, north, north, south], "r-", lw=1)
        ax.set_xlim(west - 3, east + 3)
        ax.set_ylim(south - 3, north + 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", default="2024-06-01")
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quicklook", type=Path)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 2:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    start = utc(f"{args.day}T00:00Z")
    spec = TwinSpec(config.load(None).domain.box(), start, start + timedelta(days=1), args.seed)
    walls = []
    with tempfile.TemporaryDirectory(prefix="nrt-bench-twin-") as tmp:
        for k in range(args.repeat):
            out = Path(tmp) / f"run{k}"
            began, cpu_began = time.perf_counter(), cpu_seconds()
            report = generate(spec, out)
            wall, cpu = time.perf_counter() - began, cpu_seconds() - cpu_began
            walls.append(wall)
            print(json.dumps({
                "run": k, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stages_s": {s: round(v, 2) for s, v in report.seconds.items()},
                "files": report.files, "mbytes": round(tree_bytes(out) / 1e6, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }))
        if args.quicklook:
            quicklook(out, spec, args.quicklook)
    print(json.dumps({
        "summary": "one day, default domain, files included", "runs": len(walls),
        "best_s": round(min(walls), 2), "median_s": round(statistics.median(walls), 2),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "load_avg_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
