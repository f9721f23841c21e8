"""Benchmark the CSGD ensemble: seconds per valid time for 30 members on the demo domain (a benchmark, not a test).

Cases, each one cycle of 9 valid times on the configured demo grid (0.05°, Iowa, 66 x 132):
- `real`: real IMERG Early rain (2017-08-01 12-20 UTC, ../shared/data/imerg-stageiv), the 33 x 66 window of
  0.1° cells with the most rain, each cell repeated 2 x 2 onto the 0.05° grid;
- `wet`: 2 mm/h everywhere, the worst case (every member value needs the inverse gamma function).
Prints one JSON line per case: best and median seconds per valid time over --repeat runs, wet fraction.

    OMP_NUM_THREADS=1 python scripts/bench_csgd.py --repeat 5
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAIRS = REPO.parent / "shared" / "data" / "imerg-stageiv" / "20170801" / "IMERGE.hourly.d1.nc"
VALID_TIMES = 9


def demo_grid():
    from nrt import config
    from nrt.grids import target_grid

    return target_grid(config.load(None).domain.box())


def real_rate(shape: tuple[int, int]) -> np.ndarray:
    from nrt.csgd.pairs import read_prcp

    imerg = read_prcp(PAIRS).values[12 : 12 + VALID_TIMES]
    ny, nx = math.ceil(shape[0] / 2), math.ceil(shape[1] / 2)
    wet = (imerg > 0).sum(axis=0)
    totals = {(i, j): wet[i : i + ny, j : j + nx].sum() for i in range(0, imerg.shape[1] - ny + 1, 4) for j in range(0, imerg.shape[2] - nx + 1, 4)}
    i, j = max(totals, key=totals.get)
    window = imerg[:, i : i + ny, j : j + nx]
    return np.repeat(np.repeat(window, 2, axis=1), 2, axis=2)[:, : shape[0], : shape[1]].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--case", choices=["real", "wet"], nargs="+", default=["real", "wet"])
    args = parser.parse_args()

    from nrt.csgd import csgd_ensemble, load_params

    grid = demo_grid()
    dy = 111.195 * grid.res
    cell_km = (dy, dy * math.cos(math.radians(grid.lat0 + grid.res * (grid.nlat - 1) / 2)))
    params = load_params("builtin:csgd")
    for case in args.case:
        rate = real_rate(grid.shape) if case == "real" else np.full((VALID_TIMES, *grid.shape), 2.0, dtype=np.float32)
        seconds = []
        for seed in range(args.repeat):
            start = time.perf_counter()
            ens = csgd_ensemble(rate, params, members=args.members, cell_km=cell_km, seed=seed)
            seconds.append((time.perf_counter() - start) / VALID_TIMES)
        print(json.dumps({
            "case": case, "grid": list(grid.shape), "members": args.members, "valid_times": VALID_TIMES,
            "input_wet_fraction": round(float((rate > 0).mean()), 3), "member_wet_fraction": round(float((ens > 0).mean()), 3),
            "best_s_per_valid_time": round(min(seconds), 4), "median_s_per_valid_time": round(statistics.median(seconds), 4),
            "load_average": round(os.getloadavg()[0], 2),
        }))


if __name__ == "__main__":
    main()
