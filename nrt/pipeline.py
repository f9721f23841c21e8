"""One cycle at time T: acquire -> assemble -> downscale -> publish -> verify.

Each step is a function of values that returns values (`nrt.acquire`, `nrt.bridge`, `nrt.downscale`,
`nrt.products`, `nrt.verify`); this module only composes them, times them and tallies the degraded-mode
flags they return into the immutable `CycleReport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from nrt.acquire import acquire, acquire_settings
from nrt.bridge import assemble, assemble_settings
from nrt.degradation import Fallback, NowcastReason
from nrt.downscale import downscale, downscale_settings, plan_downscale
from nrt.grids import target_grid
from nrt.timeline import Clock, isoformat, utc

log = logging.getLogger("nrt.pipeline")


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did; the service turns it into metrics (see `nrt.service.metrics.CycleReportLike`)."""

    cycle_time: datetime
    imerg_start: datetime | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    degraded: tuple[str, ...] = ()  # nrt.degradation flags, in the order they arose
    nowcast_method: str | None = None
    nowcast_degraded: tuple[NowcastReason, ...] = ()
    downscale_method: str | None = None
    downscale_fallbacks: tuple[Fallback, ...] = ()  # why CSGD replaced the configured method
    products: tuple = ()
    sources: Mapping[str, datetime | None] = field(default_factory=dict)
    summary: object | None = None
    alerts: tuple = ()
    scores: tuple = ()


class _Tally:
    """One cycle's stage timings and flags so far: what the run row records, whether the cycle ends or fails."""

    def __init__(self, cycle_time: datetime):
        self.cycle_time, self.timings, self.degraded = cycle_time, {}, []

    def degrade(self, *flags: str | None) -> None:
        for why in flags:
            if why and why not in self.degraded:
                self.degraded.append(why)
                log.warning("cycle %s degraded: %s", isoformat(self.cycle_time), why)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Adds the seconds the block took to the stage's timing when it completes (a failed stage is not timed)."""
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def run_cycle(cycle_time: datetime, cfg, catalog, client, models, clock: Clock | None = None,
              progress: Callable[[str], None] | None = None) -> CycleReport:
    """Run one cycle end to end and return what it did. Raises `nrt.acquire.CycleFailed` when nothing can be made.

    `models` is what the worker loaded once (`nrt.downscale.load_models`); `clock` (default: the real one)
    is the time the ingest polls late files against. The catalog keeps one run row per attempt: `running`
    while it works, then `ok`, `degraded` (with the flags) or `failed` (with the error), and the timings.
    """
    tally = _Tally(utc(cycle_time))
    run_id = catalog.start_run(tally.cycle_time)
    try:
        report = _run(tally, cfg, catalog, client, models, clock or Clock(), progress or (lambda _msg: None))
    except BaseException as exc:  # Ctrl-C / SIGTERM too: the run is closed as abandoned, not left running
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        state = "failed" if isinstance(exc, Exception) else "abandoned"
        catalog.finish_run(run_id, state, tally.timings, error=error[:500], degraded=tally.degraded)
        raise
    catalog.finish_run(run_id, "degraded" if report.degraded else "ok", report.timings, degraded=report.degraded)
    return report


def _run(tally: _Tally, cfg, catalog, client, models, clock: Clock, tell: Callable[[str], None]) -> CycleReport:
    from nrt.model.conditioning import upsample
    from nrt.products import check_areas, provenance, publish_cycle, publish_settings
    from nrt.verify import verify_granules, verify_settings

    cycle_time, grid = tally.cycle_time, target_grid(cfg.domain.box())
    check_areas(cfg.alerts.areas, grid)  # a misplaced alert area fails the cycle before any work, not after it

    tell("ingest")
    with tally.stage("ingest"):
        got = acquire(acquire_settings(cfg), catalog, cycle_time, client, clock)
    tally.degrade(*got.degraded)

    tell("nowcast")
    with tally.stage("nowcast"):
        made = assemble(assemble_settings(cfg), got, cycle_time, grid, read_geosfp=models.diffusion_loaded)
    tally.degrade(*made.degraded)
    coarse = made.bridge

    settings = downscale_settings(cfg)
    plan = plan_downscale(settings, models, made.inputs)
    tally.degrade(*plan.degraded)
    tell(f"downscale: {plan.method}, {len(made.inputs)} valid times")
    with tally.stage("downscale"):
        ensemble = downscale(settings, models, plan, made.inputs, cycle_time, callback=lambda k: tell(
            f"valid time {isoformat(coarse.valid_times[k].valid)} (lead {coarse.valid_times[k].lead}) done"))

    attrs = provenance([p.name for p in got.imerg], plan.method, plan.checkpoint_sha256, coarse.nowcast_method,
                       tally.degraded, plan.check)
    with tally.stage("products"):
        # The verification baseline of each valid time: the model's input (IMERG, or the nowcast member mean) at 0.05°.
        published = publish_cycle(ensemble, [(v.valid, v.lead, upsample(v.coarse.mean(axis=0))) for v in coarse.valid_times],
                                  settings=publish_settings(cfg), catalog=catalog, grid=grid, cycle_time=cycle_time,
                                  forecast_reference_time=coarse.imerg_start, attrs=attrs)

    scores = ()
    if got.dpr:
        tell("verify")
        with tally.stage("verify"):
            scores = tuple(verify_granules(verify_settings(cfg), catalog, list(got.dpr)))
    log.info("cycle %s done: %d products, nowcast %s, downscale %s, degraded %s, %s", isoformat(cycle_time),
             len(published.products), coarse.nowcast_method, plan.method, tally.degraded or "no",
             ", ".join(f"{k} {v:.1f}s" for k, v in tally.timings.items()))
    return CycleReport(
        cycle_time, coarse.imerg_start, dict(tally.timings), tuple(tally.degraded), coarse.nowcast_method,
        coarse.nowcast_degraded, plan.method, (plan.fallback,) if plan.fallback else (), tuple(published.products),
        dict(got.sources), published.summary, tuple(published.alerts), scores,
    )
