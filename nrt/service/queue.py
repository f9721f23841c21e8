"""The job queue in the catalog's `jobs` table: idempotent enqueue, leases, retries with a delay.

Workers claim jobs with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite) and
renew it with heartbeats; every claim draws a new lease token, which `Catalog.fenced(job_id, token)` checks
before each write, so a worker that lost its lease cannot write. A failed job is queued again after a delay
while attempts remain.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from nrt.store import Catalog
from nrt.store.db import insert, snapshot, utcnow
from nrt.store.schema import Job


@dataclass(frozen=True)
class JobRow:
    id: int
    kind: str
    payload: dict
    key: str | None
    state: str
    priority: int
    lease_owner: str | None
    lease_expires: datetime | None
    lease_token: str | None
    attempts: int
    max_attempts: int
    not_before: datetime | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobQueue:
    """The jobs of one catalog."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def enqueue(
        self, kind: str, payload: dict, key: str | None = None, *, max_attempts: int = 3, priority: int = 0,
    ) -> int:
        """Queue a job; with a `key` already present (in any state) nothing is added and its id returned.

        `payload` must be JSON-serialisable. Higher `priority` is claimed first, then oldest first.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = utcnow()
        stmt = insert(self.catalog.dialect, Job).values(
            kind=kind, payload=payload, key=key, state="queued", priority=priority, attempts=0,
            max_attempts=max_attempts, created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["key"]).returning(Job.id)
        with self.catalog.writing() as session:
            job_id = session.execute(stmt).scalar()
            if job_id is None:  # the key was taken: this job is already known
                job_id = session.scalars(select(Job.id).where(Job.key == key)).one()
            return job_id

    def requeue(self, key: str) -> bool:
        """Queue a finished (done or failed) job again with fresh attempts, for reprocessing.

        A queued or running job is left alone; returns whether a job went back into the queue.
        """
        stmt = (
            update(Job)
            .where(Job.key == key, Job.state.in_(("done", "failed")))
            .values(state="queued", attempts=0, error=None, lease_owner=None, lease_expires=None, lease_token=None, not_before=None,
                    updated_at=utcnow())
        )
        with self.catalog.writing() as session:
            return session.execute(stmt).rowcount == 1

    def claim(self, owner: str, kinds: Iterable[str] | None = None, lease_s: float = 300) -> JobRow | None:
        """Atomically take the next job (queued and not waiting to retry, or running with an expired lease).

        The lease lasts `lease_s` seconds unless renewed by `heartbeat`. A job whose lease expired
        after its last allowed attempt becomes `failed` instead of being handed out again.
        """
        kinds = sorted(kinds) if kinds is not None else None
        while True:
            with self.catalog.writing() as session:
                now = utcnow()
                stmt = select(Job).where(
                    or_(
                        and_(Job.state == "queued", or_(Job.not_before.is_(None), Job.not_before <= now)),
                        and_(Job.state == "running", Job.lease_expires < now),
                    )
                )
                if kinds is not None:
                    stmt = stmt.where(Job.kind.in_(kinds))
                stmt = stmt.order_by(Job.priority.desc(), Job.id).limit(1)
                if self.catalog.dialect == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                job = session.scalars(stmt).first()
                if job is None:
                    return None
                if job.state == "running":
                    lapsed = f"lease of {job.lease_owner} expired at {job.lease_expires:%Y-%m-%dT%H:%M:%SZ}"
                    if job.attempts >= job.max_attempts:
                        job.state, job.error, job.finished_at = "failed", f"{lapsed} on the last attempt", now
                        job.lease_owner = job.lease_expires = job.lease_token = None
                        job.updated_at = now
                        continue
                    job.error = lapsed
                job.state, job.lease_owner = "running", owner
                job.lease_expires = now + timedelta(seconds=lease_s)
                job.lease_token = secrets.token_hex(16)
                job.attempts += 1
                job.started_at = job.updated_at = now
                session.flush()
                return snapshot(JobRow, job)

    def _owned(self, session: Session, job_id: int, owner: str) -> Job | None:
        return session.scalars(
            select(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running").with_for_update()
        ).first()

    def heartbeat(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when `owner` no longer holds the job (another worker reclaimed it)."""
        now = utcnow()
        with self.catalog.writing() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
                .values(lease_expires=now + timedelta(seconds=lease_s), updated_at=now)
            )
            return renewed.rowcount == 1

    def complete(self, job_id: int, owner: str) -> bool:
        """Mark the job done; False (and no change) when `owner` lost the lease."""
        with self.catalog.writing() as session:
            job = self._owned(session, job_id, owner)
            if job is None:
                return False
            job.state, job.error = "done", None
            job.lease_owner = job.lease_expires = job.lease_token = None
            job.finished_at = job.updated_at = utcnow()
            return True

    def fail(self, job_id: int, owner: str, error: str, retry: bool = True, retry_delay_s: float = 0.0) -> bool:
        """Record a failure: queued again while attempts remain and `retry`, else `failed`.

        A requeued job is not claimed again before `retry_delay_s` has passed, so a passing fault (a server
        down, a granule not yet published) does not use up every attempt within seconds.
        """
        with self.catalog.writing() as session:
            job = self._owned(session, job_id, owner)
            if job is None:
                return False
            now = utcnow()
            job.error = error
            job.lease_owner = job.lease_expires = job.lease_token = None
            job.updated_at = now
            if retry and job.attempts < job.max_attempts:
                job.state = "queued"
                job.not_before = now + timedelta(seconds=retry_delay_s) if retry_delay_s > 0 else None
            else:
                job.state, job.finished_at = "failed", now
            return True

    def release(self, job_id: int, owner: str) -> bool:
        """Give an unfinished job back (e.g. at shutdown) without spending one of its attempts."""
        with self.catalog.writing() as session:
            job = self._owned(session, job_id, owner)
            if job is None:
                return False
            job.state = "queued"
            job.attempts = max(0, job.attempts - 1)
            job.lease_owner = job.lease_expires = job.lease_token = None
            job.updated_at = utcnow()
            return True

    def job(self, job_id: int) -> JobRow | None:
        with self.catalog.reading() as session:
            job = session.get(Job, job_id)
            return snapshot(JobRow, job) if job else None

    def jobs(self, state: str | None = None, kind: str | None = None) -> list[JobRow]:
        stmt = select(Job)
        if state is not None:
            stmt = stmt.where(Job.state == state)
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        with self.catalog.reading() as session:
            return [snapshot(JobRow, j) for j in session.scalars(stmt.order_by(Job.id))]
