"""The job queue (`nrt.service.queue`) on real SQLite files and on the real PostgreSQL server (NRT_TEST_POSTGRES_URL)."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timedelta, timezone

import pytest
from test_catalog import catalog, db_url  # noqa: F401 (fixtures)

from nrt.service.queue import JobQueue
from nrt.store import Catalog


@pytest.fixture
def queue(catalog):  # noqa: F811
    return JobQueue(catalog)


def test_enqueue_is_idempotent_on_key_in_every_state(catalog, queue):
    first = queue.enqueue("cycle", {"cycle_time": "2024-02-29T23:30:00Z"}, key="cycle:2024-02-29T23:30Z")
    assert queue.enqueue("cycle", {"other": 1}, key="cycle:2024-02-29T23:30Z") == first
    job = queue.claim("w1")
    assert queue.complete(job.id, "w1")
    assert queue.enqueue("cycle", {}, key="cycle:2024-02-29T23:30Z") == first
    assert len(queue.jobs()) == 1 and queue.job(first).payload == {"cycle_time": "2024-02-29T23:30:00Z"}
    # Jobs without a key are never merged.
    assert queue.enqueue("verify", {}) != queue.enqueue("verify", {})


def test_claim_order_priority_then_age_and_kind_filter(catalog, queue):
    old = queue.enqueue("backfill", {"n": 1})
    urgent = queue.enqueue("cycle", {"n": 2}, priority=10)
    later = queue.enqueue("backfill", {"n": 3})
    assert queue.claim("w", kinds=["backfill"]).id == old
    assert queue.claim("w").id == urgent
    job = queue.claim("w")
    assert (job.id, job.state, job.lease_owner, job.attempts) == (later, "running", "w", 1)
    assert job.lease_expires > datetime.now(timezone.utc) + timedelta(seconds=200)
    assert queue.claim("w") is None


def test_expired_lease_is_reclaimed_and_the_old_owner_loses_it(catalog, queue):
    job_id = queue.enqueue("cycle", {}, key="c1")
    first = queue.claim("worker-a", lease_s=0.2)
    assert first.id == job_id and queue.claim("worker-b", lease_s=0.2) is None
    assert queue.heartbeat(job_id, "worker-a", lease_s=0.2)  # a live owner keeps its lease
    time.sleep(0.3)
    second = queue.claim("worker-b", lease_s=60)
    assert (second.id, second.lease_owner, second.attempts) == (job_id, "worker-b", 2)
    assert "worker-a" in second.error
    assert not queue.heartbeat(job_id, "worker-a", 60)
    assert not queue.complete(job_id, "worker-a")
    assert not queue.fail(job_id, "worker-a", "late")
    assert queue.complete(job_id, "worker-b")
    assert queue.job(job_id).state == "done" and queue.job(job_id).lease_owner is None


def test_lease_expiring_on_the_last_attempt_fails_the_job(catalog, queue):
    job_id = queue.enqueue("cycle", {}, max_attempts=2)
    other = queue.enqueue("cycle", {})
    for owner in ("a", "b"):
        assert queue.claim(owner, lease_s=0.05).id == job_id
        time.sleep(0.1)
    # The next claim sweeps the dead job to `failed` and hands out the next one instead.
    assert queue.claim("c").id == other
    job = queue.job(job_id)
    assert (job.state, job.attempts, job.lease_owner) == ("failed", 2, None)
    assert "last attempt" in job.error


def test_fail_retries_until_attempts_run_out_and_release_costs_nothing(catalog, queue):
    job_id = queue.enqueue("cycle", {}, max_attempts=2)
    assert queue.claim("w").attempts == 1
    assert queue.release(job_id, "w")
    assert (queue.job(job_id).state, queue.job(job_id).attempts) == ("queued", 0)
    assert queue.claim("w").attempts == 1
    assert queue.fail(job_id, "w", "nowcast: boom")
    assert (queue.job(job_id).state, queue.job(job_id).error) == ("queued", "nowcast: boom")
    assert queue.claim("w").attempts == 2
    assert queue.fail(job_id, "w", "nowcast: boom again")
    assert queue.job(job_id).state == "failed" and queue.claim("w") is None

    permanent = queue.enqueue("cycle", {}, max_attempts=5)
    queue.claim("w")
    queue.fail(permanent, "w", "bad config", retry=False)
    assert queue.job(permanent).state == "failed"
    assert catalog.counts()["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 2}


def test_a_retry_waits_for_its_delay_and_reprocessing_does_not(catalog, queue, monkeypatch):
    import nrt.service.queue

    job_id = queue.enqueue("cycle", {}, key="c", max_attempts=3)
    later = queue.enqueue("cycle", {}, key="d")
    assert queue.claim("w", kinds=["cycle"]).id == job_id
    assert queue.fail(job_id, "w", "download: server down", retry_delay_s=60)
    job = queue.job(job_id)
    assert job.state == "queued" and 59 < (job.not_before - job.updated_at).total_seconds() <= 60
    assert queue.claim("w").id == later  # the waiting job is passed over, not the whole queue
    assert queue.claim("w") is None
    start = job.not_before
    monkeypatch.setattr(nrt.service.queue, "utcnow", lambda: start + timedelta(seconds=1))
    assert queue.claim("w").attempts == 2
    assert queue.fail(job_id, "w", "download: server down")  # no delay given: at once
    assert queue.job(job_id).not_before is None and queue.claim("w").attempts == 3
    assert queue.fail(job_id, "w", "download: server down", retry_delay_s=60)
    assert queue.job(job_id).state == "failed"
    assert queue.requeue("c") and queue.job(job_id).not_before is None and queue.claim("w").attempts == 1


def _claim_until_empty(url: str, owner: str, barrier, results) -> None:
    """One worker process: claim and complete jobs until none is left; reports (owner, ids, error)."""
    claimed: list[int] = []
    try:
        catalog = Catalog(url, busy_timeout_s=60)
        queue = JobQueue(catalog)
        barrier.wait(timeout=120)  # start claiming together, so the workers really contend
        while True:
            job = queue.claim(owner, lease_s=600)
            if job is None:
                if not queue.jobs(state="queued"):
                    break
                continue
            claimed.append(job.id)
            if not queue.complete(job.id, owner):
                raise AssertionError(f"{owner} lost job {job.id} it had just claimed")
        catalog.close()
    except Exception as exc:
        results.put((owner, claimed, repr(exc)))
        return
    results.put((owner, claimed, None))


@pytest.mark.parametrize("n_jobs,n_workers", [(200, 4)])
def test_processes_claiming_one_queue_never_share_or_lose_a_job(catalog, queue, db_url, n_jobs, n_workers):
    job_ids = {queue.enqueue("cycle", {"n": n}) for n in range(n_jobs)}
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n_workers), context.Queue()
    workers = [
        context.Process(target=_claim_until_empty, args=(db_url, f"worker-{i}", barrier, results))
        for i in range(n_workers)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=240) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [error for _, _, error in reports if error] == []
    every_claim = [job_id for _, ids, _ in reports for job_id in ids]
    assert len(every_claim) == len(set(every_claim)) == n_jobs  # none twice
    assert set(every_claim) == job_ids  # none lost
    assert sum(1 for _, ids, _ in reports if ids) >= 2  # the queue really was shared
    assert catalog.counts()["jobs"]["done"] == n_jobs
    assert all(job.attempts == 1 for job in queue.jobs())
