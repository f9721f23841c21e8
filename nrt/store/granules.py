"""Granules: the files the sources fetched (or expect, or refused), unique on (source, name)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select, update

from nrt.store.db import insert, snapshot, utcnow
from nrt.store.schema import Granule
from nrt.timeline import utc


@dataclass(frozen=True)
class GranuleRow:
    id: int
    source: str
    name: str
    version: str | None
    start_time: datetime
    end_time: datetime
    path: str | None
    size: int | None
    sha256: str | None
    mtime_ns: int | None
    state: str
    reason: str | None
    attempts: int
    retry_after: datetime | None
    remote_tag: str | None
    created_at: datetime
    updated_at: datetime


class Granules:
    """The catalog's granule queries (a part of `nrt.store.Catalog`)."""

    def register_granule(
        self, source: str, name: str, version: str | None, start: datetime, end: datetime,
        path: str | Path, size: int, sha256: str, mtime_ns: int | None = None,
    ) -> int:
        """Record a downloaded, validated file (state `downloaded`); returns the granule id.

        `mtime_ns` is the file's modification time when `sha256` was taken: while it stays so, the file is
        taken as unchanged without hashing it again.
        """
        now = utcnow()
        values = dict(version=version, start_time=utc(start), end_time=utc(end), path=str(path), size=int(size),
                      sha256=sha256, mtime_ns=mtime_ns, state="downloaded", reason=None, updated_at=now)
        stmt = insert(self.dialect, Granule).values(source=source, name=name, created_at=now, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["source", "name"], set_=values).returning(Granule.id)
        with self.writing() as session:
            return session.execute(stmt).scalar_one()

    def expect_granule(self, source: str, name: str, version: str | None, start: datetime, end: datetime) -> int:
        """Note a file that should exist (state `expected`) unless the catalog already knows it; returns its id."""
        now = utcnow()
        stmt = insert(self.dialect, Granule).values(
            source=source, name=name, version=version, start_time=utc(start), end_time=utc(end),
            state="expected", created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["source", "name"])
        with self.writing() as session:
            session.execute(stmt)
            return session.scalars(select(Granule.id).where(Granule.source == source, Granule.name == name)).one()

    def mark_bad(
        self, source: str, name: str, reason: str, version: str | None = None,
        start: datetime | None = None, end: datetime | None = None,
        *, retry_after: datetime | None = None, remote_tag: str | None = None,
    ) -> int:
        """Mark a file bad (corrupt, wrong product...) and count the attempt; returns the attempts so far.

        A granule the catalog does not know yet needs `start` and `end`. Once refused for good, the file is
        tried again after `retry_after`, or when the server's copy no longer matches `remote_tag`.
        """
        with self.writing() as session:
            granule = session.scalars(
                select(Granule).where(Granule.source == source, Granule.name == name).with_for_update()
            ).first()
            if granule is None:
                if start is None or end is None:
                    raise LookupError(f"granule {source}/{name} is not in the catalog; give its start and end")
                granule = Granule(source=source, name=name, version=version, start_time=utc(start),
                                  end_time=utc(end), attempts=0, created_at=utcnow())
                session.add(granule)
            granule.state, granule.reason = "bad", reason
            granule.path = granule.size = granule.sha256 = granule.mtime_ns = None
            granule.attempts += 1
            granule.retry_after = utc(retry_after) if retry_after is not None else None
            granule.remote_tag = remote_tag
            granule.updated_at = utcnow()
            return granule.attempts

    def clear_bad(self, source: str | None = None) -> int:
        """Forget the bad marks (of one source, or all): those files are tried again as if new; returns how many."""
        stmt = update(Granule).where(Granule.state == "bad")
        if source is not None:
            stmt = stmt.where(Granule.source == source)
        stmt = stmt.values(state="expected", attempts=0, retry_after=None, remote_tag=None, updated_at=utcnow())
        with self.writing() as session:
            return session.execute(stmt, execution_options={"synchronize_session": False}).rowcount

    def get_granule(self, source: str, name: str) -> GranuleRow | None:
        with self.reading() as session:
            granule = session.scalars(select(Granule).where(Granule.source == source, Granule.name == name)).first()
            return snapshot(GranuleRow, granule) if granule else None

    def granules(
        self, source: str | None = None, start: datetime | None = None, end: datetime | None = None,
        state: str | None = None,
    ) -> list[GranuleRow]:
        """Granules whose start time lies in [start, end] (either bound optional), oldest first."""
        stmt = select(Granule)
        if source is not None:
            stmt = stmt.where(Granule.source == source)
        if start is not None:
            stmt = stmt.where(Granule.start_time >= utc(start))
        if end is not None:
            stmt = stmt.where(Granule.start_time <= utc(end))
        if state is not None:
            stmt = stmt.where(Granule.state == state)
        with self.reading() as session:
            return [snapshot(GranuleRow, g) for g in session.scalars(stmt.order_by(Granule.start_time, Granule.id))]

    def delete_granule(self, granule_id: int) -> bool:
        with self.writing() as session:
            return session.execute(delete(Granule).where(Granule.id == granule_id)).rowcount == 1
