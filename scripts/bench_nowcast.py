"""Benchmark the nowcast bridge: seconds and peak memory for the CONUS and demo domains (a benchmark, not a test).

Each case runs in a fresh subprocess so that peak RSS (resource.getrusage) belongs to that case alone; a
second subprocess repeats it under tracemalloc for the peak of Python/numpy allocations. The input is three
granules of synthetic patchy rain (about a third of the domain wet) moving 2 cells east and 1 north per
half hour, on the IMERG 0.1° grid of the domain.

`--workers 1 2 4` runs every case with each `nowcast.num_workers` (STEPS' members in that many threads);
`--repeat N` runs each N times and reports the fastest (the machine may be shared), with the 1-minute load
average before each run and the speed-up against the first worker count. The CPU seconds spent inside
pysteps' parallel regions (its `dask.compute` calls) give Amdahl's bound on k free cores: serial CPU +
parallel CPU / k, printed for k = 2, 4, 8 (a projection, not a measurement) from a run with 2 or more workers
(with one, pysteps loops over STEPS' members outside dask).

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_nowcast.py            # all cases, 30 members, 8 steps
    python scripts/bench_nowcast.py --case demo --method extrapolation --members 30
    OMP_NUM_THREADS=1 python scripts/bench_nowcast.py --case conus --workers 1 2 --repeat 3
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    "conus": (-125.0, 24.0, -67.0, 49.0),  # 0.1° IMERG window: 250 x 580
    "demo": None,  # the configured demo domain (Iowa) plus its upwind buffer
}


def frames_for(case: str):
    import numpy as np
    import pandas as pd
    import xarray as xr
    from scipy.ndimage import gaussian_filter

    from nrt import config
    from nrt.grids import Domain, imerg_grid
    from nrt.nowcast import nowcast_domain

    cfg = config.load(None)
    domain = Domain(*CASES[case]) if CASES[case] else nowcast_domain(cfg.domain.box(), cfg.nowcast)
    grid = imerg_grid(domain)
    rng = np.random.default_rng(7)
    pad = 10
    canvas = gaussian_filter(rng.normal(size=(grid.nlat + 2 * pad, grid.nlon + 2 * pad)), 4)
    canvas = np.clip(canvas / canvas.std() - 0.5, 0, None) * 8
    values = np.stack([canvas[pad - k : pad - k + grid.nlat, pad - 2 * k : pad - 2 * k + grid.nlon] for k in range(3)])
    times = pd.date_range("2024-06-01T10:00", periods=3, freq="30min")
    return xr.DataArray(values.astype(np.float32), dims=("time", "lat", "lon"), coords={"time": times, **{k: v[1] for k, v in grid.coords().items()}}), cfg


def run_case(case: str, method: str, members: int, steps: int, workers: int, trace: bool) -> dict:
    import dask

    from nrt.nowcast import nowcast

    frames, cfg = frames_for(case)
    cfg.nowcast.num_workers = workers
    parallel = {"wall": 0.0, "cpu": 0.0}
    compute = dask.compute

    def timed_compute(*args, **kwargs):  # pysteps' parallel regions: what more workers can shorten
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        try:
            return compute(*args, **kwargs)
        finally:
            parallel["wall"] += time.perf_counter() - start_wall
            parallel["cpu"] += time.process_time() - start_cpu

    dask.compute = timed_compute
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = nowcast(frames, cfg.nowcast, steps=steps, members=members, method=method)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    dask.compute = compute
    out = {
        "case": case,
        "shape": list(frames.shape[1:]),
        "method": method,
        "method_used": result.method_used,
        "members": members,
        "steps": steps,
        "workers": workers,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "parallel_wall_s": round(parallel["wall"], 2),
        "parallel_cpu_s": round(parallel["cpu"], 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "output_mib": round(result.precip.nbytes / 2**20, 1),
    }
    if trace:
        out["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--method", default="steps", choices=["steps", "sprog", "extrapolation"])
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="nowcast.num_workers values to run (0 = auto)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the second, traced run of each case (halves the time)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.case[0], args.method, args.members, args.steps, args.workers[0], args.trace)))
        return 0
    print(f"# machine: {machine()}")
    rows = []
    for case in args.case or list(CASES):
        for workers in args.workers:
            base = [sys.executable, __file__, "--one", "--case", case, "--method", args.method, "--members", str(args.members),
                    "--steps", str(args.steps), "--workers", str(workers)]
            runs = []
            for _ in range(args.repeat):
                load = round(os.getloadavg()[0], 2)
                runs.append(json.loads(subprocess.run(base, check=True, capture_output=True, text=True).stdout) | {"load_1min": load})
            timed = min(runs, key=lambda r: r["wall_s"])
            timed["wall_s_all"] = [r["wall_s"] for r in runs]
            timed["load_1min_all"] = [r["load_1min"] for r in runs]
            timed["tracemalloc_peak_mib"] = None
            if not args.no_tracemalloc:
                traced = json.loads(subprocess.run(base + ["--trace"], check=True, capture_output=True, text=True).stdout)
                timed["tracemalloc_peak_mib"] = traced["tracemalloc_peak_mib"]
            first = next((r for r in rows if r["case"] == case), None)
            timed["speedup"] = round(first["wall_s"] / timed["wall_s"], 2) if first else 1.0
            rows.append(timed)
            print(json.dumps(timed), flush=True)
    print("\n| domain | grid | method | members x steps | workers | wall s (best of runs) | all runs | load (1 min) | CPU s | CPU s in parallel regions | speed-up | peak RSS MiB | tracemalloc peak MiB | output MiB |")
    print("|---|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['shape'][0]} x {r['shape'][1]} | {r['method_used']} | {r['members']} x {r['steps']} | {r['workers']} | "
            f"{r['wall_s']} | {r['wall_s_all']} | {r['load_1min_all']} | {r['cpu_s']} | {r['parallel_cpu_s']} | {r['speedup']} | "
            f"{r['peak_rss_mib']} | {r['tracemalloc_peak_mib']} | {r['output_mib']} |"
        )
    for r in rows:
        if r["workers"] >= 2:
            serial = r["cpu_s"] - r["parallel_cpu_s"]
            bounds = ", ".join(f"{k} cores {serial + r['parallel_cpu_s'] / k:.1f} s" for k in (2, 4, 8))
            print(f"# {r['case']}: Amdahl bound from the {r['workers']}-worker run's CPU split "
                  f"({serial:.1f} s serial + {r['parallel_cpu_s']} s parallel): {bounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
