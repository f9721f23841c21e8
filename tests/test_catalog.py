"""The SQL catalog on real SQLite files and on the real PostgreSQL server (NRT_TEST_POSTGRES_URL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from nrt.errors import CatalogError
from nrt.service.queue import JobQueue
from nrt.store import Base, Catalog, resolve_url

T0 = datetime(2024, 2, 29, 23, 30, tzinfo=timezone.utc)
HALF = timedelta(minutes=30)
TABLES = {"granules", "runs", "jobs", "products", "scores", "alembic_version"}


def nrt_command() -> list[str]:
    beside = Path(sys.executable).with_name("nrt")
    return [str(beside)] if beside.exists() else [shutil.which("nrt") or "nrt"]


def run_nrt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NRT_")}
    return subprocess.run(
        [*nrt_command(), *args], env={**clean, **(env or {})}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("nrt: error: "), result.stderr
    for fragment in fragments:
        assert fragment in line
    return line


@contextlib.contextmanager
def fresh_pg_schema(base_url: str):
    """A URL whose connections work in a new, empty PostgreSQL schema, dropped afterwards."""
    schema = f"nrt_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(resolve_url(base_url))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = resolve_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.set(drivername="postgresql").render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A catalog URL with nothing in it yet: a new SQLite path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog/catalog.sqlite"
        return
    with fresh_pg_schema(request.getfixturevalue("pg_url")) as url:
        yield url


@pytest.fixture
def catalog(db_url):
    with Catalog.open(db_url, migrate=True, busy_timeout_s=10) as opened:
        yield opened


@contextlib.contextmanager
def read_only(path: Path):
    """Make a file or directory unwritable, even for root (immutable flag), or skip."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without the immutable flag: cannot make a read-only path")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# -- schema and migrations -----------------------------------------------------------------------


def test_migration_from_empty_creates_every_table_at_head(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    fresh = Catalog(db_url)
    try:
        with pytest.raises(CatalogError, match="nrt catalog init"):
            fresh.check()
        assert fresh.upgrade() == fresh.head() == "0004"
        assert fresh.check() == "0004"
        with fresh.engine.connect() as connection:
            assert TABLES <= set(inspect(connection).get_table_names())
            # The migrations alone built the schema, and it is exactly what the models describe.
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        job_id = JobQueue(fresh).enqueue("cycle", {"t": "x"}, key="k")
        assert fresh.upgrade() == "0004"  # again: a no-op that keeps the data
        assert JobQueue(fresh).job(job_id).key == "k"
    finally:
        fresh.close()


def test_a_catalog_of_the_first_revision_upgrades_and_keeps_its_jobs(db_url):
    from alembic import command

    old = Catalog(db_url)
    if old.sqlite_path is not None:
        old.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with old.engine.begin() as connection:
            command.upgrade(old._alembic_config(connection), "0001")
        assert old.revision() == "0001"
        job_id = JobQueue(old).enqueue("cycle", {"t": "x"}, key="k")  # inserts only columns the first revision has
        with pytest.raises(CatalogError, match="0001.*nrt catalog init"):
            old.check()
        assert old.upgrade() == "0004"
        claimed = JobQueue(old).claim("w")
        assert (claimed.id, claimed.key, claimed.payload, claimed.not_before) == (job_id, "k", {"t": "x"}, None)
    finally:
        old.close()


def test_sqlite_runs_in_wal_with_foreign_keys_and_busy_timeout(tmp_path):
    path = tmp_path / "c.sqlite"
    with Catalog.open(f"sqlite:///{path}", migrate=True, busy_timeout_s=7) as catalog:
        with catalog.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
    # WAL is a property of the file, seen by any other client too.
    with contextlib.closing(sqlite3.connect(path)) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_check_refuses_a_revision_it_does_not_know(catalog):
    with catalog.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(CatalogError, match="revision ffff"):
        catalog.check()
    with pytest.raises(CatalogError, match="cannot migrate"):
        catalog.upgrade()


def test_sqlite_writer_waits_for_a_lock_then_reports_it_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/c.sqlite"
    Catalog.open(url, migrate=True).close()
    other = sqlite3.connect(tmp_path / "c.sqlite")
    with Catalog(url, busy_timeout_s=0.2) as catalog, contextlib.closing(other):
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(CatalogError, match="locked"):
            JobQueue(catalog).enqueue("cycle", {})
        assert time.monotonic() - started >= 0.15  # it waited for the busy timeout, not failed at once
        other.execute("ROLLBACK")
        assert JobQueue(catalog).enqueue("cycle", {}) == 1


# -- granules -------------------------------------------------------------------------------------


def test_granule_lifecycle_expected_downloaded_bad(catalog):
    start, end = T0, T0 + HALF - timedelta(seconds=1)
    gid = catalog.expect_granule("imerg", "g1", "V07B", start, end)
    assert catalog.expect_granule("imerg", "g1", "V07B", start, end) == gid
    row = catalog.get_granule("imerg", "g1")
    assert (row.state, row.path, row.attempts) == ("expected", None, 0)
    assert row.start_time == start and row.start_time.tzinfo == timezone.utc

    assert catalog.register_granule("imerg", "g1", "V07B", start, end, "/d/g1", 1234, "ab" * 32) == gid
    row = catalog.get_granule("imerg", "g1")
    assert (row.state, row.path, row.size, row.sha256) == ("downloaded", "/d/g1", 1234, "ab" * 32)
    # Expecting a file the catalog already holds changes nothing.
    catalog.expect_granule("imerg", "g1", "V07B", start, end)
    assert catalog.get_granule("imerg", "g1").state == "downloaded"

    assert catalog.mark_bad("imerg", "g1", "truncated HDF5") == 1
    assert catalog.mark_bad("imerg", "g1", "truncated HDF5") == 2
    row = catalog.get_granule("imerg", "g1")
    assert (row.state, row.reason, row.attempts, row.path, row.sha256) == ("bad", "truncated HDF5", 2, None, None)
    # A good download later clears the reason but keeps the count of bad attempts.
    catalog.register_granule("imerg", "g1", "V07B", start, end, "/d/g1", 99, "cd" * 32)
    row = catalog.get_granule("imerg", "g1")
    assert (row.state, row.reason, row.attempts) == ("downloaded", None, 2)
    assert catalog.get_granule("imerg", "nope") is None


def test_mark_bad_on_unknown_granule_needs_its_times(catalog):
    with pytest.raises(LookupError):
        catalog.mark_bad("dpr", "x", "html instead of HDF5")
    assert catalog.mark_bad("dpr", "x", "html instead of HDF5", "V07A", T0, T0 + HALF) == 1
    assert catalog.get_granule("dpr", "x").state == "bad"


def test_granule_queries_filter_by_source_time_and_state(catalog):
    for k in range(6):
        start = T0 + k * HALF
        catalog.expect_granule("imerg", f"i{k}", "V07B", start, start + HALF)
    catalog.expect_granule("dpr", "d0", "V07A", T0, T0 + HALF)
    catalog.register_granule("imerg", "i2", "V07B", T0 + 2 * HALF, T0 + 3 * HALF, "/p", 1, "0" * 64)
    names = [g.name for g in catalog.granules("imerg", start=T0 + HALF, end=T0 + 3 * HALF)]
    assert names == ["i1", "i2", "i3"]  # both bounds inclusive, oldest first, other sources left out
    assert [g.name for g in catalog.granules("imerg", state="downloaded")] == ["i2"]
    assert len(catalog.granules()) == 7
    # The bounds may come in any timezone; they mean the same instant.
    plus_two = timezone(timedelta(hours=2))
    assert [g.name for g in catalog.granules("imerg", start=(T0 + 5 * HALF).astimezone(plus_two))] == ["i5"]
    assert catalog.delete_granule(catalog.get_granule("dpr", "d0").id)
    assert catalog.get_granule("dpr", "d0") is None


def test_naive_times_are_refused(catalog):
    with pytest.raises(ValueError, match="naive"):
        catalog.expect_granule("imerg", "n", "V07B", datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 30))


# -- runs -----------------------------------------------------------------------------------------


def test_runs_record_state_timings_and_degradation(catalog):
    first = catalog.start_run(T0)
    second = catalog.start_run(T0 + HALF)
    catalog.finish_run(first, "ok", {"ingest": 1.5, "nowcast": 12.0})
    catalog.finish_run(second, "degraded", {"ingest": 2.0}, error=None, degraded=["nowcast:extrapolation"])
    newest, oldest = catalog.runs()
    assert (newest.id, newest.state, newest.cycle_time) == (second, "degraded", T0 + HALF)
    assert newest.degraded == ["nowcast:extrapolation"]
    assert oldest.timings == {"ingest": 1.5, "nowcast": 12.0} and oldest.finished_at >= oldest.started_at
    assert [r.id for r in catalog.runs(state="ok")] == [first]
    assert [r.id for r in catalog.runs(since=T0 + HALF)] == [second]
    with pytest.raises(ValueError):
        catalog.finish_run(first, "running", {})
    with pytest.raises(LookupError):
        catalog.finish_run(10_000, "failed", {}, error="boom")


# -- products and scores --------------------------------------------------------------------------


def _product(catalog, cycle_time, lead, kind="ensemble", valid=T0, path=None):
    return catalog.register_product(
        kind, valid, cycle_time, lead, 30, path or f"/p/{kind}-{cycle_time:%H%M}-{lead}.nc", 100, "e" * 64,
        checkpoint="builtin:demo",
    )


def test_newer_product_with_smaller_lead_supersedes_older_ones(catalog):
    first = _product(catalog, T0, lead=8)
    assert catalog.best_product(T0).id == first and catalog.product(first).superseded_by is None
    better = _product(catalog, T0 + 2 * HALF, lead=6)
    assert catalog.product(first).superseded_by == better
    assert catalog.best_product(T0).id == better
    # A backfilled older cycle arriving late does not displace the better product.
    late = _product(catalog, T0 - HALF, lead=9)
    assert catalog.product(late).superseded_by == better and catalog.best_product(T0).id == better
    # Equal lead (e.g. after a latency change): the newer cycle wins.
    tie = _product(catalog, T0 + 3 * HALF, lead=6)
    assert catalog.best_product(T0).id == tie
    assert {p.id: p.superseded_by for p in catalog.products()} == {first: tie, better: tie, late: tie, tie: None}
    assert [p.id for p in catalog.products(current_only=True)] == [tie]
    # Other kinds and valid times rank on their own.
    summary = _product(catalog, T0, lead=8, kind="summary")
    assert catalog.best_product(T0, kind="summary").id == summary
    assert catalog.best_product(T0 + HALF) is None
    assert catalog.counts()["products"] == {"current": 2, "superseded": 3}


def test_rerun_of_a_cycle_replaces_its_product_and_delete_promotes_the_next(catalog):
    old = _product(catalog, T0, lead=8)
    new = _product(catalog, T0 + HALF, lead=7)
    again = _product(catalog, T0 + HALF, lead=7, path="/p/rerun.nc")
    assert again == new and catalog.product(new).path == "/p/rerun.nc" and len(catalog.products()) == 2
    assert catalog.delete_product(new)
    assert catalog.best_product(T0).id == old and catalog.product(old).superseded_by is None
    assert not catalog.delete_product(new)


def test_products_query_by_valid_time_window(catalog):
    ids = [_product(catalog, T0 + k * HALF, lead=8, valid=T0 + k * HALF) for k in range(4)]
    assert [p.id for p in catalog.products(since=T0 + HALF, until=T0 + 2 * HALF)] == ids[1:3]
    assert all(p.valid_time.tzinfo == timezone.utc for p in catalog.products())


def test_scores_are_idempotent_per_key_and_go_with_their_product(catalog):
    product = _product(catalog, T0, lead=8)
    rows = [
        {"metric": "csi", "threshold": 1.0, "value": 0.4},
        {"metric": "csi", "threshold": 1.0, "value": 0.3, "model": "baseline"},
        {"metric": "crps", "value": 0.8, "lead": 3},
        {"metric": "fss", "threshold": 5.0, "value": float("nan")},
    ]
    assert catalog.add_scores(product, "dpr", rows) == 4
    assert catalog.add_scores(product, "dpr", [{"metric": "csi", "threshold": 1.0, "value": 0.5}]) == 1
    scores = {(s.metric, s.threshold, s.lead, s.model): s.value for s in catalog.scores(product_id=product)}
    assert scores == {
        ("csi", 1.0, 8, "nrt"): 0.5, ("csi", 1.0, 8, "baseline"): 0.3, ("crps", None, 3, "nrt"): 0.8,
        ("fss", 5.0, 8, "nrt"): None,
    }
    assert [s.value for s in catalog.scores(metric="csi", model="baseline")] == [0.3]
    assert all(s.valid_time == T0 for s in catalog.scores(truth_source="dpr"))
    assert catalog.scores(since=T0 + HALF) == []
    catalog.delete_product(product)
    assert catalog.counts()["scores"] == {"rows": 0}
    with pytest.raises(LookupError):
        catalog.add_scores(product, "dpr", rows)


def test_counts_cover_every_table_and_state(catalog):
    catalog.expect_granule("imerg", "a", "V07B", T0, T0 + HALF)
    catalog.mark_bad("imerg", "a", "corrupt")
    catalog.expect_granule("imerg", "b", "V07B", T0, T0 + HALF)
    catalog.start_run(T0)
    JobQueue(catalog).enqueue("cycle", {})
    counts = catalog.counts()
    assert counts["granules"] == {"expected": 1, "downloaded": 0, "bad": 1}
    assert counts["runs"] == {"running": 1, "ok": 0, "degraded": 0, "failed": 0, "abandoned": 0}
    assert counts["jobs"] == {"queued": 1, "running": 0, "done": 0, "failed": 0}


# -- command line and bad input -------------------------------------------------------------------


def test_cli_init_then_status_counts_rows(db_url):
    env = {"NRT_DB_URL": db_url}
    status = run_nrt("catalog", "status", env=env)
    assert_one_line_error(status, "nrt catalog init")
    init = run_nrt("catalog", "init", env=env)
    assert init.returncode == 0, init.stderr
    assert "revision 0004" in init.stdout
    with Catalog.open(db_url) as catalog:
        JobQueue(catalog).enqueue("cycle", {})
        catalog.expect_granule("imerg", "a", "V07B", T0, T0 + HALF)
    status = run_nrt("catalog", "status", env=env)
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:]}
    assert lines["jobs"] == ["queued=1", "running=0", "done=0", "failed=0"]
    assert lines["granules"] == ["expected=1", "downloaded=0", "bad=0"]


def test_cli_status_of_missing_sqlite_catalog_creates_nothing(tmp_path):
    config = tmp_path / "nrt.toml"
    config.write_text(f'[general]\nworkdir = "{tmp_path / "work"}"\n')
    assert_one_line_error(run_nrt("--config", str(config), "catalog", "status"), "no catalog here")
    assert not (tmp_path / "work").exists()
    assert run_nrt("--config", str(config), "catalog", "init").returncode == 0
    assert (tmp_path / "work" / "catalog.sqlite").is_file()


def test_cli_unreachable_database_is_one_line_without_the_password():
    result = run_nrt("catalog", "init", env={"NRT_DB_URL": "postgresql://nrt:hunter2@127.0.0.1:1/nrt"})
    line = assert_one_line_error(result, "127.0.0.1", "refused")
    assert "hunter2" not in result.stderr + result.stdout and line.startswith("nrt: error: postgresql://nrt:***@")
    assert_one_line_error(run_nrt("catalog", "status", env={"NRT_DB_URL": "not a url"}), "not a database URL")


def test_cli_read_only_directory_fails_cleanly_and_writes_nothing(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        result = run_nrt("catalog", "init", env={"NRT_DB_URL": f"sqlite:///{locked / 'sub' / 'catalog.sqlite'}"})
        assert_one_line_error(result, str(locked / "sub"), "cannot create")
        with pytest.raises(CatalogError, match="cannot open or create"):
            Catalog.open(f"sqlite:///{locked / 'catalog.sqlite'}", migrate=True)
        assert list(locked.iterdir()) == []


def test_cli_read_only_catalog_file_fails_cleanly_and_keeps_its_rows(tmp_path):
    path = tmp_path / "catalog.sqlite"
    url = f"sqlite:///{path}"
    with Catalog.open(url, migrate=True) as catalog:
        JobQueue(catalog).enqueue("cycle", {}, key="keep")
    before = path.read_bytes()
    with read_only(path):
        assert_one_line_error(run_nrt("catalog", "init", env={"NRT_DB_URL": url}), "read-only")
        with pytest.raises(CatalogError, match="read-only"):
            Catalog.open(url)
    assert path.read_bytes() == before
    with Catalog.open(url) as catalog:
        assert JobQueue(catalog).job(1).key == "keep"


def test_cli_read_only_postgresql_session_fails_cleanly(pg_url):
    with fresh_pg_schema(pg_url) as url:
        with Catalog.open(url, migrate=True) as catalog:
            # Server up, schema at head, but every transaction read-only (as on a hot standby).
            parsed = resolve_url(url)
            options = parsed.query["options"] + " -cdefault_transaction_read_only=on"
            read_only_url = parsed.update_query_dict({"options": options}).set(drivername="postgresql")
            read_only_url = read_only_url.render_as_string(hide_password=False)
            with pytest.raises(CatalogError, match="read-only"):
                Catalog.open(read_only_url)
            assert_one_line_error(run_nrt("catalog", "status", env={"NRT_DB_URL": read_only_url}), "read-only")
            assert catalog.check() == "0004"


def test_catalog_from_config_uses_nrt_db_url(cfg, monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path}/from-env.sqlite"
    monkeypatch.setenv("NRT_DB_URL", url)
    from nrt import config

    with Catalog.from_config(config.from_dict({"general": {"workdir": str(tmp_path / "w")}}), migrate=True) as c:
        assert c.url == url and (tmp_path / "from-env.sqlite").is_file()
    with Catalog.from_config(cfg, migrate=True) as c:
        assert c.sqlite_path == cfg.workdir / "catalog.sqlite"


@pytest.mark.parametrize("command", [["doctor"], ["worker"], ["scheduler"], ["catalog", "status"],
                                     ["backfill", "--start", "2024-06-01T00:00", "--end", "2024-06-01T01:00"]])
def test_an_unparsable_database_url_leaks_no_part_of_its_password(command, cfg, monkeypatch, capsys):
    """An unescaped '@' in the password made SQLAlchemy's parser print the rest of the URL in a traceback."""
    from nrt.cli import main

    monkeypatch.setenv("NRT_DB_URL", "postgresql://nrt:p@ss:w0rd-SECRET@127.0.0.1:5499/db")
    monkeypatch.setenv("HOME", str(cfg.workdir))
    code = main(command)
    out, err = capsys.readouterr()
    assert "SECRET" not in out + err and "w0rd" not in out + err
    assert code != 0
    if command != ["doctor"]:  # doctor lists its findings; the others stop on the one-line error
        assert code == 2 and err.startswith("nrt: error: catalog URL (postgresql://...): not a database URL"), err


def test_a_catalog_of_revision_0002_upgrades_keeping_runs_granules_and_jobs(db_url):
    """0003 rebuilds `runs` on SQLite (a new CHECK): rows survive, and the new state and columns work."""
    from alembic import command

    old = Catalog(db_url)
    if old.sqlite_path is not None:
        old.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with old.engine.begin() as connection:
            command.upgrade(old._alembic_config(connection), "0002")
            connection.execute(text(
                "INSERT INTO runs (cycle_time, state, started_at, timings, degraded) "
                "VALUES ('2024-06-01 12:00:00', 'running', '2024-06-01 12:05:00', '{}', '[]')"
            ))
            connection.execute(text(
                "INSERT INTO granules (source, name, start_time, end_time, state, reason, attempts, created_at, updated_at) "
                "VALUES ('imerg', 'g', '2024-06-01 12:00:00', '2024-06-01 12:30:00', 'bad', 'corrupt', 3, "
                "'2024-06-01 12:05:00', '2024-06-01 12:05:00')"
            ))
        job_id = JobQueue(old).enqueue("cycle", {"t": "x"}, key="k")
        assert old.upgrade() == "0004"
        (run,) = old.runs()
        assert (run.state, run.lease_token) == ("running", None)
        granule = old.get_granule("imerg", "g")
        assert (granule.state, granule.attempts, granule.retry_after, granule.remote_tag) == ("bad", 3, None, None)
        assert JobQueue(old).claim("w").id == job_id
        old.finish_run(run.id, "abandoned", {})  # the new state passes the rebuilt CHECK
        assert old.runs()[0].state == "abandoned"
    finally:
        old.close()
