"""Database outages: the worker and the scheduler wait them out instead of exiting (issue 16, failure 1)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime, timezone

import pytest

from nrt.errors import CatalogUnavailable
from nrt.service.queue import JobQueue
from pg_cluster import throwaway_cluster
from test_service_worker import Model, NotifyListener, Report, events, make_worker, spawn, visible, wait_until


class Switchable:
    """A catalog whose every call raises CatalogUnavailable while `down` is set, as during a real outage."""

    def __init__(self, catalog):
        self._catalog = catalog
        self.down = threading.Event()
        self.refused = 0

    def __getattr__(self, name):
        attr = getattr(self._catalog, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down.is_set():
                self.refused += 1
                raise CatalogUnavailable("sqlite:///catalog: database or disk is full")
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def catalog(cfg):
    from nrt.store import Catalog

    cfg.service.lease_seconds = 5.0
    cfg.service.heartbeat_seconds = 0.2
    cfg.service.worker_poll_s = 0.1
    with Catalog.from_config(cfg, migrate=True) as cat:
        yield cat


def test_an_outage_while_a_job_finishes_is_waited_out_and_the_result_recorded(cfg, catalog, caplog):
    flaky = Switchable(catalog)

    def handler(job, model):
        flaky.down.set()  # the database goes away while the cycle publishes
        threading.Timer(1.5, flaky.down.clear).start()
        return Report()

    job_id = JobQueue(catalog).enqueue("cycle", {"cycle_time": "2024-06-01T12:30:00Z"}, key="cycle:2024-06-01T12:30:00Z")
    worker = make_worker(cfg, flaky, {"cycle": handler}, load_model=Model)
    worker.outage.first_wait_s = 0.1
    ups = []
    original_set = worker.metrics.catalog_up.set
    worker.metrics.catalog_up.set = lambda value: ups.append(value) or original_set(value)
    with caplog.at_level(logging.INFO, logger="nrt.service"):
        assert worker.run(max_jobs=1) == 1
    assert JobQueue(catalog).job(job_id).state == "done"
    assert flaky.refused >= 2  # it really retried through the outage
    assert ups == [0, 1]  # nrt_catalog_up went down once and came back once
    assert worker.metrics.registry.get_sample_value("nrt_catalog_up") == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "nrt.service.outage"]
    assert len(lines) == 2 and "unreachable" in lines[0] and "reachable again" in lines[1]  # one line per change


def test_a_failure_is_recorded_after_the_outage_too(cfg, catalog):
    flaky = Switchable(catalog)

    def handler(job, model):
        flaky.down.set()
        threading.Timer(1.0, flaky.down.clear).start()
        raise RuntimeError("stage broke")

    job_id = JobQueue(catalog).enqueue("cycle", {"cycle_time": "2024-06-01T12:30:00Z"}, key="k", max_attempts=1)
    worker = make_worker(cfg, flaky, {"cycle": handler}, load_model=Model)
    worker.outage.first_wait_s = 0.1
    worker.run(max_jobs=1)
    job = JobQueue(catalog).job(job_id)
    assert job.state == "failed" and "stage broke" in job.error


def test_a_worker_started_while_the_database_is_down_waits_for_it(cfg, catalog):
    flaky = Switchable(catalog)
    flaky.down.set()
    job_id = JobQueue(catalog).enqueue("cycle", {"cycle_time": "2024-06-01T12:30:00Z"}, key="k")
    worker = make_worker(cfg, flaky, {"cycle": lambda job, model: Report()}, load_model=Model)
    worker.outage.first_wait_s = 0.1
    threading.Timer(1.5, flaky.down.clear).start()
    assert worker.run(max_jobs=1) == 1
    assert JobQueue(catalog).job(job_id).state == "done"


def test_sigterm_during_an_outage_exits_cleanly(cfg, catalog):
    flaky = Switchable(catalog)
    flaky.down.set()
    worker = make_worker(cfg, flaky, {"cycle": lambda job, model: Report()})
    worker.outage.first_wait_s = 0.1
    threading.Timer(0.5, worker.request_stop).start()
    assert worker.run() == 0


def test_scheduler_ticks_through_an_outage_and_catches_up(cfg, catalog):
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import Clock, CycleScheduler

    flaky = Switchable(catalog)
    metrics = Metrics()
    clock = Clock(datetime(2024, 6, 1, 12, 40, tzinfo=timezone.utc), speed=1.0)
    scheduler = CycleScheduler(cfg, flaky, metrics, clock=clock)
    flaky.down.set()
    assert scheduler.tick() == []  # no exception: the outage is noted
    assert metrics.registry.get_sample_value("nrt_catalog_up") == 0
    flaky.down.clear()
    scheduler.retry_after_outage()
    assert metrics.registry.get_sample_value("nrt_catalog_up") == 1
    assert [job.key for job in JobQueue(catalog).jobs()] == ["cycle:2024-06-01T12:30:00Z"]


@pytest.fixture
def cluster():
    yield from throwaway_cluster()


@pytest.mark.postgres
def test_worker_process_outlives_postgresql_stopped_at_start_and_mid_job(cluster, tmp_path):
    """A real server stopped before the worker starts and again while a job writes: the worker never exits."""
    from nrt.store import Catalog

    Catalog.open(cluster.url, migrate=True).close()
    cluster.stop()
    out = tmp_path / "out"
    out.mkdir()
    listener = NotifyListener(tmp_path)
    worker = spawn(cluster.url, out, listener, chunks=20, chunk_s=0.1, worker_poll_s=0.2, lease_seconds=30)
    try:
        listener.wait_for("READY=1")  # ready (model loaded) although the database is down
        time.sleep(3)
        assert worker.poll() is None, "the worker exited while the database was down at start-up"
        cluster.start()
        with Catalog.open(cluster.url) as catalog:
            first = JobQueue(catalog).enqueue("write", {"name": "a"}, key="a")
            wait_until(lambda: ("start", first) in [(e, j) for e, j, _ in events(out)], 20, "job a started")
        cluster.stop()  # mid-job: the job finishes writing and must wait to record it
        wait_until(lambda: ("done", first) in [(e, j) for e, j, _ in events(out)], 20, "job a written")
        time.sleep(2)
        assert worker.poll() is None, "the worker exited during the outage"
        cluster.start()
        with Catalog.open(cluster.url) as catalog:
            wait_until(lambda: JobQueue(catalog).job(first).state == "done", 30, "job a recorded after the outage")
            second = JobQueue(catalog).enqueue("write", {"name": "b"}, key="b")
            wait_until(lambda: JobQueue(catalog).job(second).state == "done", 30, "job b done")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        worker.kill()
        listener.close()
    assert visible(out) == ["a.bin", "b.bin", "events.log"]


@pytest.mark.postgres
def test_nrt_worker_command_started_while_postgresql_is_down_stays_up(cluster, tmp_path):
    import os
    import subprocess
    import sys

    from nrt.store import Catalog

    Catalog.open(cluster.url, migrate=True).close()
    cluster.stop()
    from test_service_worker import REPO

    env = {**os.environ, "NRT_DB_URL": cluster.url, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "nrt.cli", "worker", "--metrics-port", "0"], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(8)
        assert worker.poll() is None, worker.communicate()[0]
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert output.count("catalog unreachable") == 1, output  # one line for the outage, not one per attempt
