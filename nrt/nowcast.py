"""Nowcast bridge: carry the newest IMERG granule across the ~4 h latency with pysteps.

Pure core: an `xr.DataArray(time, lat, lon)` of 0.1° rain rates (mm/h, NaN = missing) goes in, a
`NowcastResult` with `precipitation(member, time, lat, lon)` for leads 1..steps comes out. Motion comes from
the newest contiguous granules (pysteps optical flow); the method is chosen by name from `METHODS`.

Degradation: every case pysteps handles badly is detected up front or caught, and the nowcast falls back
to the next simpler method (steps/sprog -> extrapolation -> persistence -> zero rain). Each fallback adds
a `nrt.degradation.NowcastReason` to `NowcastResult.degraded` and logs a warning; the service turns the
reasons into the `nrt_nowcast_degraded_total{reason}` metric and a product attribute.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import xarray as xr

from nrt.degradation import NowcastReason as Reason
from nrt.errors import DataError
from nrt.grids import KM_PER_DEGREE, LatLonGrid
from nrt.timeline import HALF_HOUR, isoformat, utc_times

log = logging.getLogger("nrt.nowcast")

TIMESTEP_MINUTES = 30
DB_ZEROVALUE = -15.0  # dB value given to dry pixels (pysteps' customary choice, 5 dB under a 0.1 mm/h threshold)
MAX_AR_ORDER = 2

MOTION_METHODS = {"lucaskanade": "LK", "vet": "VET", "darts": "DARTS"}
# `nowcast.num_workers = 0` takes one thread per usable core up to this many: each worker adds to the peak
# memory (a second one added 180-187 MiB on CONUS 0.1°, docs/benchmarks.md), and the threads share the GIL.
AUTO_WORKERS_MAX = 8


def worker_count(setting: int) -> int:
    """Threads for the ensemble: `setting`, or for 0 the cores this process may run on, capped at AUTO_WORKERS_MAX."""
    if setting < 0:
        raise ValueError(f"nowcast.num_workers must be >= 0, got {setting}")
    if setting:
        return setting
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, AUTO_WORKERS_MAX))


@dataclass(frozen=True)
class MethodInputs:
    """What every method receives: finite mm/h frames 30 min apart (oldest first) and their motion."""

    precip: np.ndarray  # (t, lat, lon) mm/h, NaN already filled as dry
    velocity: np.ndarray  # (2, lat, lon) grid cells per time step: [0] towards +lon, [1] towards +lat
    steps: int
    members: int
    seed: int
    km_per_pixel: float
    threshold: float  # mm/h; the dB transform's threshold and STEPS' rain/no-rain threshold
    cascade_levels: int
    workers: int = 1  # threads over STEPS' members (pysteps runs them through dask)


@dataclass(frozen=True)
class NowcastResult:
    precip: xr.DataArray  # precipitation(member, time, lat, lon), mm/h float32, leads 1..steps
    method_used: str  # steps | sprog | extrapolation | persistence | zero
    degraded: list[Reason]  # in the order they happened
    velocity: xr.DataArray  # motion(component, lat, lon) in m/s, eastward and northward


def _quiet(func: Callable, *args, **kwargs):
    """Call a pysteps function, sending what it prints (stdout, warnings) to the debug log instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()] + [str(w.message) for w in caught]
    if lines:
        log.debug("pysteps: %s", " | ".join(lines))
    return result


def _pysteps():
    """Import pysteps once, swallowing the banner it prints on import."""
    return _quiet(__import__, "pysteps")


def to_db(precip: np.ndarray, threshold: float) -> np.ndarray:
    _pysteps()
    from pysteps.utils import transformation

    db, _ = transformation.dB_transform(precip, threshold=threshold, zerovalue=DB_ZEROVALUE)
    return db


def from_db(db: np.ndarray, threshold: float) -> np.ndarray:
    _pysteps()
    from pysteps.utils import transformation

    metadata = {"transform": "dB", "threshold": 10 * math.log10(threshold), "zerovalue": DB_ZEROVALUE}
    precip, _ = transformation.dB_transform(db, metadata, inverse=True)
    return precip


def estimate_motion(precip: np.ndarray, method: str, threshold: float) -> np.ndarray:
    """Optical flow on 30-min frames (t >= 2, mm/h, finite) -> (2, lat, lon) grid cells per step."""
    motion = _pysteps().motion
    # DARTS needs its temporal order N_t below T-1 (pysteps' default N_t=4 wants 6+ frames).
    options = {"N_t": min(4, precip.shape[0] - 2)} if method == "darts" and precip.shape[0] >= 3 else {}
    flow = _quiet(motion.get_method(MOTION_METHODS[method]), to_db(precip, threshold), **options)
    return np.asarray(flow, dtype=np.float64)


def steps_method(inp: MethodInputs) -> np.ndarray:
    """STEPS ensemble (Bowler et al. 2006, Seed et al. 2013) in dB, spectral domain, seeded."""
    nowcasts = _pysteps().nowcasts
    ar_order = min(MAX_AR_ORDER, inp.precip.shape[0] - 1)
    out = np.empty((inp.members, inp.steps) + inp.precip.shape[1:], dtype=np.float32)
    done = []

    def store(step_db: np.ndarray) -> None:
        # pysteps hands over each lead as it is made: keep it as float32 mm/h instead of a float64 dB stack.
        # NaN marks rain drawn from beyond the frames: a member's perturbed motion (bps, Laplace-distributed, so
        # unbounded) can outrun the upwind buffer, which is sized for max_speed_kmh. Count it dry, as pysteps'
        # outval="min" would; steps passes its own outval positionally, so extrap_kwargs can't carry it.
        out[:, len(done)] = np.nan_to_num(from_db(step_db, inp.threshold), nan=0.0)
        done.append(True)

    _quiet(
        nowcasts.get_method("steps"),
        to_db(inp.precip[-(ar_order + 1) :], inp.threshold),
        inp.velocity,
        inp.steps,
        n_ens_members=inp.members,
        n_cascade_levels=inp.cascade_levels,
        precip_thr=10 * math.log10(inp.threshold),
        kmperpixel=inp.km_per_pixel,
        timestep=TIMESTEP_MINUTES,
        ar_order=ar_order,
        noise_method="nonparametric",
        vel_pert_method="bps",
        mask_method="incremental",
        probmatching_method="cdf",
        domain="spectral",
        # numpy FFT: pyfftw gave wrong fields and crashes with parallel members (pysteps issues #30, #337).
        fft_method="numpy",
        seed=inp.seed,
        num_workers=inp.workers,
        callback=store,
        return_output=False,
    )
    if len(done) != inp.steps:
        raise RuntimeError(f"STEPS returned {len(done)} of {inp.steps} leads")
    return out


def sprog_method(inp: MethodInputs) -> np.ndarray:
    """S-PROG (Seed 2003): the deterministic, scale-filtered cascade forecast, in dB, spectral domain."""
    nowcasts = _pysteps().nowcasts
    ar_order = min(MAX_AR_ORDER, inp.precip.shape[0] - 1)
    db = _quiet(
        nowcasts.get_method("sprog"),
        to_db(inp.precip[-(ar_order + 1) :], inp.threshold),
        inp.velocity,
        inp.steps,
        n_cascade_levels=inp.cascade_levels,
        precip_thr=10 * math.log10(inp.threshold),
        ar_order=ar_order,
        probmatching_method="cdf",
        domain="spectral",
        fft_method="numpy",
    )
    return from_db(db, inp.threshold)[np.newaxis]


def extrapolation_method(inp: MethodInputs) -> np.ndarray:
    """Semi-Lagrangian advection of the newest frame in mm/h (keeps the rain total away from the edges)."""
    nowcasts = _pysteps().nowcasts
    return _quiet(nowcasts.get_method("extrapolation"), inp.precip[-1], inp.velocity, inp.steps)[np.newaxis]


def persistence(inp: MethodInputs) -> np.ndarray:
    """Eulerian persistence: the newest frame repeated."""
    return np.repeat(inp.precip[-1][np.newaxis, np.newaxis], inp.steps, axis=1)


def zero_rain(inp: MethodInputs) -> np.ndarray:
    return np.zeros((1, inp.steps) + inp.precip.shape[1:])


METHODS: dict[str, Callable[[MethodInputs], np.ndarray]] = {
    "steps": steps_method,
    "extrapolation": extrapolation_method,
    "sprog": sprog_method,
}
FALLBACKS: dict[str, Callable[[MethodInputs], np.ndarray]] = {"persistence": persistence, "zero": zero_rain}
SIMPLER = {"steps": "extrapolation", "sprog": "extrapolation", "extrapolation": "persistence", "persistence": "zero"}
NEEDS_CASCADE = {"steps", "sprog"}


def buffer_degrees_for(max_speed_kmh: float, horizon_h: float, lat: float) -> float:
    """Degrees to add around a domain so rain moving at `max_speed_kmh` for `horizon_h` starts inside it.

    Distance / km per degree of longitude at `lat` (the longitude degree is the shorter one, so the same
    buffer also covers the meridional direction). Pass the domain's most poleward latitude.
    """
    if max_speed_kmh < 0 or horizon_h < 0:
        raise ValueError("speed and horizon must not be negative")
    km_per_lon_degree = KM_PER_DEGREE * max(math.cos(math.radians(min(abs(lat), 89.0))), 1e-3)
    return max_speed_kmh * horizon_h / km_per_lon_degree


def nowcast_domain(domain, settings, steps: int | None = None, lead_offset: int = 0):
    """The domain plus its upwind buffer: the larger of `settings.buffer_degrees` and speed x horizon."""
    steps = settings.steps if steps is None else steps
    horizon_h = (steps + lead_offset) * TIMESTEP_MINUTES / 60
    poleward = max(abs(domain.south), abs(domain.north))
    return domain.buffered(max(settings.buffer_degrees, buffer_degrees_for(settings.max_speed_kmh, horizon_h, poleward)))


def _space_coords(frames: xr.DataArray, grid: LatLonGrid) -> dict:
    """The frames' own lat/lon values (so results align with the input exactly) with CF attributes."""
    return {name: (name, frames[name].values, attrs) for name, (_, _, attrs) in grid.coords().items()}


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


def _advect_mask(mask: np.ndarray, velocity: np.ndarray, steps: int) -> np.ndarray:
    """Where each lead's back-trajectory starts on a missing pixel: the missing area moves with the rain."""
    if not mask.any():
        return np.zeros((steps,) + mask.shape, dtype=bool)
    if not velocity.any():
        return np.repeat(mask[np.newaxis], steps, axis=0)
    extrapolation = _pysteps().extrapolation
    moved = _quiet(extrapolation.get_method("semilagrangian"), mask.astype(float), velocity, steps, outval=0.0)
    return moved > 0.5


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
    masked = _advect_mask(seq.missing, velocity, steps + skip)[skip:]
    forecast = np.where(masked[np.newaxis], np.float32(np.nan), forecast)
    if forecast.shape[0] != members:
        forecast = np.repeat(forecast[:1], members, axis=0)
    leads = np.arange(skip + 1, skip + steps + 1)
    space = _space_coords(frames, grid)
    return NowcastResult(
        precip=_as_dataarray(forecast, space, seq.newest_time, leads, requested, chosen, record.reasons, settings, seed),
        method_used=chosen,
        degraded=record.reasons,
        velocity=_velocity_dataarray(velocity, grid, space),
    )


def _as_dataarray(forecast, space, newest_time, leads, requested, chosen, reasons, settings, seed) -> xr.DataArray:
    valid = [newest_time + int(lead) * timedelta(minutes=TIMESTEP_MINUTES) for lead in leads]
    coords = space | {
        "member": ("member", np.arange(forecast.shape[0], dtype=np.int32), {"long_name": "ensemble member"}),
        "time": ("time", pd.DatetimeIndex(valid).tz_convert(None).values, {"standard_name": "time", "long_name": "valid time (start of the half hour)"}),
        "forecast_period": ("time", (leads * TIMESTEP_MINUTES).astype(np.int32), {"standard_name": "forecast_period", "units": "minutes"}),
        "forecast_reference_time": ((), pd.Timestamp(newest_time).tz_convert(None).to_datetime64(), {"standard_name": "forecast_reference_time", "long_name": "start of the newest input granule"}),
    }
    return xr.DataArray(
        forecast,
        dims=("member", "time", "lat", "lon"),
        coords=coords,
        name="precipitation",
        attrs={
            "units": "mm h-1",
            "standard_name": "lwe_precipitation_rate",
            "long_name": "nowcast precipitation rate",
            "nowcast_method_requested": requested,
            "nowcast_method": chosen,
            "nowcast_motion": settings.motion,
            "nowcast_degraded": ",".join(reasons),
            "nowcast_seed": int(seed),
            "nowcast_threshold_mmh": float(settings.rain_threshold_mmh),
        },
    )


def _velocity_dataarray(velocity: np.ndarray, grid: LatLonGrid, space: dict) -> xr.DataArray:
    seconds = TIMESTEP_MINUTES * 60
    dx_m = 1000 * KM_PER_DEGREE * grid.res * np.cos(np.radians(grid.lats))[:, np.newaxis]
    dy_m = 1000 * KM_PER_DEGREE * grid.res
    eastward, northward = velocity[0] * dx_m / seconds, velocity[1] * dy_m / seconds
    return xr.DataArray(
        np.stack([eastward, northward]).astype(np.float32),
        dims=("component", "lat", "lon"),
        coords=space | {"component": ("component", ["eastward", "northward"])},
        name="motion",
        attrs={"units": "m s-1", "long_name": "advection velocity of the rain field"},
    )
