"""Assemble: the acquired files -> the model's inputs at each valid time of the cycle.

At T the newest IMERG Early granule expected starts at S = floor(T - latency). The bridge covers the valid
times S, S + 30 min, ..., T: valid time S is IMERG itself (lead 0) and the later ones are pysteps nowcast
leads. When S is missing the nowcast starts from the newest granule that exists, so every valid time gets
one more lead. Each valid time's inputs come from the one assembly shared with training
(`nrt.model.assemble.assemble`); GEOS-FP is read for it here, on the target grid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from nrt.acquire import Acquired
from nrt.degradation import Degradation, NowcastReason, flag
from nrt.errors import NrtError
from nrt.grids import Domain, LatLonGrid, target_grid
from nrt.sources import geosfp, imerg
from nrt.timeline import HALF_HOUR, bridge_valid_times, geosfp_hours_for, isoformat, newest_imerg_start, utc_times

log = logging.getLogger("nrt.bridge")


@dataclass(frozen=True)
class ValidTime:
    """The coarse inputs of one valid time: precipitation (member, lat, lon) at 0.1° and IMERG's random error."""

    valid: datetime
    lead: int
    coarse: np.ndarray
    random_error: np.ndarray | None


@dataclass(frozen=True)
class Bridge:
    valid_times: tuple[ValidTime, ...]
    imerg_start: datetime  # the newest granule the nowcast started from
    nowcast_method: str
    nowcast_degraded: tuple[NowcastReason, ...]


def bridge(imerg_files: Sequence[Path], cycle_time: datetime, *, domain: Domain, latency: timedelta, settings,
           members: int, seed: int, variables: Sequence[str]) -> Bridge:
    """Coarse precipitation and its lead for each valid time, from the motion window `imerg_files` (oldest
    first); `settings` is the `[nowcast]` section, `variables` the IMERG variables read besides precipitation."""
    from nrt.model.assemble import assemble
    from nrt.nowcast import nowcast, nowcast_domain

    nominal = newest_imerg_start(cycle_time, latency)
    newest = imerg.parse_name(imerg_files[-1].name).start
    steps = len(bridge_valid_times(newest, cycle_time)) - 1
    frames = imerg.read_imerg(imerg_files, nowcast_domain(domain, settings, steps=steps), variables)
    result = nowcast(frames["precipitation"], settings, steps=max(steps, 1), members=members, seed=seed)

    grid = target_grid(domain)
    forecast_times = utc_times(result.precip["time"].values)
    out = []
    for valid in bridge_valid_times(nominal, cycle_time):
        # Valid times at (or, when granules are missing, before) the newest granule are IMERG itself (lead 0),
        # one field that every diffusion member shares (the model maps member i to input i mod 1).
        lead = max(0, int((valid - newest) / HALF_HOUR))
        forecast = result.precip.isel(time=forecast_times.index(valid)) if lead else None
        cond = assemble(grid, valid, lead, frames, forecast)
        out.append(ValidTime(valid, lead, cond.precip, cond.random_error))
    return Bridge(tuple(out), newest, result.method_used, tuple(result.degraded))


def nowcast_flags(reasons: Sequence[NowcastReason]) -> list[str]:
    return [flag(Degradation.NOWCAST, reason) for reason in reasons]


def geosfp_at(by_hour: Mapping[datetime, Sequence[Path]], valid: datetime, grid: LatLonGrid, variables: Sequence[str],
              enabled: bool) -> tuple[xr.Dataset | None, str | None]:
    """GEOS-FP `variables` at `valid` on `grid` and the cycle's flag, or None (the model then uses its training
    means) with `geosfp_missing` (when enabled) or `geosfp_unreadable`."""
    if not variables or not all(by_hour.get(h) for h in geosfp_hours_for(valid)):
        return None, Degradation.GEOSFP_MISSING if enabled else None
    try:
        return geosfp.read_geosfp(by_hour, valid, grid, variables), None
    except NrtError as exc:
        log.warning("GEOS-FP unusable for %s: %s", isoformat(valid), exc)
        return None, Degradation.GEOSFP_UNREADABLE


def conditions(made: Bridge, grid: LatLonGrid, dem: xr.Dataset | None, geosfp_files: Mapping[datetime, Sequence[Path]],
               variables: Sequence[str], geosfp_enabled: bool, read_geosfp: bool) -> tuple[list, list[str]]:
    """The model's `Conditioning` at each valid time and the cycle's GEOS-FP flags; GEOS-FP is read only when
    `read_geosfp` (a diffusion model that loaded: CSGD reads the rain alone, with no GEOS-FP reads or flags)."""
    from nrt.model.conditioning import Conditioning

    out, flags = [], []
    for v in made.valid_times:
        geos, why = geosfp_at(geosfp_files, v.valid, grid, variables, geosfp_enabled) if read_geosfp else (None, None)
        flags.append(why)
        out.append(Conditioning(precip=v.coarse, grid=grid, lead=v.lead, random_error=v.random_error, dem=dem, geosfp=geos))
    return out, [why for why in flags if why]


@dataclass(frozen=True)
class AssembleSettings:
    """What assembling uses, taken from the config once by `assemble_settings(cfg)`."""

    domain: Domain
    latency: timedelta  # IMERG Early's: the cycle's nominal newest granule starts at floor(T - latency)
    nowcast: Any  # the `[nowcast]` section, which `nrt.nowcast` reads whole
    members: int  # nowcast members
    seed: int  # the nowcast's; each cycle adds its half-hours since the epoch
    imerg_variables: tuple[str, ...]  # read besides precipitation
    geosfp_variables: tuple[str, ...]
    geosfp_enabled: bool
    dem_cache: Path  # the DEM regridded to the target grid, kept between cycles


def assemble_settings(cfg) -> AssembleSettings:
    from nrt.model.assemble import dem_cache_dir, imerg_variables

    geos = cfg.sources.geosfp
    return AssembleSettings(cfg.domain.box(), timedelta(minutes=cfg.timeline.imerg_latency_minutes), cfg.nowcast,
                            cfg.nowcast.members, cfg.nowcast.seed, tuple(imerg_variables(cfg)),
                            (*geos.slv_variables, *geos.flx_variables), geos.enabled, dem_cache_dir(cfg))


@dataclass(frozen=True)
class Assembled:
    bridge: Bridge
    inputs: tuple  # the model's `Conditioning` at each valid time
    degraded: tuple[str, ...]  # the nowcast's and GEOS-FP's flags, in the order they arose


def assemble(s: AssembleSettings, got: Acquired, cycle_time: datetime, grid: LatLonGrid, read_geosfp: bool) -> Assembled:
    """The bridge of the cycle at `cycle_time` and each valid time's model inputs, with the DEM and GEOS-FP
    (read only when `read_geosfp`, see `conditions`)."""
    from nrt.sources.dem import load_dem

    dem = load_dem(got.dem, grid, s.dem_cache) if got.dem else None
    made = bridge(got.imerg, cycle_time, domain=s.domain, latency=s.latency, settings=s.nowcast, members=s.members,
                  seed=s.seed + int(cycle_time.timestamp()) // 1800, variables=list(s.imerg_variables))
    inputs, flags = conditions(made, grid, dem, got.geosfp, list(s.geosfp_variables), s.geosfp_enabled, read_geosfp)
    return Assembled(made, tuple(inputs), (*nowcast_flags(made.nowcast_degraded), *flags))
