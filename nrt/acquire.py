"""Acquire: every file one cycle needs, from the servers into the granule store, and the fallback policies.

The network and the catalog are reached through `nrt.sources.ingest`; the rules that decide what a cycle
makes do with when files are late or missing are the pure functions `imerg_verdict` and `geosfp_verdict`
(a fake acquired set in, a decision out), so they are tested without a server, a catalog or a model:

- IMERG: the motion window ending at the newest granule expected, S = floor(T - latency). While S is
  missing the window moves back by half-hours (`timeline.motion_granules` tries), and the cycle is flagged
  `imerg_missing:<S>`; with no granule at all there is nothing to nowcast from and the cycle fails.
- GEOS-FP: the newest forecast; when a file of it is missing or bad, the forecast 6 h older fills in
  (`geosfp_previous_forecast`, or `geosfp_missing` if that one is incomplete too).
- DEM: static; without it the cycle runs flagged `dem_missing`.
- DPR: only verifies; a cycle without it just skips verification.
The newest source (IMERG, GEOS-FP) polls for late files until `service.ingest_cutoff_minutes` after T.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nrt.degradation import Degradation, flag
from nrt.errors import NrtError
from nrt.sources import IngestResult, IngestSettings, dpr, geosfp, imerg, ingest, ingest_settings
from nrt.timeline import HALF_HOUR, Clock, isoformat, newest_imerg_start, utc

log = logging.getLogger("nrt.acquire")

GEOSFP_RUN_SPACING = timedelta(hours=6)  # GEOS-FP forecasts start at 00, 06, 12 and 18 UTC
STATIC_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)  # the DEM is the same at every time


class CycleFailed(NrtError):
    """A cycle that cannot produce anything (no IMERG at all); `stage` names where it stopped."""

    def __init__(self, stage: str, reason: str):
        self.stage, self.reason = stage, reason
        super().__init__(f"{stage}: {reason}")


@dataclass(frozen=True)
class Acquired:
    """What the cycle has to work with."""

    imerg: tuple[Path, ...]  # the motion window, oldest first
    imerg_start: datetime  # start of the newest granule in it
    geosfp: Mapping[datetime, tuple[Path, ...]]  # by hourly stamp (HH:30, the middle of the averaging hour)
    dem: Path | None
    dpr: tuple[Path, ...]
    degraded: tuple[str, ...]
    sources: Mapping[str, datetime | None]  # source -> start of its newest granule (None: static)


@dataclass(frozen=True)
class AcquireSettings:
    """What acquiring uses, taken from the config once by `acquire_settings(cfg)`."""

    ingest: IngestSettings
    imerg_latency: timedelta
    motion_granules: int  # IMERG granules in the motion window, and half-hours tried back when S is missing
    ingest_cutoff: timedelta  # after the cycle time, polling for late files stops
    poll_backoff_s: float  # the first wait between polls; it doubles


def acquire_settings(cfg) -> AcquireSettings:
    return AcquireSettings(ingest_settings(cfg), timedelta(minutes=cfg.timeline.imerg_latency_minutes),
                           cfg.timeline.motion_granules, timedelta(minutes=cfg.service.ingest_cutoff_minutes),
                           cfg.service.poll_backoff_s)


# ---------------------------------------------------------------------------------------------- policies


def imerg_verdict(newest: datetime | None, expected: datetime, back: int, tries: int) -> tuple[bool, bool]:
    """(use this window, flagged as missing) for the window found `back` half-hours back, whose newest
    granule starts at `newest` (None: none at all) where `expected` was due. The last try takes what it has."""
    if newest is None:
        return False, False
    if newest == expected:
        return True, back > 0
    return back == tries - 1, True


def geosfp_verdict(newest: IngestResult, previous: IngestResult | None) -> Degradation | None:
    """The flag of a cycle whose newest forecast came as `newest`, and the older one (if asked for) as `previous`."""
    if not (newest.missing or newest.bad):
        return None
    return Degradation.GEOSFP_MISSING if previous is None or previous.missing else Degradation.GEOSFP_PREVIOUS_FORECAST


# ---------------------------------------------------------------------------------------------- I/O


def ingest_waiting(source: str, s: AcquireSettings, catalog, t: datetime, client, clock: Clock) -> IngestResult:
    """Ingest `source` for `t`, polling for late files with backoff until the cycle's cutoff.

    The cutoff is `s.ingest_cutoff` after the cycle time on the service clock, so a backfilled or caught-up
    cycle polls once and proceeds with what exists.
    """
    deadline = utc(t) + s.ingest_cutoff
    delay = s.poll_backoff_s
    while True:
        result = ingest(source, s.ingest, catalog, t, client)
        remaining = (deadline - clock.now()).total_seconds()
        if not result.missing or remaining <= 0:
            return result
        wait = min(delay, remaining)
        log.info("%s: %d file(s) not published yet; polling again in %.0f s", source, len(result.missing), wait)
        clock.sleep(wait)
        delay *= 2


def imerg_start(path: Path) -> datetime:
    return imerg.parse_name(path.name).start


def acquire_imerg(s: AcquireSettings, catalog, cycle_time: datetime, client, clock: Clock) -> tuple[list[Path], list[str]]:
    """The motion window's IMERG files and the cycle's flag when the newest ones are missing."""
    tries = s.motion_granules
    nominal = newest_imerg_start(cycle_time, s.imerg_latency)
    for back in range(tries):
        t = cycle_time - back * HALF_HOUR
        result = ingest_waiting("imerg", s, catalog, t, client, clock) if back == 0 else ingest("imerg", s.ingest, catalog, t, client)
        files = sorted(set(result.files), key=imerg_start)
        use, missing = imerg_verdict(imerg_start(files[-1]) if files else None, newest_imerg_start(t, s.imerg_latency), back, tries)
        if use:
            return files, [flag(Degradation.IMERG_MISSING, isoformat(nominal))] if missing else []
    raise CycleFailed("ingest", f"no IMERG Early granule within {tries} half-hours before {isoformat(nominal)}")


def acquire_geosfp(s: AcquireSettings, catalog, cycle_time: datetime, client, clock: Clock) -> tuple[dict[datetime, tuple[Path, ...]], list[str]]:
    """GEOS-FP files by hourly stamp; where the newest forecast is missing, the previous one fills in."""
    own = s.ingest.sources.get("geosfp")
    if own is None:  # disabled
        return {}, []
    result = ingest_waiting("geosfp", s, catalog, cycle_time, client, clock)
    previous = None
    files = list(result.files)
    if result.missing or result.bad:
        older = geosfp.expected_files(own, cycle_time, own.latency + GEOSFP_RUN_SPACING)
        previous = ingest("geosfp", s.ingest, catalog, cycle_time, client, expected=older)
        files.extend(previous.files)
    verdict = geosfp_verdict(result, previous)
    by_hour: dict[datetime, list[Path]] = {}
    for path in files:
        rf = geosfp.parse_name(path.name)
        by_hour.setdefault(rf.start + (rf.end - rf.start) / 2, []).append(path)
    return {hour: tuple(paths) for hour, paths in by_hour.items()}, [verdict] if verdict else []


def acquire(s: AcquireSettings, catalog, cycle_time: datetime, client, clock: Clock) -> Acquired:
    """Every source of the cycle at `cycle_time`, with the fallbacks above (a disabled source gives no files)."""
    imerg_files, degraded = acquire_imerg(s, catalog, cycle_time, client, clock)
    sources: dict[str, datetime | None] = {"imerg": imerg_start(imerg_files[-1])}
    by_hour, flags = acquire_geosfp(s, catalog, cycle_time, client, clock)
    degraded += flags
    if by_hour:  # the newest file's averaging hour starts half an hour before its stamp
        sources["geosfp"] = max(by_hour) - geosfp.AVERAGING / 2
    dem_files = ingest("dem", s.ingest, catalog, STATIC_TIME, client).files
    if dem_files:
        sources["dem"] = None  # static: ingested, with no granule time
    else:
        degraded.append(Degradation.DEM_MISSING)
    dpr_files = ingest("dpr", s.ingest, catalog, cycle_time, client).files
    if dpr_files:
        sources["dpr"] = max(dpr.parse_name(p.name).start for p in dpr_files)
    return Acquired(tuple(imerg_files), sources["imerg"], by_hour, dem_files[0] if dem_files else None,
                    tuple(dpr_files), tuple(degraded), sources)
