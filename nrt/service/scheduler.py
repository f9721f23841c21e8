"""The cycle scheduler: every `timeline.cycle_minutes` (at :00/:30 plus `cycle_delay_minutes`) enqueue a cycle job.

The scheduler does no processing itself; it only puts `cycle` jobs with key `cycle:<ISO T>` into the
catalog, where `enqueue` is idempotent on the key, so a restarted scheduler, two schedulers by mistake,
or a backfill over the same hours never create a second job for one cycle. Each tick also catches up the
cycles missed since the newest one enqueued (downtime, a suspended host), at most
`service.catchup_max_cycles`, in `service.catchup_order`. The order reaches the workers through the job
priority: workers claim the highest priority first, and the priority of a cycle job is its cycle time
in minutes, negated for oldest-first, so a live cycle overtakes a backlog when newest-first is chosen.

A tick that finds the catalog unreachable does nothing but note the outage (`nrt_catalog_up 0`, one log
line); a retry job ticks again every `OUTAGE_RETRY_S` until the catalog answers, and the catch-up then
enqueues what the outage delayed.
"""

from __future__ import annotations

import logging
import signal
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nrt.errors import CatalogError, ConfigError
from nrt.service.metrics import Metrics
from nrt.service.outage import CatalogOutage
from nrt.service.queue import JobQueue
from nrt.service.systemd import Notifier
from nrt.timeline import Clock, floor_to, isoformat, utc

log = logging.getLogger("nrt.service.scheduler")

CYCLE_JOB = "cycle"
DAY_MINUTES = 24 * 60
OUTAGE_RETRY_S = 15.0  # real seconds between ticks while the catalog is unreachable


def cycle_key(cycle_time: datetime) -> str:
    return f"{CYCLE_JOB}:{isoformat(cycle_time)}"


def cycle_priority(cycle_time: datetime, order: str) -> int:
    """Claim order of cycle jobs: newer first (`newest`) or older first (`oldest`)."""
    minutes = int(utc(cycle_time).timestamp() // 60)
    return minutes if order == "newest" else -minutes


def cycles_to_enqueue(
    due: datetime, newest_enqueued: datetime | None, period: timedelta, max_catchup: int, order: str
) -> list[datetime]:
    """The due cycle plus up to `max_catchup` missed ones after `newest_enqueued`, in claim order.

    A first start (nothing enqueued yet) catches up nothing: history is `nrt backfill`'s job.
    """
    if newest_enqueued is not None and newest_enqueued >= due:
        return []
    missed: list[datetime] = []
    if newest_enqueued is not None and max_catchup > 0:
        first = max(newest_enqueued + period, due - max_catchup * period)
        t = first
        while t < due:
            missed.append(t)
            t += period
    cycles = missed + [due]
    return cycles[::-1] if order == "newest" else cycles


def cron_fields(cycle_minutes: int, delay_minutes: float) -> dict[str, str]:
    """CronTrigger fields firing at every multiple of the period since midnight, plus the delay."""
    delay_s = round(delay_minutes * 60)
    if 60 % cycle_minutes == 0:
        minutes = sorted({(k * cycle_minutes + delay_s // 60) % 60 for k in range(60 // cycle_minutes)})
        return {"hour": "*", "minute": ",".join(map(str, minutes)), "second": str(delay_s % 60)}
    if cycle_minutes % 60 == 0 and DAY_MINUTES % cycle_minutes == 0:
        step_h = cycle_minutes // 60
        hours = sorted({(k * step_h + delay_s // 3600) % 24 for k in range(24 // step_h)})
        return {"hour": ",".join(map(str, hours)), "minute": str(delay_s // 60 % 60), "second": str(delay_s % 60)}
    raise ConfigError(
        "timeline.cycle_minutes", f"{cycle_minutes} must divide 60, or be whole hours dividing 24, to fit a cron schedule"
    )


class CycleScheduler:
    """Enqueues cycle jobs on a schedule; `tick()` is the whole job, the rest is APScheduler plumbing."""

    def __init__(self, cfg, catalog, metrics: Metrics | None = None, clock: Clock | None = None, last_cycle: datetime | None = None):
        self.cfg, self.catalog, self.metrics = cfg, catalog, metrics
        self.queue = JobQueue(catalog)
        self.clock = clock or Clock()
        self.period = timedelta(minutes=cfg.timeline.cycle_minutes)
        self.delay = timedelta(minutes=cfg.timeline.cycle_delay_minutes)
        self.last_cycle = utc(last_cycle) if last_cycle is not None else None
        self.trigger_fields = cron_fields(cfg.timeline.cycle_minutes, cfg.timeline.cycle_delay_minutes)
        self.outage = CatalogOutage(metrics)

    def due_cycle(self, now: datetime) -> datetime:
        """The cycle whose tick is the latest at or before `now`."""
        return floor_to(utc(now) - self.delay, self.period)

    def enqueue(self, cycle_time: datetime) -> int:
        """Add the cycle's job unless its key exists (in any state); returns the job id either way."""
        return self.queue.enqueue(
            CYCLE_JOB,
            {"cycle_time": isoformat(cycle_time)},
            key=cycle_key(cycle_time),
            max_attempts=self.cfg.service.max_attempts,
            priority=cycle_priority(cycle_time, self.cfg.service.catchup_order),
        )

    def newest_enqueued(self) -> datetime | None:
        """The latest cycle time that has a job, in any state (done ones included)."""
        times = [utc(job.payload["cycle_time"]) for job in self.queue.jobs(kind=CYCLE_JOB)]
        return max(times, default=None)

    def tick(self) -> list[datetime]:
        """Enqueue the due cycle and any missed ones; returns the cycles newly asked for ([] during an outage)."""
        try:
            cycles = self._enqueue_due()
        except CatalogError as exc:
            self.outage.failed("enqueue", exc)
            return []
        self.outage.succeeded()
        return cycles

    def retry_after_outage(self) -> None:
        """The retry job: tick again only while the last tick met an outage."""
        if not self.outage.up:
            self.tick()

    def _enqueue_due(self) -> list[datetime]:
        due = self.due_cycle(self.clock.now())
        if self.last_cycle is not None:
            due = min(due, self.last_cycle)
        service = self.cfg.service
        newest = self.newest_enqueued()
        cycles = cycles_to_enqueue(due, newest, self.period, service.catchup_max_cycles, service.catchup_order)
        for cycle_time in cycles:
            self.enqueue(cycle_time)
        if len(cycles) > 1:
            log.info("enqueued %d cycles (%s first), catching up since %s", len(cycles), service.catchup_order, isoformat(newest))
        elif cycles:
            log.info("enqueued cycle %s", isoformat(cycles[0]))
        if self.metrics is not None:
            self.metrics.refresh_jobs(self.catalog.counts())
        return cycles

    def trigger(self) -> BaseTrigger:
        if self.clock.is_real:
            return CronTrigger(timezone=timezone.utc, **self.trigger_fields)
        # Accelerated clock: fire at the real moments the simulated clock passes each tick time.
        next_tick = self.due_cycle(self.clock.now()) + self.period + self.delay
        return IntervalTrigger(
            seconds=self.period.total_seconds() / self.clock.speed,
            start_date=self.clock.real_time_of(next_tick),
            timezone=timezone.utc,
        )

    def install(self, scheduler: BaseScheduler) -> None:
        scheduler.add_job(
            self.tick,
            self.trigger(),
            id="enqueue-cycle",
            name="enqueue the due cycle",
            coalesce=True,  # after a stall, one tick; tick() itself catches up what was missed
            misfire_grace_time=max(1, round(self.cfg.service.misfire_grace_s / self.clock.speed)),
            max_instances=1,
            replace_existing=True,
        )
        scheduler.add_job(
            self.retry_after_outage, IntervalTrigger(seconds=OUTAGE_RETRY_S), id="outage-retry",
            name="tick again while the catalog is unreachable", coalesce=True, max_instances=1, replace_existing=True,
        )

    def background(self) -> BackgroundScheduler:
        """A started BackgroundScheduler thread running the ticks (`nrt run`, the demo)."""
        scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.install(scheduler)
        self.tick()
        scheduler.start()
        return scheduler

    def run_forever(self, notifier: Notifier | None = None) -> None:
        """`nrt scheduler`: catch up, tell systemd we are ready, then block until SIGTERM/SIGINT."""
        notifier = notifier or Notifier()
        scheduler = BlockingScheduler(timezone=timezone.utc)
        self.install(scheduler)
        if notifier.watchdog_interval is not None:
            # Pings come from the scheduler's own loop: if it hangs, they stop and systemd restarts us.
            scheduler.add_job(notifier.watchdog, IntervalTrigger(seconds=notifier.watchdog_interval / 2), id="watchdog")

        def stop(signum, _frame):
            log.info("signal %d: stopping the scheduler", signum)
            notifier.stopping()
            scheduler.shutdown(wait=False)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.tick()
        notifier.ready(f"enqueuing a cycle every {self.cfg.timeline.cycle_minutes} min")
        scheduler.start()
        log.info("scheduler stopped")
