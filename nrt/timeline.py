"""Cycle times, expected granule times and latency rules. All times are timezone-aware UTC.

A half-hour granule is named by its start time, as IMERG does: granule S covers [S, S + 30 min).
At cycle time T the newest IMERG Early granule expected is S = floor_halfhour(T - latency); the bridge
then covers the valid times S, S + 30 min, ..., T (lead 0 is IMERG itself, leads 1..8 the nowcast).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import numpy as np

HALF_HOUR = timedelta(minutes=30)
GEOSFP_INIT_HOURS = (0, 6, 12, 18)


def utc(t: datetime | str) -> datetime:
    """Parse ISO text or check a datetime; naive inputs are refused rather than guessed."""
    if isinstance(t, str):
        text = t.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        t = datetime.fromisoformat(text)
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t!r}: nrt works in timezone-aware UTC only")
    return t.astimezone(timezone.utc)


def utc_times(values) -> list[datetime]:
    """numpy datetime64 values (an xarray `time` coordinate holds naive UTC) as aware UTC datetimes."""
    return [datetime.fromtimestamp(t.astype("datetime64[s]").astype(np.int64), timezone.utc) for t in np.asarray(values)]


def floor_to(t: datetime, period: timedelta) -> datetime:
    t = utc(t)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    steps = (t - midnight) // period
    return midnight + steps * period


def floor_halfhour(t: datetime) -> datetime:
    return floor_to(t, HALF_HOUR)


def cycle_times(start: datetime, end: datetime, period: timedelta = HALF_HOUR) -> list[datetime]:
    """Cycle times aligned to `period` within [start, end], both ends included when aligned."""
    first = floor_to(start, period)
    if first < utc(start):
        first += period
    times, t = [], first
    while t <= utc(end):
        times.append(t)
        t += period
    return times


def newest_imerg_start(cycle_time: datetime, latency: timedelta = timedelta(hours=4)) -> datetime:
    """Start S of the newest IMERG Early granule expected to exist at `cycle_time`."""
    if latency < timedelta(0):
        raise ValueError("latency must not be negative")
    return floor_halfhour(utc(cycle_time) - latency)


def motion_starts(newest: datetime, n: int = 3) -> list[datetime]:
    """Start times of the `n` granules ending with `newest`, oldest first (the motion field's inputs)."""
    if n < 1:
        raise ValueError("need at least one granule")
    newest = floor_halfhour(newest)
    return [newest - k * HALF_HOUR for k in range(n - 1, -1, -1)]


def bridge_valid_times(newest: datetime, cycle_time: datetime) -> list[datetime]:
    """Valid times S, S + 30 min, ..., T; the index in this list is the lead in half-hours."""
    start, end = floor_halfhour(newest), floor_halfhour(cycle_time)
    if end < start:
        raise ValueError(f"cycle time {end:%Y-%m-%dT%H:%MZ} precedes the newest granule {start:%Y-%m-%dT%H:%MZ}")
    return [start + k * HALF_HOUR for k in range(int((end - start) / HALF_HOUR) + 1)]


def lead_of(valid: datetime, newest: datetime) -> int:
    return int((utc(valid) - utc(newest)) / HALF_HOUR)


def geosfp_init_for(valid: datetime, now: datetime, latency: timedelta = timedelta(hours=5)) -> datetime:
    """Newest GEOS-FP forecast initialisation (00/06/12/18 UTC) published by `now` that is not after `valid`.

    GEOS-FP forecasts appear on the portal some hours after their initialisation (`latency`).
    """
    latest_published = floor_to(utc(now) - latency, timedelta(hours=6))
    return min(latest_published, floor_to(utc(valid), timedelta(hours=6)))


def geosfp_hours_for(valid: datetime) -> tuple[datetime, datetime]:
    """The two hourly tavg1 time stamps (HH:30) bracketing the centre of the half-hour starting at `valid`."""
    centre = floor_halfhour(valid) + timedelta(minutes=15)
    before = floor_to(centre - timedelta(minutes=30), timedelta(hours=1)) + timedelta(minutes=30)
    return before, before + timedelta(hours=1)


def isoformat(t: datetime) -> str:
    """Compact ISO form used in file names, logs and the catalog: 2024-06-01T12:30:00Z."""
    return utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """UTC wall time, optionally shifted and accelerated: `origin + speed × (real seconds since creation)`.

    `Clock()` is the real clock. The demo uses `Clock(origin, speed=600)` so that the real scheduler and
    worker run several 30-minute cycles in a few real minutes.
    """

    def __init__(self, origin: datetime | None = None, speed: float = 1.0, real: Callable[[], float] = time.time):
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = speed
        self._real = real
        self._real_start = real()
        self._origin = utc(origin).timestamp() if origin is not None else self._real_start

    @property
    def is_real(self) -> bool:
        return self.speed == 1.0 and self._origin == self._real_start

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._origin + (self._real() - self._real_start) * self.speed, timezone.utc)

    __call__ = now

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        time.sleep(max(0.0, seconds) / self.speed)

    def real_time_of(self, t: datetime) -> datetime:
        """The real moment at which this clock shows `t`."""
        real = self._real_start + (utc(t).timestamp() - self._origin) / self.speed
        return datetime.fromtimestamp(real, timezone.utc)
