"""The catalog's tables (SQLAlchemy 2 declarative), as the Alembic migrations in `migrations/` create them.

Tables are created and changed only by those migrations (`Database.upgrade()`); a change here needs one.
Times go in and come out timezone-aware UTC; SQLite stores them naive UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from nrt.timeline import utc

GRANULE_STATES = ("expected", "downloaded", "bad")
RUN_STATES = ("running", "ok", "degraded", "failed", "abandoned")
JOB_STATES = ("queued", "running", "done", "failed")
PRODUCT_STATES = ("current", "superseded")


def _states_check(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC in and out; SQLite keeps naive UTC text, PostgreSQL `timestamptz`."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    # Named constraints, so Alembic's SQLite batch mode can find and alter them later.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Granule(Base):
    __tablename__ = "granules"
    __table_args__ = (
        UniqueConstraint("source", "name"),
        CheckConstraint(_states_check(GRANULE_STATES), name="state"),
        Index(None, "source", "start_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(16))
    start_time: Mapped[datetime] = mapped_column(UtcDateTime)
    end_time: Mapped[datetime] = mapped_column(UtcDateTime)
    path: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)  # the file's modification time when its sha256 was taken
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    retry_after: Mapped[datetime | None] = mapped_column(UtcDateTime)  # a bad mark refuses the file until then
    remote_tag: Mapped[str | None] = mapped_column(String(255))  # size, date, ETag of the remote copy marked bad
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_states_check(RUN_STATES), name="state"), Index(None, "cycle_time"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_time: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    timings: Mapped[dict] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    degraded: Mapped[list] = mapped_column(JSON)
    lease_token: Mapped[str | None] = mapped_column(String(32))  # the job lease it ran under (None: outside a worker)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_states_check(JOB_STATES), name="state"),
        Index(None, "state", "priority", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    key: Mapped[str | None] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lease_token: Mapped[str | None] = mapped_column(String(32))  # new at every claim; fences the holder's writes
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)  # a retry waits until then
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("kind", "valid_time", "cycle_time"), Index(None, "kind", "valid_time"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    valid_time: Mapped[datetime] = mapped_column(UtcDateTime)
    cycle_time: Mapped[datetime] = mapped_column(UtcDateTime)
    lead: Mapped[int] = mapped_column(Integer)
    members: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    checkpoint: Mapped[str | None] = mapped_column(String(255))
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (Index(None, "product_id"), Index(None, "truth_source", "metric"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    truth_source: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float | None] = mapped_column(Float)
    lead: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
