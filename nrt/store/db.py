"""The catalog database: engine, SQLite tuning, sessions, lease fencing and the Alembic migrations.

SQLite is the embedded default (WAL, busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write);
PostgreSQL serves production and several workers. Tables are created and changed only by the Alembic
migrations in `migrations/`, run by `upgrade()`.

Every public method of the catalog runs in its own short transaction (`reading()` / `writing()`) and returns
plain frozen row objects, so a catalog can be shared by the threads of one process. Processes each open
their own. The fence lives here, not with the job queue (`nrt.service.queue`), because every write of every
table checks it.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Self

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from nrt.errors import CatalogError, CatalogUnavailable, LeaseLost
from nrt.store.schema import Job

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def snapshot(row_type, obj, **extra):
    """A frozen row object of `row_type` from an ORM object, detached from any session."""
    return row_type(**{f.name: extra[f.name] if f.name in extra else getattr(obj, f.name) for f in fields(row_type)})


def insert(dialect: str, model):
    """An INSERT with the dialect's ON CONFLICT clauses."""
    return (postgresql_insert if dialect == "postgresql" else sqlite_insert)(model)


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


@dataclass(frozen=True)
class Fence:
    """A job lease that writes must still hold: its job, its token, and the lease time a file write needs left."""

    job_id: int
    token: str
    margin_s: float = 0.0


class Database:
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
    def open(cls, url: str, migrate: bool = False, busy_timeout_s: float = 30.0) -> Self:
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
    def from_config(cls, cfg, migrate: bool = False) -> Self:
        return cls.open(cfg.database_url, migrate=migrate, busy_timeout_s=cfg.catalog.busy_timeout_s)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
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
    def reading(self) -> Iterator[Session]:
        with self._translated(), self._reader() as session, session.begin():
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        with self._translated(), self._writer() as session, session.begin():
            if self._fence is not None:
                self._hold_fence(session, self._fence)
            yield session

    # -- fencing -----------------------------------------------------------------------------------

    def fenced(self, job_id: int, token: str, margin_s: float = 0.0) -> Self:
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
        if expires < utcnow() + timedelta(seconds=margin_s):
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
        with self.writing() as session:
            session.execute(text("UPDATE alembic_version SET version_num = version_num"))
        return current
