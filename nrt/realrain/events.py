"""The real-rain event catalogue (`config/realrain.toml`): events by source, and the held-out ones.

An event is a named span of one source's files. Whole events are held out, per source, so that skill is
always measured on events never trained on (issue 15). `event_frames` reads an event file by file, takes
each frame to 0.05° as it goes (an MRMS hour is 24.5 M pixels), then forms 30-min means.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import ConfigError, DataError
from nrt.realrain import READERS, REGRID_METHOD, get_reader
from nrt.realrain.regrid import Regridder, covering_grid, to_half_hours, to_target_grid
from nrt.timeline import utc

log = logging.getLogger("nrt.realrain")

REPO_CATALOGUE = Path(__file__).resolve().parents[2] / "config" / "realrain.toml"
WET_MM_H = 0.1


@dataclass(frozen=True)
class Event:
    name: str
    source: str
    files: tuple[str, ...]  # globs under the radar folder
    start: datetime  # first period start included
    end: datetime  # periods starting at or after `end` are left out
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north: crop before regridding
    region: str = ""  # events of one source in different regions may share hours (MeteoNet's NW and SE zones)
    note: str = ""


@dataclass(frozen=True)
class Catalogue:
    path: Path
    events: dict[str, Event]
    holdout: dict[str, list[str]] = field(default_factory=dict)

    def is_held_out(self, name: str) -> bool:
        return any(name in names for names in self.holdout.values())

    def training(self) -> list[Event]:
        return [e for e in self.events.values() if not self.is_held_out(e.name)]

    def held_out(self) -> list[Event]:
        return [e for e in self.events.values() if self.is_held_out(e.name)]


def default_radar_dir() -> Path:
    """$NRT_SHARED_DATA/radar, else ../shared/data/radar beside the checkout."""
    shared = os.environ.get("NRT_SHARED_DATA")
    return Path(shared) / "radar" if shared else REPO_CATALOGUE.parents[2] / "shared" / "data" / "radar"


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Parse and check the catalogue; every problem is one ConfigError naming the file and key."""
    path = Path(path or REPO_CATALOGUE)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read the real-rain catalogue ({exc})") from None
    events: dict[str, Event] = {}
    for i, entry in enumerate(raw.get("event", [])):
        where = f"{path}: event[{i}]"
        unknown = set(entry) - {"name", "source", "files", "start", "end", "bbox", "region", "note"}
        if unknown:
            raise ConfigError(where, f"unknown keys {sorted(unknown)}")
        try:
            globs = (entry["files"],) if isinstance(entry["files"], str) else tuple(entry["files"])
            event = Event(entry["name"], entry["source"], globs, utc(entry["start"]), utc(entry["end"]),
                          tuple(float(v) for v in entry["bbox"]) if "bbox" in entry else None,
                          entry.get("region", ""), entry.get("note", ""))
        except KeyError as exc:
            raise ConfigError(where, f"missing key {exc}") from None
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
        if event.source not in READERS:
            raise ConfigError(f"{where}.source", f"unknown source {event.source!r}; known: {', '.join(sorted(READERS))}")
        if event.name in events:
            raise ConfigError(f"{where}.name", f"duplicate event name {event.name!r}")
        if event.start >= event.end:
            raise ConfigError(f"{where}.start", f"start {event.start} is not before end {event.end}")
        if event.bbox and not (event.bbox[0] < event.bbox[2] and event.bbox[1] < event.bbox[3]):
            raise ConfigError(f"{where}.bbox", f"need [west, south, east, north], got {list(event.bbox)}")
        events[event.name] = event
    holdout = {str(k): list(v) for k, v in raw.get("holdout", {}).items()}
    for source, names in holdout.items():
        for name in names:
            if name not in events:
                raise ConfigError(f"{path}: holdout.{source}", f"no event named {name!r}")
            if events[name].source != source:
                raise ConfigError(f"{path}: holdout.{source}", f"event {name!r} is from source {events[name].source!r}")
    return Catalogue(path, events, holdout)


def event_files(event: Event, radar_dir: Path) -> list[Path]:
    """The files matching the event's globs, sorted (a glob should not reach far outside the span: every file
    it matches is read)."""
    files = sorted({p for pattern in event.files for p in Path(radar_dir).glob(pattern)})
    if not files:
        raise DataError(Path(radar_dir) / event.files[0], f"no files for event {event.name}")
    return files


def crop(frames: xr.DataArray, bbox: tuple[float, float, float, float] | None) -> xr.DataArray:
    """The smallest row/column window holding every pixel whose centre lies in bbox (west, south, east, north)."""
    if bbox is None:
        return frames
    west, south, east, north = bbox
    lon, lat = np.asarray(frames.lon), np.asarray(frames.lat)
    inside = (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise DataError(frames.attrs.get("files", "?"), f"no pixel inside bbox {list(bbox)}")
    return frames.isel(y=slice(rows[0], rows[-1] + 1), x=slice(cols[0], cols[-1] + 1))


def read_event(event: Event, radar_dir: Path, progress: Callable[[str], None] | None = None) -> xr.DataArray:
    """The event's native-period frames at 0.05° (time, lat, lon), in time order, inside [start, end)."""
    reader, method = get_reader(event.source), REGRID_METHOD[event.source]
    start, end = np.datetime64(event.start.replace(tzinfo=None), "ns"), np.datetime64(event.end.replace(tzinfo=None), "ns")
    regridder, key, parts = None, None, []
    for path in event_files(event, radar_dir):
        frames = reader(path)
        frames = frames.isel(time=(frames.time.values >= start) & (frames.time.values < end))
        if not frames.sizes["time"]:
            continue
        frames = crop(frames, event.bbox)
        lon, lat = np.asarray(frames.lon), np.asarray(frames.lat)
        grid_key = (lon.shape, float(np.nanmin(lon)), float(np.nanmax(lat)))
        if grid_key != key:  # a new native grid (the first file, or a product whose grid changed)
            grid = covering_grid(frames, event.bbox) if regridder is None else regridder.grid
            regridder, key = Regridder.build(lon, lat, grid, method), grid_key
        parts.append(to_target_grid(frames, regridder))
        if progress:
            progress(f"{event.name}: {path.name} ({frames.sizes['time']} frame(s))")
    if not parts:
        raise DataError(Path(radar_dir) / event.files[0], f"no frames between {event.start} and {event.end} for event {event.name}")
    out = xr.concat(parts, "time", combine_attrs="drop_conflicts").sortby("time")
    if np.unique(out.time.values).size != out.sizes["time"]:
        raise DataError(Path(radar_dir) / event.files[0], f"two frames for the same time in event {event.name}")
    return out.assign_attrs(event=event.name, files=f"{', '.join(event.files)} ({len(parts)} file(s))")


def event_frames(event: Event, radar_dir: Path, progress: Callable[[str], None] | None = None) -> xr.DataArray:
    """The event as 0.05° 30-min mean rates (hourly sources stay hourly; see `to_half_hours`)."""
    return to_half_hours(read_event(event, radar_dir, progress))


def frame_stats(frames: xr.DataArray) -> dict:
    """Frames, valid cells, wet fraction (>= 0.1 mm/h), mean and 99th-percentile rate over valid cell-frames."""
    values = np.asarray(frames, dtype=np.float64)
    valid = values[np.isfinite(values)]
    return {
        "frames": int(frames.sizes["time"]),
        "minutes": float(frames.attrs.get("averaging_period_minutes", frames.attrs.get("period_minutes", np.nan))),
        "cells": int(np.prod(frames.shape[1:])),
        "valid_fraction": float(valid.size / values.size) if values.size else float("nan"),
        "wet_fraction": float((valid >= WET_MM_H).mean()) if valid.size else float("nan"),
        "mean_mm_h": float(valid.mean()) if valid.size else float("nan"),
        "p99_mm_h": float(np.percentile(valid, 99)) if valid.size else float("nan"),
    }
