#!/usr/bin/env python
"""Score nrt's products on a held-out real-rain event, through the CLI, the way the project's scorer does.

For one event of config/realrain.toml (held out from training):
1. its radar rain, averaged to 0.05° and 30 min, is the truth;
2. a domain of --size degrees inside the radar's coverage is chosen (the wettest fully covered box over
   the event, edges on the 0.1° lattice) unless --domain is given, and a lead-0 time S (the wettest half
   hour whose motion granules all lie in the event) unless --start is given;
3. `nrt.twin.generate` writes GEOS-FP, the DEM and the mirror tree for the cycle's window and domain;
   its IMERG Early granules are then replaced by granules made from the event's rain with the fitted
   error model (`nrt.errormodel.degrade`), in the real RT-H5 layout and names; cells without radar data
   are fill; granules of half hours without radar data are removed;
4. the tree is served by `nrt twin serve` and `nrt --config ... cycle --time T` (T = S + IMERG latency;
   --cycles N runs T, T + 30 min, ..., each with its own lead 0) runs for each --methods, in a
   subprocess, as a user would;
5. every product valid time (lead 0 first, then nowcast leads where truth exists) is scored against the
   truth: CRPS, MAE of the bilinear input, spread/skill, bias, correlations, wet fractions.

Hourly sources (MRMS, RADOLAN RW): each hour's mean rate stands for both of its half hours.
Writes <workdir>/score.json and score.md and prints the table. Example:

    PYTHONPATH=$PWD python scripts/realrain_case.py --event knmi-20100826-morning --workdir /tmp/case-knmi
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import NrtError
from nrt.grids import TARGET_RES, Domain
from nrt.timeline import HALF_HOUR, isoformat, utc

WET_MM_H = 0.1
CELLS_PER_IMERG = 2  # 0.1° / 0.05°
IMERG_FILL = -9999.9


# ------------------------------------------------------------------------------------------------ truth


def half_hourly(frames: xr.DataArray) -> xr.DataArray:
    """30-min truth: hourly frames are repeated for both half hours of their hour (the mean rate of the hour)."""
    minutes = float(frames.attrs.get("averaging_period_minutes", 30))
    if minutes == 30:
        return frames
    if minutes != 60:
        raise NrtError(f"cannot make half hours from {minutes:g}-min frames")
    later = frames.assign_coords(time=frames.time + np.timedelta64(30, "m"))
    out = xr.concat([frames, later], "time").sortby("time")
    return out.assign_attrs(averaging_period_minutes=30.0, frame_note="hourly mean rate repeated for both half hours")


def read_truth(event_name: str, catalogue_path: Path | None, radar_dir: Path | None) -> xr.DataArray:
    from nrt.realrain.events import default_radar_dir, event_frames, load_catalogue

    catalogue = load_catalogue(catalogue_path)
    if event_name not in catalogue.events:
        raise NrtError(f"no event {event_name!r} in {catalogue.path}; held out: {', '.join(e.name for e in catalogue.held_out())}")
    if not catalogue.is_held_out(event_name):
        print(f"warning: {event_name} is NOT held out: the shipped checkpoint may have trained on it", file=sys.stderr)
    frames = event_frames(catalogue.events[event_name], radar_dir or default_radar_dir(),
                          progress=lambda m: print(f"  read {m}", file=sys.stderr))
    return half_hourly(frames)


def choose_domain(truth: xr.DataArray, size_deg: float) -> Domain:
    """The size x size box (edges on the 0.1° lattice) fully covered in every frame with the most rain."""
    n = int(round(size_deg / TARGET_RES))
    values = truth.values.astype(np.float64)
    valid = np.isfinite(values).all(axis=0)
    rain = np.where(valid, np.nan_to_num(values).mean(axis=0), 0.0)

    def window_sums(a: np.ndarray) -> np.ndarray:
        c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]

    if n > min(rain.shape):
        raise NrtError(f"--size {size_deg}° is larger than the event's area {truth.shape[1:]} cells")
    full = window_sums(valid.astype(np.float64)) >= n * n
    full[1::2, :], full[:, 1::2] = False, False  # even offsets keep the covering grid's 0.1° edges
    if not full.any():
        raise NrtError(f"no {size_deg}° box is covered by radar data in every frame; try a smaller --size")
    i, j = np.unravel_index(np.argmax(np.where(full, window_sums(rain), -1.0)), full.shape)
    lats, lons = truth.lat.values, truth.lon.values
    half = TARGET_RES / 2
    return Domain(*(round(float(v), 4) for v in (lons[j] - half, lats[i] - half, lons[j + n - 1] + half, lats[i + n - 1] + half)))


def in_domain(truth: xr.DataArray, domain: Domain) -> xr.DataArray:
    eps = TARGET_RES / 4
    return truth.sel(lat=slice(domain.south + eps, domain.north - eps), lon=slice(domain.west + eps, domain.east - eps))


def choose_start(truth: xr.DataArray, domain: Domain, motion_granules: int, cycles: int = 1) -> datetime:
    """The wettest half hour S (domain mean) such that S - (n-1) x 30 min .. S + (cycles-1) x 30 min all have truth."""
    times = [utc(str(t)[:19] + "Z") for t in truth.time.values]
    present = set(times)
    candidates = [t for t in times if all(t + k * HALF_HOUR in present for k in range(1 - motion_granules, cycles))]
    if not candidates:
        raise NrtError(f"the event has no {motion_granules + cycles - 1} consecutive half hours for the nowcast's motion "
                       f"and {cycles} cycle(s)")
    inside = in_domain(truth, domain)
    return max(candidates, key=lambda t: float(np.nanmean(inside.sel(time=np.datetime64(t.replace(tzinfo=None), "ns")))))


# ------------------------------------------------------------------------------------------------ inputs


def make_config(base, workdir: Path, port: int, domain: Domain, method: str, members: int, steps: int | None = None,
                solver: str | None = None, checkpoint: str | None = None):
    from nrt.service.demo import demo_config

    cfg = demo_config(base, workdir, port)
    cfg.domain = cfg.domain.model_copy(update={"west": domain.west, "south": domain.south, "east": domain.east, "north": domain.north})
    cfg.model.method = method
    cfg.model.members = cfg.nowcast.members = members
    if checkpoint:
        cfg.model.checkpoint = checkpoint
    if steps:
        cfg.model.sampler_steps = steps
    if solver:
        cfg.model.solver = solver
    cfg.sources.dpr.enabled = False  # the twin's DPR sees the twin's rain, not the event's
    cfg.alerts.areas = []
    cfg.products.quicklook = False
    return cfg


def write_event_imerg(truth: xr.DataArray, root: Path, spec, seed: int) -> list[datetime]:
    """Replace the twin's IMERG Early granules by ones made from `truth`; returns the half hours written."""
    from nrt.errormodel import degrade, load_error_model
    from nrt.grids import imerg_window
    from nrt.twin import naming, writers
    from nrt.twin.generate import publish_copy, region_grid

    grid = region_grid(spec)
    window = imerg_window(grid.domain)
    version = spec.imerg.version
    for old in list(root.glob("pps/**/3B-HHR-E.MS.MRG.*")) + list(root.glob("gesdisc/**/3B-HHR-E.MS.MRG.*")):
        old.unlink()
    times = [utc(str(t)[:19] + "Z") for t in truth.time.values]
    keep = [k for k, t in enumerate(times) if spec.start <= t < spec.end]
    rain = truth.isel(time=keep).reindex(lat=grid.lats, lon=grid.lons, method="nearest", tolerance=TARGET_RES / 4)
    values = rain.values.astype(np.float64)
    imerg = degrade(np.nan_to_num(values), grid.res, load_error_model(spec.imerg.error_model), seed, 30.0,
                    latitude=float(grid.lats.mean()))
    f = CELLS_PER_IMERG
    nlat, nlon = grid.shape
    missing = np.isnan(values).reshape(len(keep), nlat // f, f, nlon // f, f).any(axis=(2, 4))
    written = []
    for k, index in enumerate(keep):
        fields = {name: np.where(missing[k], IMERG_FILL, getattr(imerg, attr)[k]).astype(np.float32)
                  for name, attr in (("precipitation", "precipitation"), ("randomError", "random_error"))}
        fields["precipitationQualityIndex"] = np.where(missing[k], IMERG_FILL, imerg.quality_index[k]).astype(np.float32)
        pps = root / naming.imerg_pps_path(times[index], version)
        writers.write_imerg(pps, times[index], window, fields, version)
        if spec.imerg.gesdisc_copy:
            publish_copy(pps, root / naming.imerg_gesdisc_path(times[index], version))
        written.append(times[index])
    return written


# ------------------------------------------------------------------------------------------------ scores


def spread_skill(members: np.ndarray, obs: np.ndarray) -> float:
    """sqrt((M+1)/M x mean ensemble variance) / RMSE of the ensemble mean (Fortin et al. 2014); 1 is calibrated."""
    m = members.shape[0]
    spread = np.sqrt((m + 1) / m * members.var(axis=0, ddof=1).mean())
    rmse = np.sqrt(((members.mean(axis=0) - obs) ** 2).mean())
    return float(spread / rmse) if rmse > 0 else float("nan")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def score_valid_time(members: np.ndarray, baseline: np.ndarray, truth: np.ndarray) -> dict:
    """Scores of one valid time over the cells where truth, members and baseline are all finite (mm/h).

    members (M, lat, lon), baseline (lat, lon) the bilinearly upsampled input, truth (lat, lon).
    """
    from nrt.verify.scores import crps_ensemble

    ok = np.isfinite(truth) & np.isfinite(baseline) & np.isfinite(members).all(axis=0)
    x, y, b = members[:, ok].astype(np.float64), truth[ok].astype(np.float64), baseline[ok].astype(np.float64)
    mean = x.mean(axis=0)
    crps = float(crps_ensemble(x, y).mean())
    mae = float(np.abs(b - y).mean())
    return {
        "cells": int(ok.sum()),
        "crps": crps,
        "input_mae": mae,
        "crps_over_input_mae": crps / mae if mae > 0 else float("nan"),
        "spread_skill": spread_skill(x, y),
        "truth_mean": float(y.mean()),
        "ensemble_mean": float(mean.mean()),
        "input_mean": float(b.mean()),
        "bias": float(mean.mean() - y.mean()),
        "corr_truth": correlation(mean, y),
        "corr_input": correlation(mean, b),
        "input_corr_truth": correlation(b, y),
        "wet_truth": float((y >= WET_MM_H).mean()),
        "wet_members": float((x >= WET_MM_H).mean()),
        "wet_input": float((b >= WET_MM_H).mean()),
    }


def score_products(paths: list[str], truth: xr.DataArray) -> list[dict]:
    from nrt.products.netcdf import INPUT_VAR, open_product

    rows = []
    for path in paths:
        if not Path(path).name.startswith("nrt_ensemble_"):
            continue
        ds = open_product(path)
        if INPUT_VAR not in ds:
            continue
        valid = utc(str(ds.time.values[0])[:19] + "Z")
        stamp = np.datetime64(valid.replace(tzinfo=None), "ns")
        if stamp not in truth.time.values:
            continue
        obs = truth.sel(time=stamp).reindex(lat=ds.lat.values, lon=ds.lon.values, method="nearest", tolerance=TARGET_RES / 4)
        row = score_valid_time(ds["precipitation"].values[:, 0], ds[INPUT_VAR].values[0], obs.values)
        rows.append({"valid_time": isoformat(valid), "lead": int(ds.attrs["lead_half_hours"]),
                     "method": ds.attrs.get("method"), "degraded": ds.attrs.get("degraded"), **row})
    return sorted(rows, key=lambda r: r["lead"])


# ------------------------------------------------------------------------------------------------ run


@dataclass
class Case:
    event: str
    domain: Domain
    start: datetime  # S: lead 0
    cycle_time: datetime  # T: the first cycle
    granules: int
    cycles: int = 1  # cycles T, T + 30 min, ...

    @property
    def cycle_times(self) -> list[datetime]:
        return [self.cycle_time + k * HALF_HOUR for k in range(self.cycles)]


def run_cycle(config_path: Path, cycle_time: datetime, log_path: Path) -> dict:
    """`nrt --config FILE cycle --time T --json` in a subprocess; its JSON summary."""
    command = [sys.executable, "-m", "nrt.cli", "--config", str(config_path), "--log-level", "WARNING",
               "cycle", "--time", isoformat(cycle_time), "--json"]
    from nrt.service.demo import DEMO_EMAIL

    env = {**os.environ, "NRT_PPS_EMAIL": DEMO_EMAIL}  # the twin's PPS mirror wants an e-mail, like the real one
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, check=False, env=env)
    if done.returncode != 0:
        raise NrtError(f"`{' '.join(command)}` exited {done.returncode}; see {log_path}:\n{log_path.read_text()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(args, base) -> tuple[Case, xr.DataArray]:
    from nrt.service.demo import twin_span
    from nrt.twin.generate import generate
    from nrt.twin.spec import spec_for_config

    cached = args.workdir / f"truth-{args.event}.nc"
    if cached.is_file():  # a rerun in the same work directory skips reading the radar files
        truth = xr.open_dataarray(cached).load()
    else:
        print(f"reading {args.event} ...", file=sys.stderr)
        truth = read_truth(args.event, args.catalogue, args.radar_dir)
        truth.to_netcdf(cached)
    domain = parse_domain(args.domain) if args.domain else choose_domain(truth, args.size)
    start = utc(args.start) if args.start else choose_start(truth, domain, base.timeline.motion_granules, args.cycles)
    cycle_time = start + timedelta(minutes=base.timeline.imerg_latency_minutes)
    probe = make_config(base, args.workdir, 0, domain, "csgd", args.members)
    spec = spec_for_config(probe, *twin_span(cycle_time, cycle_time + (args.cycles - 1) * HALF_HOUR, probe), args.seed, domain)
    root = args.workdir / "twin"
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    print(f"twin {isoformat(spec.start)} .. {isoformat(spec.end)} over {domain} ...", file=sys.stderr)
    generate(spec, root)
    written = write_event_imerg(truth, root, spec, args.seed)
    print(f"  twin + {len(written)} IMERG granules from the event in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return Case(args.event, domain, start, cycle_time, len(written), args.cycles), truth


def parse_domain(text: str) -> Domain:
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise NrtError(f"--domain: expected W,S,E,N in degrees, got {text!r}") from None
    return Domain(west, south, east, north)


def pooled(rows: list[dict]) -> dict:
    """Means over valid times of CRPS and input MAE (cells are equal in number), and their ratio."""
    crps, mae = float(np.mean([r["crps"] for r in rows])), float(np.mean([r["input_mae"] for r in rows]))
    return {"valid_times": len(rows), "crps": crps, "input_mae": mae, "crps_over_input_mae": crps / mae if mae > 0 else float("nan"),
            "spread_skill": float(np.mean([r["spread_skill"] for r in rows])), "bias": float(np.mean([r["bias"] for r in rows]))}


def markdown(case: Case, results: dict[str, list[dict]], settings: str) -> str:
    lines = [
        f"**{case.event}**, domain {case.domain.west:g},{case.domain.south:g},{case.domain.east:g},{case.domain.north:g} "
        f"(W,S,E,N), lead 0 at {isoformat(case.start)}, "
        f"{case.cycles} cycle(s) from {isoformat(case.cycle_time)}; {settings}",
        "",
        "| method | valid time | lead | CRPS | input MAE | CRPS/MAE | spread/skill | mean − truth (truth) | corr truth | corr input | input corr truth | wet truth / members / input |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in results.items():
        for r in rows:
            lines.append(
                f"| {method} | {r['valid_time'][11:16]} | {r['lead']} | {r['crps']:.3f} | {r['input_mae']:.3f} | "
                f"{r['crps_over_input_mae']:.2f} | {r['spread_skill']:.2f} | {r['bias']:+.3f} ({r['truth_mean']:.3f}) | "
                f"{r['corr_truth']:.2f} | {r['corr_input']:.2f} | {r['input_corr_truth']:.2f} | "
                f"{r['wet_truth']:.3f} / {r['wet_members']:.3f} / {r['wet_input']:.3f} |"
            )
    lines += ["", "| method | valid times pooled | CRPS | input MAE | CRPS/MAE | spread/skill | mean − truth |", "|---|---|---|---|---|---|---|"]
    for method, rows in results.items():
        for label, subset in (("lead 0", [r for r in rows if r["lead"] == 0]), ("all leads", rows)):
            if subset:
                p = pooled(subset)
                lines.append(f"| {method} | {label} ({p['valid_times']}) | {p['crps']:.3f} | {p['input_mae']:.3f} | "
                             f"{p['crps_over_input_mae']:.2f} | {p['spread_skill']:.2f} | {p['bias']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--event", required=True, help="event name in the catalogue (a held-out one; `nrt realrain list`)")
    parser.add_argument("--workdir", type=Path, required=True, help="work directory (twin, configs, catalogs, products, scores)")
    parser.add_argument("--methods", default="diffusion,csgd", help="comma-separated model.method values (default: %(default)s)")
    parser.add_argument("--size", type=float, default=2.0, help="domain side in degrees when --domain is not given (default: %(default)s)")
    parser.add_argument("--domain", metavar="W,S,E,N", help="domain in degrees (edges on the 0.1° lattice)")
    parser.add_argument("--start", metavar="ISO", help="lead-0 half hour S (default: the wettest one with motion granules)")
    parser.add_argument("--cycles", type=int, default=1, help="consecutive cycles from T, each with its own lead 0 (default: %(default)s)")
    parser.add_argument("--checkpoint", help="diffusion checkpoint (default: the config's model.checkpoint)")
    parser.add_argument("--members", type=int, default=30, help="ensemble (and nowcast) members (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="diffusion sampler steps (default: the config's model.sampler_steps, 18)")
    parser.add_argument("--solver", choices=["euler", "heun"], help="diffusion sampler (default: the config's, heun)")
    parser.add_argument("--config", type=Path, help="base nrt config (default: built-in); domain/sources/workdir are replaced")
    parser.add_argument("--catalogue", type=Path, help="real-rain catalogue (default: config/realrain.toml)")
    parser.add_argument("--radar-dir", type=Path, help="radar folder (default: $NRT_SHARED_DATA/radar or ../shared/data/radar)")
    parser.add_argument("--seed", type=int, default=20250101, help="twin and IMERG error seed (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except NrtError as exc:
        print(f"realrain_case: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    from nrt import config
    from nrt.service.demo import free_port, start_mirror, write_config

    args.workdir = args.workdir.expanduser().resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = config.load(args.config)
    case, truth = prepare(args, base)
    port = free_port()
    mirror = start_mirror(args.workdir / "twin", port)
    results, timings = {}, {}
    try:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            workdir = args.workdir / method
            if workdir.exists():
                shutil.rmtree(workdir)
            workdir.mkdir()
            cfg = make_config(base, workdir, port, case.domain, method, args.members, args.steps, args.solver, args.checkpoint)
            config_path = write_config(cfg, workdir / "config.toml")
            started, results[method] = time.perf_counter(), []
            for k, cycle_time in enumerate(case.cycle_times):
                print(f"{method}: nrt cycle --time {isoformat(cycle_time)} ...", file=sys.stderr)
                summary = run_cycle(config_path, cycle_time, workdir / f"cycle-{k}.log")
                results[method] += score_products(summary["products"], truth)
            results[method].sort(key=lambda r: (r["lead"], r["valid_time"]))
            timings[method] = round(time.perf_counter() - started, 1)
            if not results[method]:
                raise NrtError(f"{method}: no product valid time has truth ({len(summary['products'])} products)")
    finally:
        mirror.terminate()
        mirror.wait(timeout=10)
    steps = f"{args.steps or base.model.sampler_steps} {args.solver or base.model.solver} steps"
    checkpoint = args.checkpoint or base.model.checkpoint
    settings = f"{args.members} members, diffusion sampler {steps}, checkpoint {checkpoint}"
    table = markdown(case, results, settings)
    report = {
        "event": case.event, "domain": [case.domain.west, case.domain.south, case.domain.east, case.domain.north],
        "lead0": isoformat(case.start), "cycle_times": [isoformat(t) for t in case.cycle_times], "imerg_granules": case.granules,
        "members": args.members, "sampler": steps, "checkpoint": checkpoint, "cycle_seconds": timings,
        "results": results, "pooled": {m: pooled(rows) for m, rows in results.items()},
    }
    (args.workdir / "score.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.workdir / "score.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
