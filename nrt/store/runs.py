"""Runs: one row per attempt at a cycle, with its state, stage timings and degraded flags."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from nrt.store.db import snapshot, utcnow
from nrt.store.schema import RUN_STATES, Job, Run
from nrt.timeline import utc


@dataclass(frozen=True)
class RunRow:
    id: int
    cycle_time: datetime
    state: str
    started_at: datetime
    finished_at: datetime | None
    timings: dict
    error: str | None
    degraded: list
    lease_token: str | None


class Runs:
    """The catalog's run queries (a part of `nrt.store.Catalog`)."""

    def start_run(self, cycle_time: datetime) -> int:
        """A `running` run; on a fenced catalog it carries the lease token, so `close_stale_runs` can end it."""
        token = self._fence.token if self._fence is not None else None
        with self.writing() as session:
            run = Run(cycle_time=utc(cycle_time), state="running", started_at=utcnow(), timings={}, degraded=[],
                      lease_token=token)
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self, run_id: int, state: str, timings: dict, error: str | None = None, degraded: Iterable[str] = (),
    ) -> None:
        """Close a run as `ok`, `degraded` or `failed` with its stage timings (seconds by stage)."""
        if state not in RUN_STATES[1:]:
            raise ValueError(f"run state must be one of {RUN_STATES[1:]}, got {state!r}")
        with self.writing() as session:
            done = session.execute(
                update(Run).where(Run.id == run_id).values(
                    state=state, finished_at=utcnow(), timings=dict(timings), error=error, degraded=list(degraded)
                )
            )
            if done.rowcount != 1:
                raise LookupError(f"no run {run_id} in the catalog")

    def close_stale_runs(self) -> int:
        """Close as `abandoned` the runs left `running` under a job lease that no longer holds; returns how many.

        A worker killed by -9, stopped by SIGTERM mid-cycle or frozen past its lease never closes its run;
        any live worker calls this while idle. Runs made outside a worker (no token) are left alone.
        """
        now = utcnow()
        live = select(Job.lease_token).where(Job.state == "running", Job.lease_expires >= now, Job.lease_token.is_not(None))
        stmt = (
            update(Run)
            .where(Run.state == "running", Run.lease_token.is_not(None), Run.lease_token.not_in(live))
            .values(state="abandoned", finished_at=now, error="abandoned: its job lease ended before the run finished")
        )
        with self.writing() as session:
            return session.execute(stmt, execution_options={"synchronize_session": False}).rowcount

    def runs(self, since: datetime | None = None, state: str | None = None, limit: int | None = None) -> list[RunRow]:
        """Runs with cycle time >= `since`, newest cycle first."""
        stmt = select(Run)
        if since is not None:
            stmt = stmt.where(Run.cycle_time >= utc(since))
        if state is not None:
            stmt = stmt.where(Run.state == state)
        stmt = stmt.order_by(Run.cycle_time.desc(), Run.id.desc()).limit(limit)
        with self.reading() as session:
            return [snapshot(RunRow, r) for r in session.scalars(stmt)]
