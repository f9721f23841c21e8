"""Fencing and stale runs (issue 16, failures 4 and 9): a worker that lost its lease records nothing more,
and runs left `running` by dead or fenced-off workers are closed as `abandoned`."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from nrt.errors import CatalogUnavailable
from nrt.service.queue import JobQueue
from test_service_worker import Model, Report, make_worker

T = datetime(2024, 6, 1, 12, 30, tzinfo=timezone.utc)


@pytest.fixture
def catalog(cfg):
    from nrt.store import Catalog

    cfg.service.lease_seconds = 1.0
    cfg.service.heartbeat_seconds = 0.2
    cfg.service.worker_poll_s = 0.1
    with Catalog.from_config(cfg, migrate=True) as cat:
        yield cat


class NoHeartbeat(JobQueue):
    """The worker's job queue with heartbeats failing, as for a worker frozen or cut off from the database."""

    def heartbeat(self, *_args, **_kwargs):
        raise CatalogUnavailable("heartbeat: connection reset")


def test_a_worker_whose_lease_was_taken_over_stops_writing_and_records_nothing(cfg, catalog):
    seen = {}

    def handler(job, model):
        fenced = catalog.fenced(job.id, job.lease_token)
        fenced.start_run(T)
        time.sleep(1.3)  # the lease (1 s) lapses without heartbeats
        seen["rival"] = JobQueue(catalog).claim("rival", lease_s=60)
        fenced.register_product("ensemble", T, T, 0, 2, "/x.nc", 1, "0" * 64)  # must be refused
        seen["wrote"] = True
        return Report()

    job_id = JobQueue(catalog).enqueue("cycle", {"cycle_time": "2024-06-01T12:30:00Z"}, key="k")
    worker = make_worker(cfg, catalog, {"cycle": handler}, load_model=Model)
    worker.queue = NoHeartbeat(catalog)
    assert worker.run(max_jobs=1) == 1
    assert "wrote" not in seen and catalog.products() == []
    job = JobQueue(catalog).job(job_id)
    assert (job.state, job.lease_owner, job.lease_token) == ("running", "rival", seen["rival"].lease_token)  # untouched
    (run,) = catalog.runs()
    assert run.state == "abandoned"  # the worker closed its own stale run once idle again


def test_stale_running_runs_are_closed_as_abandoned_but_live_ones_kept(cfg, catalog):
    JobQueue(catalog).enqueue("cycle", {}, key="dead")
    JobQueue(catalog).enqueue("cycle", {}, key="live")
    dead = JobQueue(catalog).claim("killed", lease_s=0.2)
    live = JobQueue(catalog).claim("alive", lease_s=60)
    dead_run = catalog.fenced(dead.id, dead.lease_token).start_run(T)
    live_run = catalog.fenced(live.id, live.lease_token).start_run(T)
    cli_run = catalog.start_run(T)  # `nrt cycle` outside a worker: no lease, left alone
    time.sleep(0.3)
    assert catalog.close_stale_runs() == 1
    states = {run.id: run.state for run in catalog.runs()}
    assert states == {dead_run: "abandoned", live_run: "running", cli_run: "running"}
    JobQueue(catalog).complete(live.id, "alive")  # finished without closing its run (killed between the two)
    assert catalog.close_stale_runs() == 1
    assert {run.id: run.state for run in catalog.runs()}[live_run] == "abandoned"


def test_a_worker_starting_closes_runs_left_by_its_killed_predecessor(cfg, catalog):
    JobQueue(catalog).enqueue("other", {}, key="k")
    job = JobQueue(catalog).claim("killed-by-9", lease_s=0.1)
    catalog.fenced(job.id, job.lease_token).start_run(T)
    time.sleep(0.2)
    worker = make_worker(cfg, catalog, {"cycle": lambda job, model: Report()})
    worker.run(drain=True)
    assert catalog.runs()[0].state == "abandoned"
    assert catalog.counts()["runs"]["running"] == 0
