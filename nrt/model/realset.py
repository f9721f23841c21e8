"""Training examples from real rain and from the twin, mixed in a configured ratio (issue 15).

Real rain: each event of `config/realrain.toml` not held out, as 0.05° 30-min (or hourly) mean rates from the
prepared cache (`nrt.realrain.cache`). The truth is that rain; the input is `nrt.errormodel.degrade` of it at
0.1° (the fitted IMERG Early error model) with its `randomError`. Radar has no GEOS-FP or DEM: those groups are
absent, which the availability channels say. Fields are cut into `tile` x `tile` examples.

Twin: valid times of a twin tree registered in a catalog, assembled by `CatalogInputs` at lead 0 exactly as the
service assembles them (IMERG, GEOS-FP forecast, DEM), with the twin's full 0.05° truth.

No nowcast hindcasts are made for real rain, so every example is an analysis (lead 0); each is given a lead
drawn uniformly from `train.leads`, which teaches the network to ignore the lead embedding rather than leaving
the embeddings of leads 1-8 untrained.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import ConfigError, DataError
from nrt.grids import LatLonGrid
from nrt.model.conditioning import COARSE_FACTOR, ChannelSet, Conditioning, raw_channels
from nrt.model.dataset import Sample
from nrt.timeline import HALF_HOUR, utc_times

log = logging.getLogger("nrt.model.realset")

WET_MMH = 0.1


def tile_origins(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Origins (even rows/cols, so 0.1° cells stay whole) of non-overlapping tiles covering the field."""
    rows = range(0, shape[0] - tile + 1, tile)
    cols = range(0, shape[1] - tile + 1, tile)
    return [(r, c) for r in rows for c in cols]


def choose_tiles(truth: np.ndarray, origins, tile: int, per_frame: int, rng: np.random.Generator,
                 min_valid: float = 0.5, min_wet: float = 0.02) -> list[tuple[int, int]]:
    """Up to `per_frame` tiles with at least `min_valid` valid cells: wet ones (>= `min_wet` of cells at
    0.1 mm/h) first, and one dry tile in four so the model also sees no rain."""
    wet, dry = [], []
    for r, c in origins:
        part = truth[r : r + tile, c : c + tile]
        valid = np.isfinite(part)
        if valid.mean() < min_valid:
            continue
        (wet if (np.nan_to_num(part) >= WET_MMH).mean() >= min_wet else dry).append((r, c))
    rng.shuffle(wet)
    rng.shuffle(dry)
    take_dry = min(len(dry), max(0, per_frame // 4), per_frame - min(len(wet), per_frame - per_frame // 4))
    return wet[: per_frame - take_dry] + dry[:take_dry]


def real_rain_cases(frames: xr.DataArray, error_model, *, tile: int, per_frame: int,
                    seed: int) -> list[tuple[Conditioning, np.ndarray, datetime]]:
    """(inputs, truth tile, time) of one event: tiles of `frames` (time, lat, lon) at 0.05° and their inputs
    degraded by the IMERG error model at 0.1°, with its randomError; no GEOS-FP or DEM (radar has none)."""
    if tile % (2 * COARSE_FACTOR):
        raise ValueError(f"tile {tile} must be a multiple of {2 * COARSE_FACTOR}")
    from nrt.errormodel import degrade

    # Pad with no-data to whole 0.1° cells and at least one tile (a radar field may be smaller than a tile).
    nlat, nlon = (max(frames.sizes["lat"], tile) + 1) // 2 * 2, (max(frames.sizes["lon"], tile) + 1) // 2 * 2
    truth = np.full((frames.sizes["time"], nlat, nlon), np.nan, dtype=np.float32)
    truth[:, : frames.sizes["lat"], : frames.sizes["lon"]] = frames.values
    res = 0.05
    lats = float(frames.lat.values[0]) + res * np.arange(nlat)
    lons = float(frames.lon.values[0]) + res * np.arange(nlon)
    minutes = float(frames.attrs.get("averaging_period_minutes", 30.0))
    degraded = degrade(truth, res, error_model, seed, frame_minutes=minutes, latitude=float(np.mean(lats)))
    rng = np.random.default_rng(seed)
    origins = tile_origins((nlat, nlon), tile)
    times = utc_times(frames.time.values)
    cases = []
    for k, when in enumerate(times):
        for r, c in choose_tiles(truth[k], origins, tile, per_frame, rng):
            grid = LatLonGrid(res, float(lats[r]), float(lons[c]), tile, tile)
            cr, cc, ct = r // COARSE_FACTOR, c // COARSE_FACTOR, tile // COARSE_FACTOR
            cond = Conditioning(precip=degraded.precipitation[k, cr : cr + ct, cc : cc + ct][None], grid=grid, lead=0,
                                random_error=degraded.random_error[k, cr : cr + ct, cc : cc + ct])
            cases.append((cond, truth[k, r : r + tile, c : c + tile], when))
    return cases


def real_rain_samples(frames: xr.DataArray, error_model, channels: ChannelSet, *, tile: int, per_frame: int,
                      leads: list[int], seed: int) -> list[Sample]:
    """Training examples of one event (`real_rain_cases`), each with a lead drawn from `leads`."""
    rng = np.random.default_rng([seed, 1])
    return [Sample(raw_channels(cond, channels)[0], truth, np.isfinite(truth), int(rng.choice(leads)), when)
            for cond, truth, when in real_rain_cases(frames, error_model, tile=tile, per_frame=per_frame, seed=seed)]


def real_rain_examples(cfg, channels: ChannelSet, progress=None) -> tuple[list[Sample], dict]:
    """Examples of every training event of the real-rain catalogue; provenance lists sources, events, hours."""
    from nrt.errormodel import load_error_model
    from nrt.realrain.cache import cached_event_frames
    from nrt.realrain.events import default_radar_dir, load_catalogue

    tcfg = cfg.train
    catalogue = load_catalogue(tcfg.realrain_catalogue)
    radar_dir = Path(tcfg.realrain_dir).expanduser() if tcfg.realrain_dir else default_radar_dir()
    error_model = load_error_model(tcfg.error_model)
    samples, events = [], {}
    events_used = catalogue.training()
    if tcfg.realrain_events is not None:
        held = [n for n in tcfg.realrain_events if catalogue.is_held_out(n)]
        unknown = [n for n in tcfg.realrain_events if n not in catalogue.events]
        if held or unknown:
            raise ConfigError("train.realrain_events", f"{'held-out' if held else 'unknown'} event(s) {held or unknown} in {catalogue.path}")
        events_used = [e for e in events_used if e.name in tcfg.realrain_events]
    for index, event in enumerate(events_used):
        frames = cached_event_frames(event, radar_dir, Path(tcfg.realrain_cache).expanduser(), progress)
        made = real_rain_samples(frames, error_model, channels, tile=tcfg.tile_size, per_frame=tcfg.tiles_per_frame,
                                 leads=list(tcfg.leads), seed=tcfg.seed + 7919 * index)
        minutes = float(frames.attrs.get("averaging_period_minutes", 30.0))
        events[event.name] = {"source": event.source, "frames": int(frames.sizes["time"]),
                              "hours": round(frames.sizes["time"] * minutes / 60, 2), "examples": len(made)}
        log.info("%s: %d frames -> %d examples", event.name, frames.sizes["time"], len(made))
        samples += made
    provenance = {
        "catalogue": str(catalogue.path),
        "error_model": tcfg.error_model,
        "sources": sorted({e["source"] for e in events.values()}),
        "events": events,
        "hours": round(sum(e["hours"] for e in events.values()), 2),
        "held_out": catalogue.holdout,
    }
    return samples, provenance


def twin_examples(cfg, catalog, truth_dir: Path, count: int, channels: ChannelSet, seed: int) -> tuple[list[Sample], dict]:
    """`count` examples from the twin: `CatalogInputs` at lead 0 at evenly spread valid times, full truth."""
    from nrt.model.dataset import CatalogInputs

    files = sorted(Path(truth_dir).glob("*.nc"))
    if not files:
        raise DataError(truth_dir, "no twin truth files")
    truth = xr.concat([xr.load_dataset(f, engine="netcdf4")["precipitation"] for f in files], "time")
    times = utc_times(truth.time.values)
    inputs = CatalogInputs(cfg, catalog, times[0], times[-1], max_lead=0)
    tile, rng = cfg.train.tile_size, np.random.default_rng(seed)
    origins = tile_origins(inputs.grid.shape, tile)
    per_time = max(1, min(len(origins), cfg.train.tiles_per_frame))
    wanted = max(1, -(-count // per_time))
    chosen = [times[i] for i in np.linspace(0, len(times) - 1, min(wanted, len(times))).round().astype(int)]
    samples = []
    for valid in chosen:
        cond = inputs.conditioning(valid, 0)
        if cond is None:
            continue
        full = raw_channels(cond, channels)[0]
        try:  # the twin's region is wider than the domain
            field = truth.sel(time=np.datetime64(valid.replace(tzinfo=None), "ns")).sel(
                lat=inputs.grid.lats, lon=inputs.grid.lons, method="nearest", tolerance=1e-3).values.astype(np.float32)
        except KeyError:
            raise DataError(truth_dir, f"twin truth does not cover the domain's grid at {valid.isoformat()}") from None
        for r, c in choose_tiles(field, origins, tile, per_time, rng):
            part = field[r : r + tile, c : c + tile]
            samples.append(Sample(full[:, r : r + tile, c : c + tile], part, np.isfinite(part),
                                  int(rng.choice(cfg.train.leads)), valid))
    samples = samples[:count]
    return samples, {"twin_truth": str(truth_dir), "twin_examples": len(samples),
                     "twin_hours": round(len({s.time for s in samples}) * HALF_HOUR.total_seconds() / 3600, 2)}


def build_mixed(cfg, path: Path, catalog=None, twin_truth: Path | None = None, progress=None) -> Path:
    """Real-rain examples plus twin examples making `train.twin_fraction` of the set; written to `path`."""
    from nrt.model.dataset import channel_set_for, write_training_set

    channels = channel_set_for(cfg)
    samples, provenance = real_rain_examples(cfg, channels, progress)
    fraction = cfg.train.twin_fraction
    if fraction > 0:
        if catalog is None or twin_truth is None:
            raise DataError(path, f"train.twin_fraction is {fraction} but no twin tree was given (--register-tree)")
        count = round(len(samples) * fraction / (1 - fraction))
        twin, twin_provenance = twin_examples(cfg, catalog, twin_truth, count, channels, cfg.train.seed)
        samples += twin
        provenance.update(twin_provenance)
    provenance.update({"built_from": "realrain+twin" if fraction > 0 else "realrain", "samples": len(samples),
                       "twin_fraction": fraction, "tile": cfg.train.tile_size})
    log.info("training set: %d examples (%s) -> %s", len(samples), provenance["built_from"], path)
    return write_training_set(path, samples, channels, provenance)
