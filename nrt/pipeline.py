"""One cycle at time T: ingest -> nowcast bridge -> residual diffusion -> products -> verification.

This module only composes the stages; each stage's I/O lives in its own module (sources, products,
verify). At T the newest IMERG Early granule expected starts at S = floor(T - latency). The bridge covers
the valid times S, S + 30 min, ..., T: valid time S is IMERG itself (lead 0) and the later ones are pysteps
nowcast leads. When S is missing the nowcast starts from the newest granule that exists, so every valid
time gets one more lead, and the degraded mode is recorded. The configured downscaling method
(`nrt.downscale`: residual diffusion or the CSGD ensemble) turns the bridge into the 0.05° ensemble; member i
is conditioned on nowcast member i. When the diffusion model cannot run, the cycle writes the CSGD ensemble
and records why (`CycleReport.fall_back`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import xarray as xr

from nrt import __version__, downscale, sources
from nrt.degradation import Degradation, Fallback, NowcastReason, flag
from nrt.errors import NrtError
from nrt.grids import LatLonGrid, target_grid
from nrt.timeline import HALF_HOUR, bridge_valid_times, geosfp_hours_for, isoformat, newest_imerg_start, utc, utc_times

log = logging.getLogger("nrt.pipeline")


@dataclass
class CycleReport:
    """What one cycle did; the service turns it into metrics (see `nrt.service.metrics.CycleReportLike`)."""

    cycle_time: datetime
    imerg_start: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)  # Degradation flags (nrt.degradation)
    nowcast_method: str | None = None
    nowcast_degraded: list[NowcastReason] = field(default_factory=list)
    downscale_method: str | None = None
    downscale_fallbacks: list[Fallback] = field(default_factory=list)  # why CSGD replaced the configured method
    products: list = field(default_factory=list)
    sources: dict[str, datetime | None] = field(default_factory=dict)
    summary: object | None = None
    alerts: list = field(default_factory=list)
    scores: list = field(default_factory=list)

    def degrade(self, why: str) -> None:
        if why not in self.degraded:
            self.degraded.append(why)
            log.warning("cycle %s degraded: %s", isoformat(self.cycle_time), why)

    def fall_back(self, reason: Fallback) -> None:
        """The cycle writes the CSGD ensemble instead of the configured model's, because of `reason`."""
        if reason not in self.downscale_fallbacks:
            self.downscale_fallbacks.append(reason)
        self.degrade(flag(Degradation.DOWNSCALE_FALLBACK, reason))


@contextmanager
def stopwatch(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the seconds the block took to `timings[stage]` when it completes (a failed stage is not timed)."""
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


class CycleFailed(NrtError):
    """A cycle that cannot produce anything (no IMERG at all); `stage` names where it stopped."""

    def __init__(self, stage: str, reason: str):
        self.stage, self.reason = stage, reason
        super().__init__(f"{stage}: {reason}")


# ---------------------------------------------------------------------------------------------- ingest


def ingest_waiting(
    source: str, cfg, catalog, t: datetime, client, now: Callable[[], datetime], sleep: Callable[[float], None]
) -> sources.IngestResult:
    """Ingest `source` for `t`, polling for late files with backoff until the cycle's cutoff.

    The cutoff is `service.ingest_cutoff_minutes` after the cycle time on the service clock, so a
    backfilled or caught-up cycle polls once and proceeds with what exists.
    """
    deadline = utc(t) + timedelta(minutes=cfg.service.ingest_cutoff_minutes)
    delay = cfg.service.poll_backoff_s
    while True:
        result = sources.ingest(source, cfg, catalog, t, client)
        remaining = (deadline - now()).total_seconds()
        if not result.missing or remaining <= 0:
            return result
        wait = min(delay, remaining)
        log.info("%s: %d file(s) not published yet; polling again in %.0f s", source, len(result.missing), wait)
        sleep(wait)
        delay *= 2


def imerg_inputs(cfg, catalog, cycle_time: datetime, client, report: CycleReport, now, sleep) -> list[Path]:
    """The motion window's IMERG files, falling back by half-hours while the newest ones are missing."""
    latency = timedelta(minutes=cfg.timeline.imerg_latency_minutes)
    nominal = newest_imerg_start(cycle_time, latency)
    for back in range(cfg.timeline.motion_granules):
        t = cycle_time - back * HALF_HOUR
        result = ingest_waiting("imerg", cfg, catalog, t, client, now, sleep) if back == 0 else sources.ingest("imerg", cfg, catalog, t, client)
        files = sorted(set(result.files), key=_imerg_start)
        if files and _imerg_start(files[-1]) == newest_imerg_start(t, latency):
            if back:
                report.degrade(flag(Degradation.IMERG_MISSING, isoformat(nominal)))
            return files
        if files and back == cfg.timeline.motion_granules - 1:
            report.degrade(flag(Degradation.IMERG_MISSING, isoformat(nominal)))
            return files
    raise CycleFailed("ingest", f"no IMERG Early granule within {cfg.timeline.motion_granules} half-hours before {isoformat(nominal)}")


def _imerg_start(path: Path) -> datetime:
    return sources.module("imerg").parse_name(path.name).start


def geosfp_files(cfg, catalog, cycle_time: datetime, client, report: CycleReport, now, sleep) -> dict[datetime, list[Path]]:
    """GEOS-FP files by hourly stamp; where the newest forecast is missing, the previous one (6 h older) is used."""
    if not cfg.sources.geosfp.enabled:
        return {}
    result = ingest_waiting("geosfp", cfg, catalog, cycle_time, client, now, sleep)
    if result.missing or result.bad:
        # Asking as if the newest initialisation were not published yet selects the previous forecast.
        older = cfg.model_copy(deep=True)
        older.timeline.geosfp_latency_hours += 6
        older.secrets = cfg.secrets
        fallback = sources.ingest("geosfp", older, catalog, cycle_time, client)
        report.degrade(Degradation.GEOSFP_PREVIOUS_FORECAST if not fallback.missing else Degradation.GEOSFP_MISSING)
        result.files.extend(fallback.files)
    geosfp = sources.module("geosfp")
    by_hour: dict[datetime, list[Path]] = {}
    for path in result.files:
        rf = geosfp.parse_name(path.name)
        # Keyed by the hourly stamp (HH:30, the middle of the averaging hour), as read_geosfp looks files up.
        by_hour.setdefault(rf.start + (rf.end - rf.start) / 2, []).append(path)
    return by_hour


def geosfp_fields(cfg, by_hour: dict[datetime, list[Path]], valid: datetime, grid: LatLonGrid, report: CycleReport):
    """GEOS-FP variables at `valid` on the target grid, or None (the model then uses its training means)."""
    variables = [*cfg.sources.geosfp.slv_variables, *cfg.sources.geosfp.flx_variables]
    if not variables or not all(by_hour.get(h) for h in geosfp_hours_for(valid)):
        if cfg.sources.geosfp.enabled:
            report.degrade(Degradation.GEOSFP_MISSING)
        return None
    try:
        return sources.module("geosfp").read_geosfp(by_hour, valid, grid, variables)
    except NrtError as exc:
        log.warning("GEOS-FP unusable for %s: %s", isoformat(valid), exc)
        report.degrade(Degradation.GEOSFP_UNREADABLE)
        return None


def dem_fields(cfg, catalog, client, grid: LatLonGrid, report: CycleReport):
    result = sources.ingest("dem", cfg, catalog, datetime(2000, 1, 1, tzinfo=timezone.utc), client)
    if not result.files:
        report.degrade(Degradation.DEM_MISSING)
        return None
    from nrt.model.assemble import dem_cache_dir

    return sources.module("dem").load_dem(result.files[0], grid, dem_cache_dir(cfg))


# ---------------------------------------------------------------------------------------------- nowcast


def bridge_inputs(cfg, imerg_files: list[Path], cycle_time: datetime, report: CycleReport):
    """Coarse precipitation (member, lat, lon) at 0.1° over the domain, and its lead, for each valid time."""
    from nrt.model.assemble import assemble, imerg_variables
    from nrt.nowcast import nowcast, nowcast_domain

    imerg = sources.module("imerg")
    domain = cfg.domain.box()
    latency = timedelta(minutes=cfg.timeline.imerg_latency_minutes)
    nominal = newest_imerg_start(cycle_time, latency)
    newest = _imerg_start(imerg_files[-1])
    valid_times = bridge_valid_times(nominal, cycle_time)
    steps = len(bridge_valid_times(newest, cycle_time)) - 1
    wide = nowcast_domain(domain, cfg.nowcast, steps=steps)
    frames = imerg.read_imerg(imerg_files, wide, imerg_variables(cfg))
    members = cfg.nowcast.members
    seed = cfg.nowcast.seed + int(cycle_time.timestamp()) // 1800
    result = nowcast(frames["precipitation"], cfg.nowcast, steps=max(steps, 1), members=members, seed=seed)
    report.imerg_start = newest
    report.nowcast_method = result.method_used
    report.nowcast_degraded = list(result.degraded)
    for reason in result.degraded:
        report.degrade(flag(Degradation.NOWCAST, reason))

    grid = target_grid(domain)
    forecast_times = utc_times(result.precip["time"].values)
    bridge = []
    for valid in valid_times:
        # Valid times at (or, when granules are missing, before) the newest granule are IMERG itself (lead 0),
        # one field that every diffusion member shares (the model maps member i to input i mod 1).
        lead = max(0, int((valid - newest) / HALF_HOUR))
        forecast = result.precip.isel(time=forecast_times.index(valid)) if lead else None
        cond = assemble(grid, valid, lead, frames, forecast)
        bridge.append((valid, lead, cond.precip, cond.random_error))
    return bridge


# ---------------------------------------------------------------------------------------------- cycle


@dataclass
class _InputVerdict:
    reason: str | None
    max_z: float
    fallback: bool


def _check_inputs(cfg, models, conditions, report: CycleReport) -> _InputVerdict | None:
    """The diffusion checkpoint's input guard (`nrt.model.guard`): a required channel missing always falls back
    to CSGD; inputs beyond `model.ood_max_z` are flagged, and fall back when `model.ood_fallback` is on."""
    if models.method != downscale.DIFFUSION or models.diffusion is None:
        return None
    from nrt.model.guard import check_inputs

    check = check_inputs(models.diffusion.spec, conditions, cfg.model.ood_max_z)
    if check.reason is None:
        return _InputVerdict(None, check.max_z, False)
    log.warning("cycle %s: %s (%s)", isoformat(report.cycle_time), check.reason, check.detail)
    fallback = check.reason == Fallback.INPUTS_MISSING or cfg.model.ood_fallback
    if not fallback:
        report.degrade(check.reason)
    return _InputVerdict(check.reason, check.max_z, fallback)


def run_cycle(
    cycle_time: datetime,
    cfg,
    catalog,
    client,
    models,
    now: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[str], None] | None = None,
) -> CycleReport:
    """Run one cycle end to end and return what it did. Raises `CycleFailed` when nothing can be made.

    `models` is what the worker loaded once (`nrt.downscale.load_models`).

    The catalog's `runs` table keeps one row per attempt: `running` while it works, then `ok`, `degraded`
    (with the flags) or `failed` (with the error), and the stage timings.
    """
    report = CycleReport(utc(cycle_time))
    run_id = catalog.start_run(report.cycle_time)
    try:
        _run_stages(report, cfg, catalog, client, models, now or (lambda: datetime.now(timezone.utc)), sleep,
                    progress or (lambda _msg: None))
    except BaseException as exc:  # Ctrl-C / SIGTERM too: the run is closed as abandoned, not left running
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        state = "failed" if isinstance(exc, Exception) else "abandoned"
        catalog.finish_run(run_id, state, report.timings, error=error[:500], degraded=report.degraded)
        raise
    catalog.finish_run(run_id, "degraded" if report.degraded else "ok", report.timings, degraded=report.degraded)
    return report


def _run_stages(report: CycleReport, cfg, catalog, client, models, now, sleep, tell) -> None:
    from nrt.model.conditioning import Conditioning, upsample
    from nrt.products import alert_states, check_areas, publish_valid_time

    cycle_time = report.cycle_time
    grid = target_grid(cfg.domain.box())
    check_areas(cfg.alerts.areas, grid)  # a misplaced alert area fails the cycle before any work, not after it

    tell("ingest")
    with stopwatch(report.timings, "ingest"):
        imerg_files = imerg_inputs(cfg, catalog, cycle_time, client, report, now, sleep)
        report.sources["imerg"] = _imerg_start(imerg_files[-1])
        by_hour = geosfp_files(cfg, catalog, cycle_time, client, report, now, sleep)
        if by_hour:  # the newest file's averaging hour starts half an hour before its stamp
            report.sources["geosfp"] = max(by_hour) - sources.module("geosfp").AVERAGING / 2
        dem = dem_fields(cfg, catalog, client, grid, report)
        if dem is not None:
            report.sources["dem"] = None  # static: ingested, with no granule time
        dpr_files = sources.ingest("dpr", cfg, catalog, cycle_time, client).files if cfg.sources.dpr.enabled else []
        if dpr_files:
            report.sources["dpr"] = max(sources.module("dpr").parse_name(p.name).start for p in dpr_files)

    tell("nowcast")
    with stopwatch(report.timings, "nowcast"):
        bridge = bridge_inputs(cfg, imerg_files, cycle_time, report)

    # GEOS-FP is read only for a diffusion model that loaded: CSGD reads the rain alone (no GEOS-FP reads or flags).
    uses_geosfp = models.method == downscale.DIFFUSION and models.diffusion is not None
    conditions = [
        Conditioning(precip=coarse, grid=grid, lead=lead, random_error=random_error, dem=dem,
                     geosfp=geosfp_fields(cfg, by_hour, valid, grid, report) if uses_geosfp else None)
        for valid, lead, coarse, random_error in bridge
    ]
    check = _check_inputs(cfg, models, conditions, report)
    method, fallback = downscale.choose(models, check.reason if check and check.fallback else None)
    if fallback:
        report.fall_back(fallback)
    report.downscale_method = method
    tell(f"downscale: {method}, {len(bridge)} valid times")
    with stopwatch(report.timings, "downscale"):
        ensemble = downscale.get_method(method)(
            conditions, models, members=cfg.model.members, seed=cfg.model.seed + int(cycle_time.timestamp()) // 1800 * 97,
            options=cfg.model, callback=lambda k: tell(f"valid time {isoformat(bridge[k][0])} (lead {bridge[k][1]}) done"),
        )

    attrs = {
        "input_granules": ",".join(p.name for p in imerg_files),
        "method": method,
        "checkpoint_sha256": models.diffusion.sha256 if method == downscale.DIFFUSION else models.csgd_sha256,
        "nowcast_method": report.nowcast_method or "none",
        "software_version": __version__,
        "degraded": ",".join(report.degraded) or "none",
        "input_check": (check.reason or "ok") if check else "not_run",
        "input_max_abs_z": f"{check.max_z:.2f}" if check else "nan",
    }
    for k, (valid, lead, coarse, _random_error) in enumerate(bridge):
        with stopwatch(report.timings, "products"):
            members = xr.DataArray(ensemble[:, k : k + 1], dims=("member", "time", "lat", "lon"))
            published = publish_valid_time(
                members, cfg=cfg, catalog=catalog, grid=grid, valid_time=valid, cycle_time=cycle_time,
                forecast_reference_time=report.imerg_start, lead=lead, attrs=attrs,
                # The verification baseline: the model's input (IMERG, or the nowcast member mean) at 0.05°.
                input_precipitation=upsample(coarse.mean(axis=0)),
            )
            report.products.extend(published.products)
            report.summary = published.stats
            if valid == bridge[-1][0]:
                report.alerts = alert_states(members, grid, cfg.alerts.areas)
                for alert in report.alerts:
                    if alert.active:
                        log.warning(
                            "ALERT %s: P(rain > %g mm/h) = %.2f >= %.2f at %s",
                            alert.area, alert.threshold, alert.probability, alert.level, isoformat(valid),
                        )

    if dpr_files:
        from nrt.verify import verify_granules

        tell("verify")
        with stopwatch(report.timings, "verify"):
            report.scores = verify_granules(cfg, catalog, dpr_files)
    log.info(
        "cycle %s done: %d products, nowcast %s, downscale %s, degraded %s, %s",
        isoformat(cycle_time), len(report.products), report.nowcast_method, method, report.degraded or "no",
        ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items()),
    )
