"""Benchmark online verification and the report on the twin.

A small twin (Iowa, 2024-06-01 12:00-13:00 UTC, one DPR crossing) gets nine 30-member ensemble products
valid at 12:00 (leads 0..8, members around the truth); `verify_granules` scores them all. Then the scores
of that overpass are copied to `--overpasses` more valid times and `nrt verify`'s report is drawn over all.

    OMP_NUM_THREADS=1 python scripts/bench_verify.py [--overpasses 60]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from nrt import config
from nrt.store import Catalog
from nrt.config import DomainConfig
from nrt.grids import target_grid
from nrt.io import sha256_file
from nrt.model.conditioning import upsample
from nrt.products import product_path, write_ensemble
from nrt.twin.generate import generate
from nrt.twin.spec import TwinSpec
from nrt.twin.writers import read_truth
from nrt.verify import verify_granules, verify_settings
from nrt.verify.report import write_report

V = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
HALF_HOUR = timedelta(minutes=30)


def members_around(truth: np.ndarray, rng: np.random.Generator, members: int = 30, sigma: float = 0.6) -> np.ndarray:
    centre = np.log(truth + 0.1) + sigma * rng.standard_normal(truth.shape)
    return np.maximum(np.exp(centre + sigma * rng.standard_normal((members, *truth.shape))) - 0.1, 0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overpasses", type=int, default=60, help="valid times in the report (copies of the scored one)")
    args = parser.parse_args()
    out: dict = {"machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = TwinSpec(DomainConfig().box(), V, V + 2 * HALF_HOUR, 7)
        generate(replace(spec, world=replace(spec.world, wet_fraction=0.3)), tmp / "twin")
        cfg = config.from_dict({"general": {"workdir": str(tmp / "work")}})
        catalog = Catalog.open(cfg.database_url, migrate=True)
        grid = target_grid(cfg.domain.box())
        truth = read_truth(tmp / "twin", V, V + HALF_HOUR).isel(time=0)
        truth = truth.sel(lat=slice(grid.lats[0] - 1e-6, grid.lats[-1] + 1e-6), lon=slice(grid.lons[0] - 1e-6, grid.lons[-1] + 1e-6)).values
        baseline = upsample(truth.reshape(grid.nlat // 2, 2, grid.nlon // 2, 2).mean(axis=(1, 3)))
        rng = np.random.default_rng(0)
        for lead in range(9):
            reference = V - lead * HALF_HOUR
            cycle = reference + timedelta(hours=4)
            path = product_path(cfg.product_dir, "ensemble", V, cycle)
            write_ensemble(path, xr.DataArray(members_around(truth, rng), dims=("member", "lat", "lon")), grid=grid,
                           valid_time=V, forecast_reference_time=reference, lead=lead, input_precipitation=baseline)
            catalog.register_product("ensemble", V, cycle, lead, 30, path, path.stat().st_size, sha256_file(path))
        dpr_files = sorted((tmp / "twin" / "pps" / "radar" / "DprL2").glob("*.RT-H5"))

        started = time.perf_counter()
        results = verify_granules(verify_settings(cfg), catalog, dpr_files)
        out["verify_seconds"] = round(time.perf_counter() - started, 2)
        out["products_scored"] = sum(len(r.product_ids) for r in results)
        out["swath_cells"] = results[0].cells if results else 0
        rows = catalog.scores(truth_source="dpr")
        out["score_rows_per_product"] = len(rows) // max(out["products_scored"], 1)

        by_product: dict[int, list[dict]] = {}
        for r in rows:
            by_product.setdefault(r.product_id, []).append(
                {"metric": r.metric, "threshold": r.threshold, "lead": r.lead, "model": r.model, "value": r.value}
            )
        started = time.perf_counter()
        for k in range(1, args.overpasses):
            valid = V + k * timedelta(hours=12)
            for product_id, product_rows in by_product.items():
                lead = product_rows[0]["lead"]
                copy = catalog.register_product("ensemble", valid, valid - lead * HALF_HOUR + timedelta(hours=4), lead, 30,
                                                tmp / "none.nc", 1, "0" * 64)
                catalog.add_scores(copy, "dpr", product_rows)
        out["store_seconds_per_overpass"] = round((time.perf_counter() - started) / max(args.overpasses - 1, 1), 3)

        started = time.perf_counter()
        report = write_report(catalog, V, V + args.overpasses * timedelta(hours=12), tmp / "report", verify_settings(cfg))
        out["report_seconds"] = round(time.perf_counter() - started, 2)
        out["report_overpasses"] = report.overpasses
        out["report_figures"] = len(report.figures)
        catalog.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
