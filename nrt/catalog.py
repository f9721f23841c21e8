"""The SQL catalog: granules, cycle runs, the job queue, products and scores (SQLAlchemy 2).

SQLite is the embedded default (WAL, busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write);
PostgreSQL serves production and several workers (jobs are claimed with `FOR UPDATE SKIP LOCKED`).
Tables are created and changed only by the Alembic migrations in `nrt/migrations/`, run by
`Catalog.upgrade()`. Times go in and come out timezone-aware UTC; SQLite stores them naive UTC.

Every public method runs in its own short transaction and returns plain frozen row objects, so a
`Catalog` can be shared by the threads of one process. Processes each open their own.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from nrt.errors import CatalogError, CatalogUnavailable, LeaseLost
from nrt.timeline import utc

GRANULE_STATES = ("expected", "downloaded", "bad")
RUN_STATES = ("running", "ok", "degraded", "failed", "abandoned")
JOB_STATES = ("queued", "running", "done", "failed")
PRODUCT_STATES = ("current", "superseded")

MIGRATIONS = Path(__file__).with_name("migrations")


def _now() -> datetime:
    return datetime.now(timezone.utc)


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


# Rows handed to callers: frozen snapshots, detached from any session.


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


@dataclass(frozen=True)
class ProductRow:
    id: int
    kind: str
    valid_time: datetime
    cycle_time: datetime
    lead: int
    members: int
    path: str
    size: int
    sha256: str
    checkpoint: str | None
    superseded_by: int | None
    created_at: datetime


@dataclass(frozen=True)
class ScoreRow:
    id: int
    product_id: int
    valid_time: datetime
    truth_source: str
    metric: str
    threshold: float | None
    lead: int
    model: str
    value: float | None
    created_at: datetime


def _row(row_type, obj, **extra):
    return row_type(**{f.name: extra[f.name] if f.name in extra else getattr(obj, f.name) for f in fields(row_type)})


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0].strip() if text_ else type(exc).__name__


def _mask(url) -> str:
    return url.render_as_string(hide_password=True)


def resolve_url(url: str):
    """Parse a database URL; a bare `postgresql://` gets whichever PostgreSQL driver is installed.

    SQLAlchemy 2.0 defaults to psycopg2 and 2.1 to psycopg 3; either works here.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number, e.g. from an '@' in a password
        # Only the scheme is shown: whatever follows may hold the password, unparsed.
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        raise CatalogError(
            f"catalog URL ({scheme}://...): not a database URL; percent-encode '@', ':' and '/' in the user or password"
        ) from None
    if parsed.drivername == "postgresql":
        driver = next((name for name in ("psycopg", "psycopg2") if importlib.util.find_spec(name)), None)
        if driver is None:
            raise CatalogError(f"{_mask(parsed)}: no PostgreSQL driver installed (pip install psycopg2-binary)")
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    return parsed


def _best_first(kind: str, valid_time: datetime):
    """Products of one kind and valid time, best first: smallest lead, then newest cycle."""
    return (
        select(Product)
        .where(Product.kind == kind, Product.valid_time == valid_time)
        .order_by(Product.lead.asc(), Product.cycle_time.desc(), Product.id.desc())
    )


@dataclass(frozen=True)
class Fence:
    """A job lease that writes must still hold: its job, its token, and the lease time a file write needs left."""

    job_id: int
    token: str
    margin_s: float = 0.0


class Catalog:
    """One catalog database. `Catalog.open(url)` checks it; `Catalog.open(url, migrate=True)` creates it.

    `catalog.fenced(job_id, token)` is the same catalog whose every write first checks, in its own
    transaction, that the job's lease still carries `token` and has not expired; otherwise `LeaseLost`.
    A worker that froze past its lease therefore cannot register anything once another worker took over.
    """

    _fence: Fence | None = None

    def __init__(self, url: str, busy_timeout_s: float = 30.0):
        self._url = resolve_url(url)
        self.url = _mask(make_url(url))  # as the operator wrote it, password hidden
        self.dialect = self._url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise CatalogError(f"{self.url}: unsupported database (use sqlite or postgresql)")
        database = self._url.database
        in_memory = self.dialect == "sqlite" and database in (None, "", ":memory:")
        self.sqlite_path = Path(database) if self.dialect == "sqlite" and not in_memory else None
        try:
            if self.dialect == "sqlite":
                self.engine = create_engine(
                    self._url,
                    connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
                    **({"poolclass": StaticPool} if in_memory else {}),
                )
                self._tune_sqlite(busy_timeout_s)
            else:
                self.engine = create_engine(
                    self._url, pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(busy_timeout_s))}
                )
        except (NoSuchModuleError, ImportError) as exc:
            raise CatalogError(f"{self.url}: database driver unavailable: {_first_line(exc)}") from None
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False)

    def _tune_sqlite(self, busy_timeout_s: float) -> None:
        # pysqlite's own transaction handling defers BEGIN and cannot say IMMEDIATE; take it over.
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(connection):
            mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
            connection.exec_driver_sql(f"BEGIN {mode}")

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, migrate: bool = False, busy_timeout_s: float = 30.0) -> Catalog:
        """Open a catalog; with `migrate` create or upgrade its schema first. Raises `CatalogError`."""
        catalog = cls(url, busy_timeout_s)
        try:
            if migrate:
                catalog.upgrade()
            catalog.check()
        except BaseException:
            catalog.close()
            raise
        return catalog

    @classmethod
    def from_config(cls, cfg, migrate: bool = False) -> Catalog:
        return cls.open(cfg.database_url, migrate=migrate, busy_timeout_s=cfg.catalog.busy_timeout_s)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Database trouble an operator can fix (unreachable, read-only, locked, unmigrated) as one line."""
        try:
            yield
        except DBAPIError as exc:
            if exc.orig is None or isinstance(exc, (IntegrityError, DataError)):  # a bug, not the operator's
                raise
            message = _first_line(exc)
            # SQLite says "readonly database", PostgreSQL (standby, read-only default) "read-only transaction".
            if "readonly" in message.replace("-", "").replace(" ", ""):
                raise CatalogError(f"{self.url}: catalog is read-only: {message}") from None
            if self.sqlite_path is not None and "unable to open" in message:
                reason = "cannot open or create the catalog (read-only directory?)"
                raise CatalogError(f"{self.sqlite_path}: {reason}") from None
            raise CatalogUnavailable(f"{self.url}: {message}") from None

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._translated(), self._reader() as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._translated(), self._writer() as session, session.begin():
            if self._fence is not None:
                self._hold_fence(session, self._fence)
            yield session

    # -- fencing -----------------------------------------------------------------------------------

    def fenced(self, job_id: int, token: str, margin_s: float = 0.0) -> Catalog:
        """This catalog, with every write (and `check_lease`) fenced by the lease `token` of job `job_id`."""
        fenced = copy.copy(self)
        fenced._fence = Fence(job_id, token, margin_s)
        return fenced

    def _hold_fence(self, session: Session, fence: Fence, margin_s: float = 0.0) -> None:
        # FOR SHARE on PostgreSQL: a claimer's UPDATE of the job waits until this write commits.
        stmt = select(Job.lease_expires).where(Job.id == fence.job_id, Job.lease_token == fence.token, Job.state == "running")
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update(read=True)
        expires = session.scalars(stmt).first()
        if expires is None:
            raise LeaseLost(f"job {fence.job_id}: lease lost to another worker (token no longer current); nothing written")
        if expires < _now() + timedelta(seconds=margin_s):
            raise LeaseLost(f"job {fence.job_id}: lease expired at {expires:%Y-%m-%dT%H:%M:%SZ}; nothing written")

    def check_lease(self) -> None:
        """Before writing a file for a fenced job: raise `LeaseLost` unless the lease is held with its margin left.

        The margin covers the write itself: no other worker can claim the job before the lease expires.
        An unfenced catalog (the CLI, tests) always passes.
        """
        if self._fence is not None:
            with self._translated(), self._reader() as session, session.begin():
                self._hold_fence(session, self._fence, self._fence.margin_s)

    def _alembic_config(self, connection=None):
        from alembic.config import Config as AlembicConfig

        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        config.attributes["connection"] = connection
        return config

    def head(self) -> str:
        """The newest schema revision this code knows."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def revision(self) -> str | None:
        """The schema revision of the database (None when it was never migrated)."""
        from alembic.runtime.migration import MigrationContext

        self._require_file()
        with self._translated(), self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _require_file(self) -> None:
        # Connecting would create an empty file; a missing catalog is an error, not a new one.
        if self.sqlite_path is not None and not self.sqlite_path.is_file():
            raise CatalogError(f"{self.sqlite_path}: no catalog here (create it with `nrt catalog init`)")

    def upgrade(self) -> str:
        """Create the schema or migrate it to the newest revision; returns that revision.

        Runs in one transaction (both databases have transactional DDL), so a failure leaves the
        catalog as it was, and a SQLite file this call created is removed again.
        """
        from alembic import command
        from alembic.util import CommandError

        created: list[Path] = []
        if self.sqlite_path is not None:
            directory = self.sqlite_path.parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"{directory}: cannot create the catalog directory: {exc.strerror or exc}") from None
            if not self.sqlite_path.exists():
                name = self.sqlite_path.name
                created = [self.sqlite_path.with_name(name + suffix) for suffix in ("", "-wal", "-shm")]
        try:
            with self._translated(), self.engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
                command.upgrade(self._alembic_config(connection), "head")
        except BaseException as exc:
            self.engine.dispose()
            for path in created:
                path.unlink(missing_ok=True)
            if isinstance(exc, CommandError):  # e.g. a revision from a newer nrt that this code does not know
                raise CatalogError(f"{self.url}: cannot migrate: {_first_line(exc)}") from None
            raise
        return self.head()

    def check(self) -> str:
        """Raise `CatalogError` unless the catalog is reachable, writable and at the newest revision.

        Returns the revision. The write probe rewrites the version row with itself inside a real
        write transaction, which is the only reliable test of read-only files, mounts and standbys.
        """
        current, head = self.revision(), self.head()
        if current != head:
            found = f"revision {current}" if current else "no nrt schema"
            raise CatalogError(f"{self.url}: {found}, this nrt needs {head} (run `nrt catalog init` to migrate)")
        with self._write() as session:
            session.execute(text("UPDATE alembic_version SET version_num = version_num"))
        return current

    # -- granules ----------------------------------------------------------------------------------

    def _insert(self, model):
        return (postgresql_insert if self.dialect == "postgresql" else sqlite_insert)(model)

    def register_granule(
        self, source: str, name: str, version: str | None, start: datetime, end: datetime,
        path: str | Path, size: int, sha256: str, mtime_ns: int | None = None,
    ) -> int:
        """Record a downloaded, validated file (state `downloaded`); returns the granule id.

        `mtime_ns` is the file's modification time when `sha256` was taken: while it stays so, the file is
        taken as unchanged without hashing it again.
        """
        now = _now()
        values = dict(version=version, start_time=utc(start), end_time=utc(end), path=str(path), size=int(size),
                      sha256=sha256, mtime_ns=mtime_ns, state="downloaded", reason=None, updated_at=now)
        stmt = self._insert(Granule).values(source=source, name=name, created_at=now, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["source", "name"], set_=values).returning(Granule.id)
        with self._write() as session:
            return session.execute(stmt).scalar_one()

    def expect_granule(self, source: str, name: str, version: str | None, start: datetime, end: datetime) -> int:
        """Note a file that should exist (state `expected`) unless the catalog already knows it; returns its id."""
        now = _now()
        stmt = self._insert(Granule).values(
            source=source, name=name, version=version, start_time=utc(start), end_time=utc(end),
            state="expected", created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["source", "name"])
        with self._write() as session:
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
        with self._write() as session:
            granule = session.scalars(
                select(Granule).where(Granule.source == source, Granule.name == name).with_for_update()
            ).first()
            if granule is None:
                if start is None or end is None:
                    raise LookupError(f"granule {source}/{name} is not in the catalog; give its start and end")
                granule = Granule(source=source, name=name, version=version, start_time=utc(start),
                                  end_time=utc(end), attempts=0, created_at=_now())
                session.add(granule)
            granule.state, granule.reason = "bad", reason
            granule.path = granule.size = granule.sha256 = granule.mtime_ns = None
            granule.attempts += 1
            granule.retry_after = utc(retry_after) if retry_after is not None else None
            granule.remote_tag = remote_tag
            granule.updated_at = _now()
            return granule.attempts

    def clear_bad(self, source: str | None = None) -> int:
        """Forget the bad marks (of one source, or all): those files are tried again as if new; returns how many."""
        stmt = update(Granule).where(Granule.state == "bad")
        if source is not None:
            stmt = stmt.where(Granule.source == source)
        stmt = stmt.values(state="expected", attempts=0, retry_after=None, remote_tag=None, updated_at=_now())
        with self._write() as session:
            return session.execute(stmt, execution_options={"synchronize_session": False}).rowcount

    def get_granule(self, source: str, name: str) -> GranuleRow | None:
        with self._read() as session:
            granule = session.scalars(select(Granule).where(Granule.source == source, Granule.name == name)).first()
            return _row(GranuleRow, granule) if granule else None

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
        with self._read() as session:
            return [_row(GranuleRow, g) for g in session.scalars(stmt.order_by(Granule.start_time, Granule.id))]

    def delete_granule(self, granule_id: int) -> bool:
        with self._write() as session:
            return session.execute(delete(Granule).where(Granule.id == granule_id)).rowcount == 1

    # -- runs --------------------------------------------------------------------------------------

    def start_run(self, cycle_time: datetime) -> int:
        """A `running` run; on a fenced catalog it carries the lease token, so `close_stale_runs` can end it."""
        token = self._fence.token if self._fence is not None else None
        with self._write() as session:
            run = Run(cycle_time=utc(cycle_time), state="running", started_at=_now(), timings={}, degraded=[],
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
        with self._write() as session:
            done = session.execute(
                update(Run).where(Run.id == run_id).values(
                    state=state, finished_at=_now(), timings=dict(timings), error=error, degraded=list(degraded)
                )
            )
            if done.rowcount != 1:
                raise LookupError(f"no run {run_id} in the catalog")

    def close_stale_runs(self) -> int:
        """Close as `abandoned` the runs left `running` under a job lease that no longer holds; returns how many.

        A worker killed by -9, stopped by SIGTERM mid-cycle or frozen past its lease never closes its run;
        any live worker calls this while idle. Runs made outside a worker (no token) are left alone.
        """
        now = _now()
        live = select(Job.lease_token).where(Job.state == "running", Job.lease_expires >= now, Job.lease_token.is_not(None))
        stmt = (
            update(Run)
            .where(Run.state == "running", Run.lease_token.is_not(None), Run.lease_token.not_in(live))
            .values(state="abandoned", finished_at=now, error="abandoned: its job lease ended before the run finished")
        )
        with self._write() as session:
            return session.execute(stmt, execution_options={"synchronize_session": False}).rowcount

    def runs(self, since: datetime | None = None, state: str | None = None, limit: int | None = None) -> list[RunRow]:
        """Runs with cycle time >= `since`, newest cycle first."""
        stmt = select(Run)
        if since is not None:
            stmt = stmt.where(Run.cycle_time >= utc(since))
        if state is not None:
            stmt = stmt.where(Run.state == state)
        stmt = stmt.order_by(Run.cycle_time.desc(), Run.id.desc()).limit(limit)
        with self._read() as session:
            return [_row(RunRow, r) for r in session.scalars(stmt)]

    # -- jobs --------------------------------------------------------------------------------------

    def enqueue(
        self, kind: str, payload: dict, key: str | None = None, *, max_attempts: int = 3, priority: int = 0,
    ) -> int:
        """Queue a job; with a `key` already present (in any state) nothing is added and its id returned.

        `payload` must be JSON-serialisable. Higher `priority` is claimed first, then oldest first.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = _now()
        stmt = self._insert(Job).values(
            kind=kind, payload=payload, key=key, state="queued", priority=priority, attempts=0,
            max_attempts=max_attempts, created_at=now, updated_at=now,
        ).on_conflict_do_nothing(index_elements=["key"]).returning(Job.id)
        with self._write() as session:
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
                    updated_at=_now())
        )
        with self._write() as session:
            return session.execute(stmt).rowcount == 1

    def claim(self, owner: str, kinds: Iterable[str] | None = None, lease_s: float = 300) -> JobRow | None:
        """Atomically take the next job (queued and not waiting to retry, or running with an expired lease).

        The lease lasts `lease_s` seconds unless renewed by `heartbeat`. A job whose lease expired
        after its last allowed attempt becomes `failed` instead of being handed out again.
        """
        kinds = sorted(kinds) if kinds is not None else None
        while True:
            with self._write() as session:
                now = _now()
                stmt = select(Job).where(
                    or_(
                        and_(Job.state == "queued", or_(Job.not_before.is_(None), Job.not_before <= now)),
                        and_(Job.state == "running", Job.lease_expires < now),
                    )
                )
                if kinds is not None:
                    stmt = stmt.where(Job.kind.in_(kinds))
                stmt = stmt.order_by(Job.priority.desc(), Job.id).limit(1)
                if self.dialect == "postgresql":
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
                return _row(JobRow, job)

    def _owned(self, session: Session, job_id: int, owner: str) -> Job | None:
        return session.scalars(
            select(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running").with_for_update()
        ).first()

    def heartbeat(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when `owner` no longer holds the job (another worker reclaimed it)."""
        now = _now()
        with self._write() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
                .values(lease_expires=now + timedelta(seconds=lease_s), updated_at=now)
            )
            return renewed.rowcount == 1

    def complete(self, job_id: int, owner: str) -> bool:
        """Mark the job done; False (and no change) when `owner` lost the lease."""
        with self._write() as session:
            job = self._owned(session, job_id, owner)
            if job is None:
                return False
            job.state, job.error = "done", None
            job.lease_owner = job.lease_expires = job.lease_token = None
            job.finished_at = job.updated_at = _now()
            return True

    def fail(self, job_id: int, owner: str, error: str, retry: bool = True, retry_delay_s: float = 0.0) -> bool:
        """Record a failure: queued again while attempts remain and `retry`, else `failed`.

        A requeued job is not claimed again before `retry_delay_s` has passed, so a passing fault (a server
        down, a granule not yet published) does not use up every attempt within seconds.
        """
        with self._write() as session:
            job = self._owned(session, job_id, owner)
            if job is None:
                return False
            now = _now()
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
        with self._write() as session:
            job = self._owned(session, job_id, owner)
            if job is None:
                return False
            job.state = "queued"
            job.attempts = max(0, job.attempts - 1)
            job.lease_owner = job.lease_expires = job.lease_token = None
            job.updated_at = _now()
            return True

    def job(self, job_id: int) -> JobRow | None:
        with self._read() as session:
            job = session.get(Job, job_id)
            return _row(JobRow, job) if job else None

    def jobs(self, state: str | None = None, kind: str | None = None) -> list[JobRow]:
        stmt = select(Job)
        if state is not None:
            stmt = stmt.where(Job.state == state)
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        with self._read() as session:
            return [_row(JobRow, j) for j in session.scalars(stmt.order_by(Job.id))]

    # -- products ----------------------------------------------------------------------------------

    def _lock_valid_time(self, session: Session, kind: str, valid_time: datetime) -> None:
        """Serialise writers of one (kind, valid time) on PostgreSQL; SQLite's BEGIN IMMEDIATE already does."""
        if self.dialect == "postgresql":
            digest = hashlib.sha256(f"{kind}|{valid_time.isoformat()}".encode()).digest()
            session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))

    def _resupersede(self, session: Session, kind: str, valid_time: datetime) -> None:
        best = session.scalars(_best_first(kind, valid_time).limit(1)).first()
        if best is None:
            return
        session.execute(
            update(Product)
            .where(Product.kind == kind, Product.valid_time == valid_time, Product.id != best.id)
            .values(superseded_by=best.id)
        )
        session.execute(update(Product).where(Product.id == best.id).values(superseded_by=None))

    def register_product(
        self, kind: str, valid_time: datetime, cycle_time: datetime, lead: int, members: int,
        path: str | Path, size: int, sha256: str, checkpoint: str | None = None,
    ) -> int:
        """Record a written product and re-rank its valid time; returns the product id.

        Of all products of one kind and valid time the best has the smallest lead, then the newest
        cycle; every other one gets `superseded_by` = the best. Registering the same kind, valid time
        and cycle again (a re-run) replaces that row.
        """
        valid_time, cycle_time = utc(valid_time), utc(cycle_time)
        values = dict(lead=int(lead), members=int(members), path=str(path), size=int(size), sha256=sha256,
                      checkpoint=checkpoint, created_at=_now())
        stmt = self._insert(Product).values(kind=kind, valid_time=valid_time, cycle_time=cycle_time, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["kind", "valid_time", "cycle_time"], set_=values)
        with self._write() as session:
            self._lock_valid_time(session, kind, valid_time)
            product_id = session.execute(stmt.returning(Product.id)).scalar_one()
            self._resupersede(session, kind, valid_time)
            return product_id

    def best_product(self, valid_time: datetime, kind: str = "ensemble") -> ProductRow | None:
        """The best available product for `valid_time`: smallest lead, then newest cycle."""
        with self._read() as session:
            product = session.scalars(_best_first(kind, utc(valid_time)).limit(1)).first()
            return _row(ProductRow, product) if product else None

    def product(self, product_id: int) -> ProductRow | None:
        with self._read() as session:
            product = session.get(Product, product_id)
            return _row(ProductRow, product) if product else None

    def products(
        self, since: datetime | None = None, kind: str | None = None, until: datetime | None = None,
        current_only: bool = False,
    ) -> list[ProductRow]:
        """Products with valid time in [since, until] (either optional), by valid time then rank."""
        stmt = select(Product)
        if since is not None:
            stmt = stmt.where(Product.valid_time >= utc(since))
        if until is not None:
            stmt = stmt.where(Product.valid_time <= utc(until))
        if kind is not None:
            stmt = stmt.where(Product.kind == kind)
        if current_only:
            stmt = stmt.where(Product.superseded_by.is_(None))
        stmt = stmt.order_by(Product.valid_time, Product.kind, Product.lead, Product.cycle_time.desc(), Product.id)
        with self._read() as session:
            return [_row(ProductRow, p) for p in session.scalars(stmt)]

    def delete_product(self, product_id: int) -> bool:
        """Forget a product (and its scores); the next best of its valid time becomes current."""
        with self._write() as session:
            product = session.get(Product, product_id)
            if product is None:
                return False
            kind, valid_time = product.kind, product.valid_time
            self._lock_valid_time(session, kind, valid_time)
            session.delete(product)
            session.flush()
            self._resupersede(session, kind, valid_time)
            return True

    # -- scores ------------------------------------------------------------------------------------

    def add_scores(self, product_id: int, truth_source: str, rows: Iterable[dict[str, Any]]) -> int:
        """Store scores of a product against a truth source; returns how many were stored.

        Each row: `metric`, `value`, optional `threshold` (None), `lead` (the product's) and
        `model` ("nrt"; "baseline" for the reference forecast). A row with the same product, truth,
        metric, threshold, lead and model replaces the old one, so re-verifying is idempotent.
        NaN values are stored as NULL and come back as None.
        """
        stored = 0
        with self._write() as session:
            product = session.get(Product, product_id)
            if product is None:
                raise LookupError(f"no product {product_id} in the catalog")
            # One read of this product's scores instead of a DELETE per row (an overpass stores hundreds).
            existing = {
                (s.metric, s.threshold, s.lead, s.model): s
                for s in session.scalars(select(Score).where(Score.product_id == product_id, Score.truth_source == truth_source))
            }
            now = _now()
            for row in rows:
                value = row["value"]
                value = None if value is None or math.isnan(value) else float(value)
                threshold = row.get("threshold")
                key = (row["metric"], None if threshold is None else float(threshold),
                       int(row.get("lead", product.lead)), row.get("model", "nrt"))
                score = existing.get(key)
                if score is None:
                    score = existing[key] = Score(product_id=product_id, truth_source=truth_source, metric=key[0],
                                                  threshold=key[1], lead=key[2], model=key[3])
                    session.add(score)
                score.value, score.created_at = value, now
                stored += 1
        return stored

    def scores(
        self, product_id: int | None = None, truth_source: str | None = None, metric: str | None = None,
        model: str | None = None, since: datetime | None = None, until: datetime | None = None,
    ) -> list[ScoreRow]:
        """Scores, with their product's valid time, filtered by any of the arguments, oldest first."""
        stmt = select(Score, Product.valid_time).join(Product, Score.product_id == Product.id)
        for column, value in ((Score.product_id, product_id), (Score.truth_source, truth_source),
                              (Score.metric, metric), (Score.model, model)):
            if value is not None:
                stmt = stmt.where(column == value)
        if since is not None:
            stmt = stmt.where(Product.valid_time >= utc(since))
        if until is not None:
            stmt = stmt.where(Product.valid_time <= utc(until))
        stmt = stmt.order_by(Product.valid_time, Score.metric, Score.threshold, Score.lead, Score.model, Score.id)
        with self._read() as session:
            return [_row(ScoreRow, score, valid_time=valid) for score, valid in session.execute(stmt)]

    # -- overview ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Row counts by table and state (products: current/superseded; scores: rows)."""
        result = {
            "granules": dict.fromkeys(GRANULE_STATES, 0),
            "runs": dict.fromkeys(RUN_STATES, 0),
            "jobs": dict.fromkeys(JOB_STATES, 0),
            "products": dict.fromkeys(PRODUCT_STATES, 0),
            "scores": {"rows": 0},
        }
        product_state = Product.superseded_by.is_(None)
        with self._read() as session:
            for table, model in (("granules", Granule), ("runs", Run), ("jobs", Job)):
                for state, n in session.execute(select(model.state, func.count()).group_by(model.state)):
                    result[table][state] = n
            for current, n in session.execute(select(product_state, func.count()).group_by(product_state)):
                result["products"]["current" if current else "superseded"] = n
            result["scores"]["rows"] = session.scalar(select(func.count()).select_from(Score))
        return result
