"""Prepared real-rain events: an event's 0.05° 30-min frames kept as one .npz, so training never re-reads radar.

The cache key is the event's definition (source, files, span, bbox) plus the names and sizes of its files: a
changed catalogue entry or a replaced file makes a new cache file, never a stale hit. Files are written to a
temporary name and renamed (nrt.io.atomic_path).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.io import atomic_path
from nrt.realrain.events import Event, event_files, event_frames

log = logging.getLogger("nrt.realrain")


def cache_key(event: Event, radar_dir: Path) -> str:
    files = [(p.name, p.stat().st_size) for p in event_files(event, radar_dir)]
    text = json.dumps({"event": [event.name, event.source, event.files, event.start.isoformat(), event.end.isoformat(),
                                 event.bbox], "files": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_event_frames(event: Event, radar_dir: Path, cache_dir: Path,
                        progress: Callable[[str], None] | None = None) -> xr.DataArray:
    """`event_frames(event)`, read from `cache_dir` when prepared before, else read and stored there."""
    path = Path(cache_dir).expanduser() / f"{event.name}-{cache_key(event, radar_dir)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return xr.DataArray(
                    data["rate"], dims=("time", "lat", "lon"),
                    coords={"time": data["time"], "lat": data["lat"], "lon": data["lon"]}, name="precipitation",
                    attrs={"event": event.name, "averaging_period_minutes": float(data["minutes"]), "units": "mm h-1"},
                )
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(path, f"unreadable prepared event ({exc}); delete it to prepare the event again") from None
    frames = event_frames(event, radar_dir, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, rate=frames.values.astype(np.float32), time=frames.time.values.astype("datetime64[ns]"),
                 lat=frames.lat.values, lon=frames.lon.values,
                 minutes=np.float64(frames.attrs.get("averaging_period_minutes", 30.0)))
    log.info("prepared %s: %d frames of %s -> %s", event.name, frames.sizes["time"], frames.shape[1:], path)
    return cached_event_frames(event, radar_dir, cache_dir)
