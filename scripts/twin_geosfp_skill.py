"""How much the twin's GEOS-FP and IMERG know of the truth, read the way the pipeline reads them.

    python scripts/twin_geosfp_skill.py [--start 2024-06-01T12:00Z] [--hours 12] [--seed 11] [--margin 2.5]
                                        [--tree DIR] [--plot docs/figures/twin_geosfp.png]

Generates a twin of the default domain (or reads `--tree`), then for every half-hour scores against the truth
at 0.05° / 30 min, over the domain plus `--margin` degrees:
- GEOS-FP PRECTOT of the newest run that covers the half-hour (its shortest lead, the forecast's best case),
  interpolated in time and bilinearly to 0.05° by `nrt.sources.geosfp.read_geosfp`;
- IMERG Early, read by `nrt.sources.imerg.read_imerg` and upsampled bilinearly to 0.05° as the model's input is.
Prints one JSON line: the pooled Pearson correlations, GEOS-FP's beyond 300 km and below 150 km and by lead,
and the equitable threat score and frequency bias of both at 0.1 and 1 mm/h.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from nrt import config
from nrt.grids import Domain, target_grid
from nrt.model.conditioning import upsample
from nrt.sources import geosfp, imerg
from nrt.timeline import floor_to, utc
from nrt.twin import naming, observe
from nrt.twin.generate import generate, load_manifest
from nrt.twin.spec import TwinSpec
from nrt.twin.writers import read_truth

SIX_HOURS = timedelta(hours=6)


def newest_run(tree: Path, valid: datetime, first: datetime) -> tuple[datetime, dict[datetime, Path]] | None:
    before, after = geosfp.geosfp_hours_for(valid)
    init = floor_to(before - timedelta(minutes=30), SIX_HOURS)
    while init >= floor_to(first, SIX_HOURS):
        paths = {h: tree / naming.geosfp_forecast_path(geosfp.FLX, init, h) for h in (before, after)}
        if all(p.exists() for p in paths.values()):
            return init, paths
        init -= SIX_HOURS
    return None


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]), 3)


def contingency(forecast: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """Equitable threat score and frequency bias of `forecast` >= threshold against `truth` >= threshold."""
    f, o = forecast >= threshold, truth >= threshold
    hits, false_alarms, misses = (f & o).sum(), (f & ~o).sum(), (~f & o).sum()
    chance = (hits + false_alarms) * (hits + misses) / f.size
    return {"ets": round(float((hits - chance) / (hits + false_alarms + misses - chance)), 3),
            "frequency_bias": round(float((hits + false_alarms) / (hits + misses)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="2024-06-01T12:00Z")
    parser.add_argument("--hours", type=int, default=12)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--margin", type=float, default=2.5, help="degrees around the domain that are scored")
    parser.add_argument("--tree", type=Path, help="an existing twin tree (its own span and domain)")
    parser.add_argument("--plot", type=Path, help="draw truth, IMERG and GEOS-FP for the wettest half-hour")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nrt-geosfp-skill-") as tmp:
        if args.tree:
            tree = args.tree
            spec = load_manifest(tree)["spec"]
            first, domain = utc(spec["start"]), Domain(**spec["domain"])
        else:
            tree, domain, first = Path(tmp), config.load(None).domain.box(), utc(args.start)
            generate(TwinSpec(domain, first, first + timedelta(hours=args.hours), args.seed), tree)
        report(tree, domain.buffered(args.margin), first, args.plot)


def report(tree: Path, region, first: datetime, plot: Path | None) -> None:
    grid = target_grid(region)
    rain = read_truth(tree).sel(lat=grid.lats, lon=grid.lons, method="nearest")
    truths, forecasts, estimates, leads, times = [], [], [], [], []
    for stamp, frame in zip(rain["time"].values, rain.values):
        valid = datetime.fromisoformat(str(stamp)[:19]).replace(tzinfo=timezone.utc)
        found = newest_run(tree, valid, first)
        if found is None:
            continue
        init, files = found
        forecasts.append(geosfp.read_geosfp(files, valid, grid, ["PRECTOT"]).PRECTOT.values * 3600.0)
        granule = tree / naming.imerg_pps_path(valid, load_manifest(tree)["spec"]["imerg"]["version"])
        estimates.append(upsample(imerg.read_imerg([granule], region).precipitation.values[0]))
        truths.append(frame)
        leads.append((valid + timedelta(minutes=15) - init).total_seconds() / 3600)
        times.append(valid)
    truth, forecast, estimate = (np.array(x, dtype=np.float64) for x in (truths, forecasts, estimates))
    leads = np.array(leads)

    def scales(fields, km):
        return np.stack([observe.large_scales(f, grid, km) for f in fields])

    by_lead = {}
    for low in range(0, 15, 3):
        pick = (leads >= low) & (leads < low + 3)
        if pick.sum() >= 2:
            by_lead[f"{low}-{low + 3} h"] = correlation(forecast[pick], truth[pick])
    print(json.dumps({
        "half_hours": len(truth), "region": [region.west, region.south, region.east, region.north],
        "r_geosfp": correlation(forecast, truth), "r_imerg": correlation(estimate, truth),
        "r_geosfp_beyond_300km": correlation(scales(forecast, 300.0), scales(truth, 300.0)),
        "r_geosfp_below_150km": correlation(forecast - scales(forecast, 150.0), truth - scales(truth, 150.0)),
        "r_geosfp_by_lead": by_lead,
        "geosfp_categorical": {f"{t:g} mm/h": contingency(forecast, truth, t) for t in (0.1, 1.0)},
        "imerg_categorical": {f"{t:g} mm/h": contingency(estimate, truth, t) for t in (0.1, 1.0)},
        "mean_mmh": {"truth": round(truth.mean(), 4), "geosfp": round(forecast.mean(), 4), "imerg": round(estimate.mean(), 4)},
    }))
    if plot:
        draw(plot, grid, times, truth, estimate, forecast, leads)


def draw(out: Path, grid, times, truth, estimate, forecast, leads) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    k = int(np.argmax(truth.mean(axis=(1, 2))))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    for ax, field, title in (
        (axes[0], truth[k], f"truth {times[k]:%Y-%m-%d %H:%M} UTC (0.05°, 30 min)"),
        (axes[1], estimate[k], f"IMERG Early upsampled (r = {correlation(estimate[k], truth[k]):.2f})"),
        (axes[2], forecast[k], f"GEOS-FP PRECTOT, lead {leads[k]:.1f} h (r = {correlation(forecast[k], truth[k]):.2f})"),
    ):
        mesh = ax.pcolormesh(grid.lons, grid.lats, np.where(field > 0.05, field, np.nan), norm=LogNorm(0.05, 30), cmap="viridis")
        ax.set_title(title, fontsize=10)
        ax.set_aspect(1 / np.cos(np.radians(grid.lats.mean())))
    fig.colorbar(mesh, ax=axes, label="mm/h", shrink=0.8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)


if __name__ == "__main__":
    main()
