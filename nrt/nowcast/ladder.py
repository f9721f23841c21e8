"""The degradation ladder: every case pysteps handles badly is detected up front or caught, and the nowcast
falls back to the next simpler method (steps/sprog -> extrapolation -> persistence -> zero rain). Each
fallback adds a `nrt.degradation.NowcastReason` to `NowcastResult.degraded` and logs a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import xarray as xr

from nrt.degradation import NowcastReason as Reason
from nrt.errors import DataError
from nrt.grids import KM_PER_DEGREE, LatLonGrid
from nrt.nowcast.cf import as_dataarray, space_coords, velocity_dataarray
from nrt.nowcast.methods import (
    FALLBACKS,
    MAX_AR_ORDER,
    METHODS,
    TIMESTEP_MINUTES,
    MethodInputs,
    advect_mask,
    estimate_motion,
    worker_count,
)
from nrt.timeline import HALF_HOUR, isoformat, utc_times

log = logging.getLogger("nrt.nowcast")

SIMPLER = {"steps": "extrapolation", "sprog": "extrapolation", "extrapolation": "persistence", "persistence": "zero"}
NEEDS_CASCADE = {"steps", "sprog"}


@dataclass(frozen=True)
class NowcastResult:
    precip: xr.DataArray  # precipitation(member, time, lat, lon), mm/h float32, leads 1..steps
    method_used: str  # steps | sprog | extrapolation | persistence | zero
    degraded: list[Reason]  # in the order they happened
    velocity: xr.DataArray  # motion(component, lat, lon) in m/s, eastward and northward


def _grid_of(frames: xr.DataArray) -> LatLonGrid:
    lats, lons = frames["lat"].values, frames["lon"].values
    if lats.size < 2 or lons.size < 2:
        raise ValueError("frames need at least 2 latitudes and 2 longitudes")
    if not (np.all(np.diff(lats) > 0) and np.all(np.diff(lons) > 0)):
        raise ValueError("frames need ascending latitude and longitude")
    return LatLonGrid(float(lats[1] - lats[0]), float(lats[0]), float(lons[0]), lats.size, lons.size)


def _speed_kmh(velocity: np.ndarray, grid: LatLonGrid) -> np.ndarray:
    """Speed of a (2, lat, lon) grid-cells-per-step field in km/h, with the zonal cell size of each row."""
    hours = TIMESTEP_MINUTES / 60
    dx = KM_PER_DEGREE * grid.res * np.cos(np.radians(grid.lats))[:, np.newaxis]
    dy = KM_PER_DEGREE * grid.res
    return np.hypot(velocity[0] * dx, velocity[1] * dy) / hours


class _Recorder:
    """Collects degradation reasons, logging each with what happened."""

    def __init__(self):
        self.where, self.reasons = "nowcast", []

    def add(self, reason: Reason, message: str, *args) -> None:
        log.warning("%s: " + message + " [degraded: %s]", self.where, *args, reason)
        if reason not in self.reasons:
            self.reasons.append(reason)


@dataclass(frozen=True)
class _Sequence:
    """The usable part of the input: granules with data, NaN filled as dry, and how they are spaced."""

    filled: np.ndarray  # (t, lat, lon) mm/h of the granules with data, oldest first
    gaps: list[int]  # half-hours between consecutive ones
    contiguous: int  # how many of the newest are 30 min apart
    newest_time: datetime
    late: int  # half-hours between the newest frame given and the newest with data
    missing: np.ndarray  # (lat, lon) NaN mask of the newest granule with data

    @property
    def ar_frames(self) -> np.ndarray:
        """The newest consecutive granules, at most MAX_AR_ORDER + 1: what the cascade methods see."""
        return self.filled[-self.contiguous :][-(MAX_AR_ORDER + 1) :]


def _sequence(values: np.ndarray, times: list[datetime], record: _Recorder) -> _Sequence:
    present = [i for i in range(len(times)) if np.isfinite(values[i]).any()]
    if not present:
        span = f"{isoformat(times[0])}..{isoformat(times[-1])}" if times else "no frames"
        raise DataError(f"nowcast input {span}", "every pixel of every granule is missing")
    halfhours = [(t - times[0]) / HALF_HOUR for t in times]
    if any(h != int(h) for h in halfhours) or len(set(halfhours)) < len(halfhours):
        raise ValueError(f"frame times must be distinct multiples of 30 min apart, got {[isoformat(t) for t in times]}")
    late = int(halfhours[-1] - halfhours[present[-1]])
    record.where = f"nowcast from {isoformat(times[present[-1]])}"
    if late:
        record.add(Reason.MISSING_NEWEST, "the newest %d granule(s) hold no data; starting from an older one", late)
    gaps = [int(halfhours[b] - halfhours[a]) for a, b in zip(present, present[1:])]
    empty = [isoformat(times[i]) for i in range(present[-1]) if i not in present]
    if empty or any(g > 1 for g in gaps):
        record.add(Reason.MISSING_GRANULE, "empty granules %s; the ones with data are %s half-hours apart", empty, gaps)
    contiguous = 1
    while contiguous < len(present) and gaps[-contiguous] == 1:
        contiguous += 1
    if any(np.isnan(values[i]).any() for i in present):
        record.add(Reason.MISSING_PIXELS, "%.1f%% of the newest granule is missing; filled as dry and re-masked", 100 * np.isnan(values[present[-1]]).mean())
    usable = values[present]
    return _Sequence(
        filled=np.where(np.isfinite(usable), np.maximum(usable, 0.0), 0.0),
        gaps=gaps,
        contiguous=contiguous,
        newest_time=times[present[-1]],
        late=late,
        missing=np.isnan(usable[-1]),
    )


def _motion(seq: _Sequence, settings, grid: LatLonGrid, record: _Recorder) -> np.ndarray:
    """Advection in grid cells per 30 min; zeros (with the reason recorded) when there is none to be had."""
    zero = np.zeros((2,) + grid.shape)
    if seq.contiguous >= 2:
        frames, per_step = seq.filled[-seq.contiguous :], 1
    elif len(seq.filled) >= 2:  # the newest granule's predecessor is missing: pair it with an older one
        frames, per_step = seq.filled[-2:], seq.gaps[-1]
    else:
        record.add(Reason.ZERO_MOTION, "a single granule gives no motion")
        return zero
    try:
        flow = estimate_motion(frames, settings.motion, settings.rain_threshold_mmh) / per_step
    except Exception as exc:  # pysteps raises many types on degenerate fields; the bridge must still deliver
        record.add(Reason.MOTION_FAILED, "%s optical flow failed: %r", settings.motion, exc)
        return zero
    if not np.isfinite(flow).all():
        record.add(Reason.MOTION_FAILED, "%s optical flow returned non-finite vectors", settings.motion)
        return zero
    speed = _speed_kmh(flow, grid)
    if speed.max() < settings.min_speed_kmh:
        record.add(Reason.ZERO_MOTION, "motion below %g km/h everywhere", settings.min_speed_kmh)
        return zero
    if speed.max() > settings.max_speed_kmh:
        # Faster flow (optical flow on a small or noisy field; the soak met 190 km/h) would carry the NaN from
        # outside the buffer onto the domain, and the publisher would then refuse the cycle's later leads.
        record.add(Reason.MOTION_CLIPPED, "%s motion up to %.0f km/h slowed to %g km/h (nowcast.max_speed_kmh)",
                   settings.motion, speed.max(), settings.max_speed_kmh)
        flow = flow * np.minimum(1.0, settings.max_speed_kmh / np.maximum(speed, 1e-9))
    return flow


def _choose(requested: str, seq: _Sequence, velocity: np.ndarray, settings, record: _Recorder) -> str:
    """The simplest method the inputs still support, starting from the requested one."""
    if not velocity.any():
        return "persistence"
    if requested not in NEEDS_CASCADE:
        return requested
    if seq.ar_frames.shape[0] < 2:
        record.add(Reason.MISSING_GRANULE, "%s needs 2 consecutive granules", requested)
        return SIMPLER[requested]
    valid = ~seq.missing
    wet = [float((frame[valid] >= settings.rain_threshold_mmh).mean()) for frame in seq.ar_frames]
    if min(wet) < settings.min_wet_fraction:
        record.add(Reason.NEARLY_DRY, "wet fractions %s below %g", [round(w, 5) for w in wet], settings.min_wet_fraction)
        return SIMPLER[requested]
    return requested


def _run(chosen: str, inputs: MethodInputs, record: _Recorder) -> tuple[np.ndarray, str]:
    """Run `chosen`, stepping down to simpler methods while one raises or returns nothing finite."""
    while True:
        try:
            forecast = (METHODS | FALLBACKS)[chosen](inputs)
            if not np.isfinite(forecast).any():
                raise ValueError("no finite value in the output")
            return forecast, chosen
        except Exception as exc:  # as in _motion: fall back rather than leave the cycle without a nowcast
            record.add(Reason.METHOD_FAILED, "%s failed: %r; trying %s", chosen, exc, SIMPLER[chosen])
            chosen = SIMPLER[chosen]


def nowcast(
    frames: xr.DataArray,
    settings,
    steps: int | None = None,
    members: int | None = None,
    seed: int | None = None,
    lead_offset: int = 0,
    method: str | None = None,
) -> NowcastResult:
    """Nowcast the `steps` half-hours after the newest frame given (shifted by `lead_offset`).

    frames: (time, lat, lon) mm/h on a regular lat/lon grid, latitude ascending, times 30-min multiples apart
      (gaps allowed; an all-NaN granule counts as missing); typically the last 3 IMERG granules over the
      domain plus `nowcast_domain`'s buffer.
    settings: a `NowcastConfig` (method, motion, members, steps, threshold, seed, ...).
    lead_offset: half-hours by which the newest frame given is older than the nominal start S (its
      successors never came). Valid times are newest + (lead_offset + k) x 30 min, k = 1..steps; the
      nowcast runs the extra steps and drops them. A trailing all-NaN frame shifts the start the same way.
    Returns every member even for deterministic methods (identical copies), so member i always exists.
    """
    steps = settings.steps if steps is None else steps
    members = settings.members if members is None else members
    seed = settings.seed if seed is None else seed
    requested = method or settings.method
    if requested not in METHODS:
        raise ValueError(f"unknown nowcast method {requested!r}; choose from {sorted(METHODS)}")
    if steps < 1 or members < 1 or lead_offset < 0:
        raise ValueError("need steps >= 1, members >= 1 and lead_offset >= 0")
    if tuple(frames.dims) != ("time", "lat", "lon"):
        raise ValueError(f"frames must have dims (time, lat, lon), got {frames.dims}")
    frames = frames.sortby("time")
    grid = _grid_of(frames)
    record = _Recorder()
    if lead_offset:
        record.add(Reason.MISSING_NEWEST, "starting %d half-hour(s) before the nominal start", lead_offset)
    seq = _sequence(frames.values.astype(np.float64), utc_times(frames["time"].values), record)
    skip = lead_offset + seq.late  # leads computed only to reach the requested valid times

    threshold = settings.rain_threshold_mmh
    velocity = np.zeros((2,) + grid.shape)
    if not (seq.filled[-1][~seq.missing] >= threshold).any():
        record.add(Reason.DRY, "no pixel reaches %g mm/h", threshold)
        chosen = "zero"
    else:
        velocity = _motion(seq, settings, grid, record)
        chosen = _choose(requested, seq, velocity, settings, record)
    inputs = MethodInputs(
        precip=seq.ar_frames,
        velocity=velocity,
        steps=steps + skip,
        members=members,
        seed=seed,
        km_per_pixel=grid.km_per_pixel(),
        threshold=threshold,
        cascade_levels=settings.cascade_levels,
        workers=worker_count(settings.num_workers),
    )
    forecast, chosen = _run(chosen, inputs, record)
    log.info("%s: %s, %d member(s), %d step(s), degraded=%s", record.where, chosen, members, steps, record.reasons or "no")

    forecast = np.asarray(forecast[:, skip:], dtype=np.float32)
    masked = advect_mask(seq.missing, velocity, steps + skip)[skip:]
    forecast = np.where(masked[np.newaxis], np.float32(np.nan), forecast)
    if forecast.shape[0] != members:
        forecast = np.repeat(forecast[:1], members, axis=0)
    leads = np.arange(skip + 1, skip + steps + 1)
    space = space_coords(frames, grid)
    return NowcastResult(
        precip=as_dataarray(forecast, space, seq.newest_time, leads, requested, chosen, record.reasons, settings, seed),
        method_used=chosen,
        degraded=record.reasons,
        velocity=velocity_dataarray(velocity, grid, space),
    )
