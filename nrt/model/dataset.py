"""Training sets: (conditioning channels, truth, mask, lead) samples on the 0.05° grid, in one safetensors file.

The pure core takes arrays (`write_training_set`, `read_training_set`); `build_from_catalog` is the I/O edge
that collocates the catalog's granules: IMERG at lead 0 and hindcast nowcasts at leads 1-8, GEOS-FP and DEM
as conditioning, the DPR swath gridded to 0.05° as truth (mask = inside the swath).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nrt.errors import DataError
from nrt.io import atomic_path
from nrt.model.conditioning import ChannelSet, Conditioning, raw_channels
from nrt.timeline import HALF_HOUR

log = logging.getLogger("nrt.model.dataset")

FORMAT = "nrt-trainingset/1"


@dataclass
class Sample:
    channels: np.ndarray  # (C, lat, lon) physical units, order = ChannelSet.names()
    truth: np.ndarray  # (lat, lon) mm/h, NaN outside the swath
    mask: np.ndarray  # (lat, lon) bool: truth is valid here
    lead: int = 0
    time: datetime | None = None


@dataclass
class TrainingSet:
    channels: np.ndarray  # (N, C, lat, lon) float32
    truth: np.ndarray  # (N, lat, lon) float32
    mask: np.ndarray  # (N, lat, lon) bool
    lead: np.ndarray  # (N,) int64
    channel_set: ChannelSet
    times: list[str | None] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lead)


def write_training_set(path: str | Path, samples: list[Sample], channel_set: ChannelSet, provenance: dict | None = None) -> Path:
    """Stack `samples` into one atomic safetensors file; the truth is NaN wherever the mask is false."""
    path = Path(path)
    if not samples:
        raise DataError(path, "no training samples to write")
    names = channel_set.names()
    shape = samples[0].truth.shape
    for index, s in enumerate(samples):
        if s.channels.shape != (len(names), *shape) or s.truth.shape != shape or s.mask.shape != shape:
            raise DataError(path, f"sample {index} has shapes {s.channels.shape}/{s.truth.shape}/{s.mask.shape}, expected ({len(names)}, {shape[0]}, {shape[1]})")
    mask = np.stack([np.asarray(s.mask, dtype=bool) & np.isfinite(s.truth) for s in samples])
    truth = np.where(mask, np.stack([s.truth for s in samples]), np.nan).astype(np.float32)
    tensors = {
        "channels": torch.from_numpy(np.stack([s.channels for s in samples]).astype(np.float32)),
        "truth": torch.from_numpy(truth),
        "mask": torch.from_numpy(mask.astype(np.uint8)),
        "lead": torch.tensor([int(s.lead) for s in samples], dtype=torch.int64),
    }
    times = [s.time.isoformat() if s.time else None for s in samples]
    metadata = {
        "format": FORMAT,
        "channel_set": json.dumps(channel_set.to_dict()),
        "times": json.dumps(times),
        "provenance": json.dumps(provenance or {}, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_training_set(path: str | Path) -> TrainingSet:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such training set")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(path, f"not a readable safetensors training set ({str(exc).splitlines()[0]})") from None
    if meta.get("format") != FORMAT or not {"channels", "truth", "mask", "lead"} <= tensors.keys():
        raise DataError(path, f"not an nrt training set (format {meta.get('format')!r}, expected {FORMAT!r})")
    channel_set = ChannelSet.from_dict(json.loads(meta["channel_set"]))
    channels = tensors["channels"].numpy()
    if channels.shape[1] != len(channel_set.names()):
        raise DataError(path, f"{channels.shape[1]} channels stored but the channel set names {len(channel_set.names())}")
    return TrainingSet(
        channels=channels,
        truth=tensors["truth"].numpy(),
        mask=tensors["mask"].numpy().astype(bool),
        lead=tensors["lead"].numpy(),
        channel_set=channel_set,
        times=json.loads(meta.get("times", "[]")),
        provenance=json.loads(meta.get("provenance", "{}")),
    )


def channel_set_for(cfg) -> ChannelSet:
    """The conditioning channels that `[train]` asks for, with the GEOS-FP variables of `[sources.geosfp]`."""
    tcfg, geos = cfg.train, cfg.sources.geosfp
    return ChannelSet(
        geosfp_variables=tuple(geos.slv_variables) + tuple(geos.flx_variables) if tcfg.use_geosfp else (),
        random_error=tcfg.use_random_error,
        dem=tcfg.use_dem,
        position=tcfg.use_position,
        masks=tcfg.use_masks,
    )


# ---------------------------------------------------------------- building from the catalog (the I/O edge)


def register_tree(cfg, catalog, root: str | Path) -> tuple[int, int]:
    """Validate and register in the catalog every granule file found under `root` (a bulk download or a twin
    mirror tree), so that a training archive fetched outside the real-time ingest can be built from.

    Returns (registered, skipped); files that no source names, or that fail their source's validation, are skipped.
    """
    from nrt.io import sha256_file
    from nrt.sources import module, parse_any

    registered = skipped = 0
    for path in sorted(Path(root).expanduser().rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        rf = parse_any(path.name)
        try:
            if rf is None:
                raise DataError(path, "not a granule of any source")
            mod = module(rf.source)
            mod.validate(path, rf.name, **mod.validate_settings(mod.settings(cfg)))
        except DataError as exc:
            log.debug("skipping %s", exc)
            skipped += 1
            continue
        stat = path.stat()
        catalog.register_granule(rf.source, rf.name, rf.version, rf.start, rf.end, str(path.resolve()), stat.st_size,
                                 sha256_file(path), mtime_ns=stat.st_mtime_ns)
        registered += 1
    log.info("registered %d granule files under %s (%d other files skipped)", registered, root, skipped)
    return registered, skipped


def _paths_by_start(catalog, source: str, start: datetime, end: datetime) -> dict[datetime, Path]:
    return {g.start_time: Path(g.path) for g in catalog.granules(source, start, end, state="downloaded") if g.path}


def _geosfp_files(catalog, start: datetime, end: datetime) -> dict[datetime, dict[str, list[Path]]]:
    """Forecast initialisation -> hourly stamp (HH:30) -> its files (one per collection). Assimilation files
    are left out: the service never has them in time (see `nrt.model.assemble.geosfp_forecast_init`)."""
    from nrt.sources import geosfp

    runs: dict[datetime, dict[datetime, list[Path]]] = {}
    for g in catalog.granules(geosfp.NAME, start, end, state="downloaded"):
        match = geosfp.FILE_PATTERN.fullmatch(g.name)
        if not match or not g.path or match["stream"] == "asm":
            continue
        init = datetime.strptime(match["init"], "%Y%m%d_%H").replace(tzinfo=timezone.utc)
        runs.setdefault(init, {}).setdefault(g.start_time + timedelta(minutes=30), []).append(Path(g.path))
    return runs


class CatalogInputs:
    """The model's inputs at any valid time and lead, read from the catalog's granules as the service reads them.

    Lead 0 is the IMERG granule at the valid time; lead L is a hindcast nowcast from the granule L half-hours
    earlier, run as the service runs it (same motion granules, method and settings; one member). GEOS-FP is the
    forecast the service would hold (`geosfp_forecast_init`), interpolated to the valid time; the DEM is read
    once. Every input goes through `nrt.model.assemble.assemble`, as in the pipeline.
    """

    def __init__(self, cfg, catalog, start: datetime, end: datetime, max_lead: int = 8):
        from nrt.grids import target_grid
        from nrt.model.assemble import dem_cache_dir
        from nrt.sources.dem import load_dem

        self.cfg, self.channels = cfg, channel_set_for(cfg)
        self.grid = target_grid(cfg.domain.box())
        reach = (max_lead + cfg.timeline.motion_granules) * HALF_HOUR
        self.imerg_paths = _paths_by_start(catalog, "imerg", start - reach, end)
        two_hours = timedelta(hours=2)
        self.geos_runs = _geosfp_files(catalog, start - two_hours, end + two_hours) if self.channels.geosfp_variables else {}
        self.dem = None
        dems = catalog.granules("dem", state="downloaded") if self.channels.dem else []
        if dems:
            self.dem = load_dem(dems[-1].path, self.grid, cache_dir=dem_cache_dir(cfg))

    def geosfp(self, valid: datetime):
        from nrt.model.assemble import geosfp_forecast_init
        from nrt.sources.geosfp import read_geosfp
        from nrt.timeline import geosfp_hours_for

        by_hour = self.geos_runs.get(geosfp_forecast_init(self.cfg, valid), {}) if self.channels.geosfp_variables else {}
        if not by_hour or not all(h in by_hour for h in geosfp_hours_for(valid)):
            return None
        return read_geosfp(by_hour, valid, self.grid, self.channels.geosfp_variables)

    def conditioning(self, valid: datetime, lead: int, geosfp=None) -> Conditioning | None:
        """None when the IMERG granule the lead starts from is not in the catalog."""
        from nrt.model.assemble import assemble, imerg_variables
        from nrt.nowcast import nowcast, nowcast_domain
        from nrt.sources.imerg import read_imerg
        from nrt.timeline import motion_starts

        cfg, domain = self.cfg, self.cfg.domain.box()
        newest = valid - lead * HALF_HOUR
        if newest not in self.imerg_paths:
            return None
        latest = read_imerg([self.imerg_paths[newest]], domain, imerg_variables(cfg))
        forecast = None
        if lead > 0:
            starts = [t for t in motion_starts(newest, cfg.timeline.motion_granules) if t in self.imerg_paths]
            frames = read_imerg([self.imerg_paths[t] for t in starts], nowcast_domain(domain, cfg.nowcast, steps=lead))
            seed = zlib.crc32(f"{valid.isoformat()}/{lead}".encode())  # reproducible, different per sample
            result = nowcast(frames["precipitation"], cfg.nowcast, steps=lead, members=1, seed=seed)
            forecast = result.precip.isel(member=0, time=-1)
        geosfp = self.geosfp(valid) if geosfp is None else geosfp
        return assemble(self.grid, valid, lead, latest, forecast, geosfp, self.dem)


def build_from_catalog(cfg, catalog, start: datetime, end: datetime, path: str | Path) -> Path:
    """Collocate every DPR overpass in [start, end] with its inputs at each lead of `train.leads`; write the set.

    Truth: the DPR swath gridded to 0.05° (mask = inside the swath with a retrieval), at the half-hour holding
    the overpass' median scan time over the domain. Overpasses covering fewer than `train.min_swath_cells`
    cells are skipped, as are leads whose IMERG granule is missing.
    """
    from nrt.sources.dpr import grid_swath, read_dpr
    from nrt.timeline import floor_halfhour

    tcfg = cfg.train
    inputs = CatalogInputs(cfg, catalog, start, end, max(tcfg.leads))
    grid, channels = inputs.grid, inputs.channels
    samples, skipped = [], 0
    for granule in catalog.granules("dpr", start - timedelta(hours=2), end, state="downloaded"):
        gridded = grid_swath(read_dpr(granule.path), grid, cfg.sources.dpr.footprint_km)
        truth = gridded["precipitation"].values.astype(np.float32)
        mask = gridded["coverage"].values.astype(bool) & np.isfinite(truth)
        if mask.sum() < tcfg.min_swath_cells:
            continue
        times = gridded["scan_time"].values[mask].astype("datetime64[ns]")
        times = times[~np.isnat(times)]
        if not times.size:
            continue
        median_ns = float(np.median(times.astype("int64")))
        valid = floor_halfhour(datetime.fromtimestamp(median_ns / 1e9, tz=timezone.utc))
        if not start <= valid <= end:
            continue
        geos = inputs.geosfp(valid)
        for lead in tcfg.leads:
            cond = inputs.conditioning(valid, lead, geos)
            if cond is None:
                skipped += 1
                continue
            samples.append(Sample(raw_channels(cond, channels)[0], truth, mask, lead, valid))
        log.info("%s: %d truth cells at %s", granule.name, int(mask.sum()), valid.isoformat())
    if not samples:
        raise DataError(path, f"no DPR overpass with >= {tcfg.min_swath_cells} cells and its IMERG inputs in {start.isoformat()} .. {end.isoformat()}")
    provenance = {"built_from": "catalog", "start": start.isoformat(), "end": end.isoformat(),
                  "leads": list(tcfg.leads), "samples": len(samples), "skipped_leads": skipped, "grid": list(grid.shape)}
    log.info("training set: %d samples (%d leads skipped for missing IMERG) -> %s", len(samples), skipped, path)
    return write_training_set(path, samples, channels, provenance)
