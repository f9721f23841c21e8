"""The cycle scheduler: cron timing, catch-up after downtime, idempotent enqueueing into a real catalog."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.triggers.cron import CronTrigger

from nrt.errors import ConfigError
from nrt.service.scheduler import Clock, cron_fields, cycle_priority, cycles_to_enqueue
from nrt.service.queue import JobQueue

UTC = timezone.utc
HALF = timedelta(minutes=30)
T = datetime(2024, 12, 31, 23, 30, tzinfo=UTC)


@pytest.mark.parametrize("period_min, delay_min", [(30, 5), (30, 5.5), (15, 0), (60, 90), (180, 20), (30, 65)])
def test_cron_fires_at_each_period_plus_delay(period_min, delay_min):
    trigger = CronTrigger(timezone=UTC, **cron_fields(period_min, delay_min))
    period, delay = timedelta(minutes=period_min), timedelta(minutes=delay_min)
    midnight = datetime(2024, 2, 28, tzinfo=UTC)
    rng = random.Random(period_min * 1000 + int(delay_min * 10))
    for _ in range(200):
        now = midnight + timedelta(seconds=rng.randrange(3 * 86400))
        # independent: fire times are midnight + k * period + delay for every integer k
        k = -((midnight + delay - now) // period)  # ceil((now - midnight - delay) / period)
        expected = midnight + delay + k * period
        assert trigger.get_next_fire_time(None, now) == expected, now


def test_cron_refuses_periods_that_do_not_tile_a_day():
    with pytest.raises(ConfigError, match="timeline.cycle_minutes"):
        cron_fields(45, 5)


def test_no_catch_up_on_first_start():
    assert cycles_to_enqueue(T, None, HALF, 48, "newest") == [T]


def test_nothing_new_when_the_due_cycle_is_already_enqueued():
    assert cycles_to_enqueue(T, T, HALF, 48, "newest") == []


def test_catch_up_newest_first_and_oldest_first():
    newest = T - 4 * HALF  # 3 cycles missed between it and the due one
    missed = [T - 3 * HALF, T - 2 * HALF, T - HALF]
    assert cycles_to_enqueue(T, newest, HALF, 48, "newest") == [T, *missed[::-1]]
    assert cycles_to_enqueue(T, newest, HALF, 48, "oldest") == [*missed, T]


def test_catch_up_is_bounded_to_the_newest_missed_cycles():
    newest = T - 100 * HALF
    got = cycles_to_enqueue(T, newest, HALF, 5, "oldest")
    assert got == [T - k * HALF for k in range(5, -1, -1)]
    assert cycles_to_enqueue(T, newest, HALF, 0, "newest") == [T]


def test_priority_orders_claims():
    older, newer = T - HALF, T
    assert cycle_priority(newer, "newest") > cycle_priority(older, "newest")
    assert cycle_priority(older, "oldest") > cycle_priority(newer, "oldest")


def test_accelerated_clock():
    real = [1000.0]
    clock = Clock(origin=T, speed=600, real=lambda: real[0])
    assert not clock.is_real and clock.now() == T
    real[0] += 3  # three real seconds are thirty simulated minutes
    assert clock.now() == T + HALF
    assert clock.real_time_of(T + 2 * HALF) == datetime.fromtimestamp(1006.0, UTC)
    assert Clock().is_real
    fast = Clock(speed=1000)
    started = time.monotonic()
    fast.sleep(300)  # five simulated minutes
    assert 0.25 <= time.monotonic() - started < 2.0
    with pytest.raises(ValueError):
        Clock(speed=0)


# -- against a real catalog ---------------------------------------------------------------------------------

class FixedClock(Clock):
    """A clock the test moves by hand (a Clock subclass, so the scheduler treats it as simulated)."""

    def __init__(self, t):
        super().__init__(origin=t, speed=1.0)
        self.t = t

    def now(self):
        return self.t


def configured(cfg, **service):
    for key, value in service.items():
        setattr(cfg.service, key, value)
    return cfg


@pytest.fixture
def catalog(cfg):
    from nrt.store import Catalog

    with Catalog.from_config(cfg, migrate=True) as cat:
        yield cat


def claim_order(catalog) -> list[str]:
    order = []
    while (job := JobQueue(catalog).claim("test", kinds=["cycle"])) is not None:
        order.append(job.payload["cycle_time"])
        JobQueue(catalog).complete(job.id, "test")
    return order


def iso(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_tick_enqueues_the_due_cycle_once(cfg, catalog):
    from nrt.service.scheduler import CycleScheduler

    clock = FixedClock(T + timedelta(minutes=7))  # 5 min delay: the 23:30 cycle is due
    scheduler = CycleScheduler(cfg, catalog, clock=clock)
    assert scheduler.tick() == [T]
    assert scheduler.tick() == []  # a second tick in the same half hour adds nothing
    assert scheduler.enqueue(T) == JobQueue(catalog).jobs(kind="cycle")[0].id  # and an explicit enqueue is idempotent too
    jobs = JobQueue(catalog).jobs(kind="cycle")
    assert [(j.key, j.payload, j.max_attempts) for j in jobs] == [
        ("cycle:2024-12-31T23:30:00Z", {"cycle_time": "2024-12-31T23:30:00Z"}, cfg.service.max_attempts)
    ]
    clock.t = T + timedelta(minutes=4)  # before the delay has passed the due cycle is still 23:00
    assert scheduler.due_cycle(clock.t) == T - HALF


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_restart_catches_up_in_the_configured_order(cfg, catalog, order):
    from nrt.service.scheduler import CycleScheduler

    configured(cfg, catchup_order=order, catchup_max_cycles=48)
    clock = FixedClock(T - 4 * HALF + timedelta(minutes=6))
    CycleScheduler(cfg, catalog, clock=clock).tick()
    assert claim_order(catalog) == [iso(T - 4 * HALF)]
    clock.t = T + timedelta(minutes=6)  # down for two hours: 3 cycles missed, plus the one due now
    restarted = CycleScheduler(cfg, catalog, clock=clock)
    expected = [T - 3 * HALF, T - 2 * HALF, T - HALF, T]
    if order == "newest":
        expected = expected[::-1]
    assert restarted.tick() == expected
    assert claim_order(catalog) == [iso(t) for t in expected]


def test_live_cycle_overtakes_a_backlog_when_newest_first(cfg, catalog):
    from nrt.service.scheduler import CycleScheduler

    clock = FixedClock(T - 10 * HALF + timedelta(minutes=6))
    scheduler = CycleScheduler(cfg, catalog, clock=clock)
    scheduler.tick()
    claim_order(catalog)
    clock.t = T - HALF + timedelta(minutes=6)
    scheduler.tick()  # 9 cycles queued
    first = JobQueue(catalog).claim("test", kinds=["cycle"])
    assert first.payload["cycle_time"] == iso(T - HALF)
    JobQueue(catalog).complete(first.id, "test")
    clock.t = T + timedelta(minutes=6)
    assert scheduler.tick() == [T]
    assert claim_order(catalog)[0] == iso(T)  # the live cycle before the 8 left of the backlog


def test_catch_up_is_bounded(cfg, catalog):
    from nrt.service.scheduler import CycleScheduler

    configured(cfg, catchup_max_cycles=3)
    clock = FixedClock(T - 100 * HALF + timedelta(minutes=6))
    scheduler = CycleScheduler(cfg, catalog, clock=clock)
    scheduler.tick()
    clock.t = T + timedelta(minutes=6)
    assert scheduler.tick() == [T, T - HALF, T - 2 * HALF, T - 3 * HALF]
    assert len(JobQueue(catalog).jobs(kind="cycle")) == 5


def test_background_scheduler_on_an_accelerated_clock(cfg, catalog):
    """The real APScheduler path at one simulated half hour per real second."""
    from nrt.service.scheduler import CycleScheduler

    clock = Clock(origin=T + timedelta(minutes=4, seconds=30), speed=1800)  # 30 s before the 23:35 tick
    running = CycleScheduler(cfg, catalog, clock=clock).background()
    try:
        time.sleep(2.6)
    finally:
        running.shutdown(wait=True)
    enqueued = sorted(job.payload["cycle_time"] for job in JobQueue(catalog).jobs(kind="cycle"))
    # 23:00 is due at start; the ticks at 23:35, 00:05 and 00:35 (simulated) pass within 2.6 s, and a tick
    # delayed on a busy machine still leaves no gap because each tick catches up what it missed
    assert enqueued == [iso(T + k * HALF) for k in range(-1, len(enqueued) - 1)]
    assert 3 <= len(enqueued) <= 4


def test_last_cycle_stops_the_schedule(cfg, catalog):
    from nrt.service.scheduler import CycleScheduler

    clock = FixedClock(T + timedelta(minutes=6))
    scheduler = CycleScheduler(cfg, catalog, clock=clock, last_cycle=T - 2 * HALF)
    scheduler.tick()
    clock.t = T + 5 * HALF
    scheduler.tick()
    assert sorted(j.payload["cycle_time"] for j in JobQueue(catalog).jobs(kind="cycle")) == [iso(T - 2 * HALF)]


def test_backfill_command_enqueues_past_cycles_idempotently(cfg, catalog, tmp_path, capsys):
    from nrt import cli

    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n[service]\ncatchup_order = "oldest"\n')
    argv = ["--config", str(config_file), "backfill", "--start", "2024-06-01T00:10Z", "--end", "2024-06-01T02:00Z"]
    assert cli.main(argv) == 0
    assert "enqueued 4 cycle jobs (2024-06-01T00:30:00Z .. 2024-06-01T02:00:00Z), oldest first" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert claim_order(catalog) == ["2024-06-01T00:30:00Z", "2024-06-01T01:00:00Z", "2024-06-01T01:30:00Z", "2024-06-01T02:00:00Z"]
    assert cli.main([*argv[:3], "--start", "2024-06-02T00:00Z", "--end", "2024-06-01T00:00Z"]) == 2
    assert "--end" in capsys.readouterr().err


def test_backfill_reprocess_queues_finished_cycles_again_but_not_running_ones(cfg, catalog, tmp_path, capsys):
    from nrt import cli

    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n[service]\ncatchup_order = "oldest"\n')
    argv = ["--config", str(config_file), "backfill", "--start", "2024-06-01T00:00Z", "--end", "2024-06-01T01:00Z"]
    assert cli.main(argv) == 0
    done = JobQueue(catalog).claim("w1", kinds=["cycle"])
    assert JobQueue(catalog).complete(done.id, "w1")
    failed = JobQueue(catalog).claim("w1", kinds=["cycle"])
    assert JobQueue(catalog).fail(failed.id, "w1", "boom", retry=False)
    running = JobQueue(catalog).claim("w2", kinds=["cycle"])
    capsys.readouterr()

    assert cli.main([*argv, "--reprocess"]) == 0
    assert "2 of them queued again" in capsys.readouterr().out
    states = {job.id: (job.state, job.attempts, job.error) for job in JobQueue(catalog).jobs(kind="cycle")}
    assert states[done.id] == ("queued", 0, None)
    assert states[failed.id] == ("queued", 0, None)
    assert states[running.id][0] == "running"


def test_nrt_scheduler_process_notifies_enqueues_serves_metrics_and_stops(cfg, catalog, tmp_path):
    """`nrt scheduler` as systemd runs it: READY after the first tick, metrics on 127.0.0.1, STOPPING on SIGTERM."""

    from nrt.timeline import floor_to

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "NRT_METRICS_PORT": "0"}
    def due_now():
        return floor_to(datetime.now(UTC) - timedelta(minutes=cfg.timeline.cycle_delay_minutes), HALF)

    due_before = due_now()
    process = subprocess.Popen(
        [sys.executable, "-m", "nrt.cli", "--config", str(config_file), "scheduler"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=")
        keys = {j.key for j in JobQueue(catalog).jobs(kind="cycle")}
        assert keys == {f"cycle:{iso(t)}" for t in (due_before, due_now())}  # one key, unless a tick fell in between
        port = None
        while port is None:
            line = process.stderr.readline()
            assert line, "the scheduler exited before serving metrics"
            if match := re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line):
                port = int(match.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert f'nrt_jobs{{state="queued"}} {float(len(keys))}' in response.read().decode()
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode() == "STOPPING=1"
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - sent < cfg.service.shutdown_timeout_s
    finally:
        process.kill()
        process.stderr.close()
        notify.close()
