"""The worker against a real catalog: claim/heartbeat/complete, retries, SIGTERM, kill -9 recovery, many workers.

Worker processes are this file run as a script (see the bottom), so they are real processes with real
signals, on the same SQLite file or PostgreSQL database as the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nrt.io import atomic_path
from nrt.pipeline import CycleReport
from nrt.service.queue import JobQueue

THIS = Path(__file__).resolve()
REPO = THIS.parents[1]
CHUNK = b"0123456789abcdef" * 64


# -- handlers, shared by the in-process tests and the worker processes -------------------------------------

def log_event(out: Path, event: str, job) -> None:
    with open(out / "events.log", "a") as fh:  # O_APPEND: lines from several processes never interleave
        fh.write(f"{event} {job.id} {os.getpid()}\n")


def events(out: Path) -> list[tuple[str, int, int]]:
    path = out / "events.log"
    if not path.exists():
        return []
    return [(e, int(j), int(p)) for e, j, p in (line.split() for line in path.read_text().splitlines())]


def slow_write(out: Path, chunks: int, chunk_s: float):
    """Writes `<name>.bin` chunk by chunk through atomic_path, as product writers do."""

    def handler(job, model):
        log_event(out, "start", job)
        with atomic_path(out / f"{job.payload['name']}.bin") as tmp, open(tmp, "wb") as fh:
            for _ in range(chunks):
                fh.write(CHUNK)
                fh.flush()
                time.sleep(chunk_s)
        log_event(out, "done", job)
        return None

    return handler


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


# -- in-process ----------------------------------------------------------------------------------------------

# The pipeline's own report type, so the metrics and the worker are tested against what they really get.
Report = partial(CycleReport, datetime(2024, 6, 1, tzinfo=timezone.utc))


@dataclass
class Model:
    sha256: str = "5eed" * 16


class StageFailure(RuntimeError):
    stage = "nowcast"


@pytest.fixture
def catalog(cfg):
    from nrt.store import Catalog

    cfg.service.lease_seconds = 2.0
    cfg.service.heartbeat_seconds = 0.2
    cfg.service.worker_poll_s = 0.1
    with Catalog.from_config(cfg, migrate=True) as cat:
        yield cat


def make_worker(cfg, catalog, handlers, **kwargs):
    from nrt.service.metrics import Metrics
    from nrt.service.systemd import Notifier
    from nrt.service.worker import Worker

    return Worker(cfg, catalog, Metrics(), handlers, notifier=Notifier({}), **kwargs)


def test_claims_heartbeats_and_completes(cfg, catalog, tmp_path):
    """The job outlives its 2 s lease more than twice over; heartbeats keep a second claimer away."""
    seen, rival = {}, {}

    def compete():
        deadline = time.monotonic() + 4.3
        while time.monotonic() < deadline:
            if (job := JobQueue(catalog).claim("rival", lease_s=1.0)) is not None:
                rival["job"] = job
                return
            time.sleep(0.1)

    competitor = threading.Thread(target=compete)

    def handler(job, model):
        seen["model"] = model
        competitor.start()  # only now: the job is claimed, and stays claimed only through heartbeats
        time.sleep(4.5)
        return Report(timings={"nowcast": 1.5, "diffusion": 3.0})

    job_id = JobQueue(catalog).enqueue("cycle", {"cycle_time": "2024-06-01T12:30:00Z"}, key="cycle:2024-06-01T12:30:00Z")
    worker = make_worker(cfg, catalog, {"cycle": handler}, load_model=Model)
    assert worker.run(max_jobs=1) == 1
    competitor.join()
    assert "job" not in rival
    job = JobQueue(catalog).job(job_id)
    assert (job.state, job.attempts, job.lease_owner) == ("done", 1, None)
    assert seen["model"] == Model()
    registry = worker.metrics.registry
    assert registry.get_sample_value("nrt_cycles_total", {"outcome": "ok"}) == 1
    assert registry.get_sample_value("nrt_stage_duration_seconds_count", {"stage": "diffusion"}) == 1
    assert registry.get_sample_value("nrt_checkpoint_info", {"name": cfg.model.checkpoint, "sha256": Model().sha256}) == 1
    assert registry.get_sample_value("nrt_jobs", {"state": "queued"}) == 0


def test_failures_are_recorded_and_retried_up_to_max_attempts(cfg, catalog):
    calls = []

    def broken(job, model):
        calls.append(job.attempts)
        raise StageFailure("granule 3B-HHR-E.MS.MRG.3IMERG.20240601-S083000 is all fill")

    cfg.service.retry_delay_s = 0  # retry at once
    job_id = JobQueue(catalog).enqueue("cycle", {"cycle_time": "2024-06-01T12:30:00Z"}, key="c", max_attempts=3)
    worker = make_worker(cfg, catalog, {"cycle": broken})
    assert worker.run(drain=True) == 3
    job = JobQueue(catalog).job(job_id)
    assert calls == [1, 2, 3]
    assert (job.state, job.attempts) == ("failed", 3)
    assert job.error == "nowcast: StageFailure: granule 3B-HHR-E.MS.MRG.3IMERG.20240601-S083000 is all fill"
    registry = worker.metrics.registry
    assert registry.get_sample_value("nrt_cycles_total", {"outcome": "failed"}) == 3
    assert registry.get_sample_value("nrt_stage_failures_total", {"stage": "nowcast", "reason": "StageFailure"}) == 3


def test_a_transient_failure_succeeds_on_retry(cfg, catalog):
    def flaky(job, model):
        if job.attempts == 1:
            raise OSError("server closed the connection")
        return Report(timings={}, degraded=["geosfp:previous_forecast"])

    cfg.service.retry_delay_s = 0.5
    job_id = JobQueue(catalog).enqueue("cycle", {}, key="c", max_attempts=3)
    worker = make_worker(cfg, catalog, {"cycle": flaky})
    assert worker.run(drain=True) == 1  # the retry waits: nothing is claimable yet
    job = JobQueue(catalog).job(job_id)
    assert job.state == "queued" and (job.not_before - job.updated_at).total_seconds() == pytest.approx(0.5, abs=0.01)
    time.sleep(max(0.0, (job.not_before - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    assert worker.run(drain=True) == 2  # jobs run by this worker so far
    assert (JobQueue(catalog).job(job_id).state, JobQueue(catalog).job(job_id).attempts) == ("done", 2)
    assert worker.metrics.registry.get_sample_value("nrt_cycles_total", {"outcome": "degraded"}) == 1


def test_retry_delays_double_with_each_attempt(cfg, catalog):
    def broken(job, model):
        raise OSError("server closed the connection")

    cfg.service.retry_delay_s = 30
    job_id = JobQueue(catalog).enqueue("cycle", {}, key="c", max_attempts=3)
    worker = make_worker(cfg, catalog, {"cycle": broken})
    waits = []
    for attempt in (1, 2):
        assert worker.run(drain=True) == attempt  # one more each time: the retry waits
        job = JobQueue(catalog).job(job_id)
        waits.append(round((job.not_before - job.updated_at).total_seconds()))
        with catalog.engine.begin() as connection:  # let the time pass
            connection.exec_driver_sql("UPDATE jobs SET not_before = NULL")
    assert waits == [30, 60]
    assert worker.run(drain=True) == 3 and JobQueue(catalog).job(job_id).state == "failed"


def test_only_handled_kinds_are_claimed(cfg, catalog):
    verify_id = JobQueue(catalog).enqueue("verify", {}, key="v")
    worker = make_worker(cfg, catalog, {"cycle": lambda job, model: Report(timings={})})
    assert worker.run(drain=True) == 0
    assert JobQueue(catalog).job(verify_id).state == "queued"


# -- worker processes ----------------------------------------------------------------------------------------

class NotifyListener:
    """A systemd stand-in: collects (time, message) from the notify socket in a thread."""

    def __init__(self, directory: Path):
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._open = True
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self):
        while self._open:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in m for _, m in self.messages) < count:
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: {self.messages}"
            time.sleep(0.05)

    def close(self):
        self._open = False
        self._thread.join()
        self.sock.close()


def spawn(url: str, out: Path, notify: NotifyListener | None = None, **options) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
        env["WATCHDOG_USEC"] = "1000000"
    spec = {"url": url, "out": str(out), **options}
    return subprocess.Popen([sys.executable, str(THIS), json.dumps(spec)], env=env, cwd=REPO)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def sqlite_url(cfg, tmp_path):
    from nrt.store import Catalog

    Catalog.from_config(cfg, migrate=True).close()
    return cfg.database_url


def test_sigterm_mid_job_lets_a_short_job_finish(sqlite_url, tmp_path):
    from nrt.store import Catalog

    out = tmp_path / "out"
    out.mkdir()
    notify = NotifyListener(tmp_path)
    with Catalog.open(sqlite_url) as catalog:
        job_id = JobQueue(catalog).enqueue("write", {"name": "short"}, key="short")
        worker = spawn(sqlite_url, out, notify, chunks=6, chunk_s=0.25, shutdown_timeout_s=6)
        try:
            notify.wait_for("READY=1")
            wait_until(lambda: events(out), 30, "the job to start")
            sent = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 0
            assert time.monotonic() - sent < 6
        finally:
            worker.kill()
            notify.close()
        job = JobQueue(catalog).job(job_id)
    assert job.state == "done"
    assert (out / "short.bin").read_bytes() == CHUNK * 6
    kinds = [message.split("\n")[0] for _, message in notify.messages]
    assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1"
    pings = [t for t, message in notify.messages if message == "WATCHDOG=1"]
    assert len(pings) >= 3  # the job ran ~1.5 s with WATCHDOG_USEC = 1 s
    assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0  # never a gap systemd would kill us for


def test_sigterm_mid_job_releases_a_long_job_within_the_bound(sqlite_url, tmp_path):
    from nrt.store import Catalog

    out = tmp_path / "out"
    out.mkdir()
    notify = NotifyListener(tmp_path)
    with Catalog.open(sqlite_url) as catalog:
        job_id = JobQueue(catalog).enqueue("write", {"name": "long"}, key="long")
        worker = spawn(sqlite_url, out, notify, chunks=100, chunk_s=0.2, shutdown_timeout_s=4)
        try:
            wait_until(lambda: events(out), 30, "the job to start")
            sent = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 0
            assert time.monotonic() - sent < 4.0
        finally:
            worker.kill()
            notify.close()
        job = JobQueue(catalog).job(job_id)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)  # released: no attempt spent
    assert visible(out) == ["events.log"]
    assert notify.messages[-1][1].startswith("STOPPING=1")


def test_kill_9_mid_job_then_another_worker_finishes_it(sqlite_url, tmp_path):
    from nrt.store import Catalog

    out = tmp_path / "out"
    out.mkdir()
    options = {"chunks": 12, "chunk_s": 0.25, "lease_seconds": 1.5, "heartbeat_seconds": 0.3, "worker_poll_s": 0.2}
    with Catalog.open(sqlite_url) as catalog:
        job_id = JobQueue(catalog).enqueue("write", {"name": "product"}, key="product")
        first = spawn(sqlite_url, out, **options)
        try:
            wait_until(lambda: any(p.name.startswith(".product.bin.part-") for p in out.iterdir()), 30, "a partial file")
            time.sleep(0.5)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        assert visible(out) == ["events.log"]  # the half-written file exists only under its hidden temp name
        assert JobQueue(catalog).job(job_id).state == "running"  # until the lease runs out
        second = spawn(sqlite_url, out, max_jobs=1, **options)
        try:
            assert second.wait(timeout=40) == 0
        finally:
            second.kill()
        job = JobQueue(catalog).job(job_id)
    assert (job.state, job.attempts) == ("done", 2)
    assert visible(out) == ["events.log", "product.bin"]
    assert (out / "product.bin").read_bytes() == CHUNK * 12
    starts = [pid for event, _, pid in events(out) if event == "start"]
    assert starts == [first.pid, second.pid]
    assert [pid for event, _, pid in events(out) if event == "done"] == [second.pid]


@pytest.fixture
def pg_catalog_url(pg_url):
    """A fresh schema on the test server (via search_path), so this test neither sees nor disturbs other tables."""
    import psycopg2
    from sqlalchemy.engine import make_url

    from nrt.store import Catalog

    schema = f"nrt_service_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    Catalog.open(url, migrate=True).close()
    try:
        yield url
    finally:
        admin.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.mark.postgres
def test_several_workers_on_postgresql_do_each_job_once(pg_catalog_url, tmp_path):
    from nrt.store import Catalog

    out = tmp_path / "out"
    out.mkdir()
    listeners = [NotifyListener(tmp_path / f"w{i}") for i in range(3) if (tmp_path / f"w{i}").mkdir() is None]
    workers = [
        spawn(pg_catalog_url, out, listener, chunks=1, chunk_s=0.15, worker_poll_s=0.1, lease_seconds=30)
        for listener in listeners
    ]
    try:
        for listener in listeners:
            listener.wait_for("READY=1")
        with Catalog.open(pg_catalog_url) as catalog:
            ids = [JobQueue(catalog).enqueue("write", {"name": f"p{i:02d}"}, key=f"p{i:02d}") for i in range(24)]
            wait_until(lambda: catalog.counts()["jobs"]["done"] == len(ids), 60, "all jobs done")
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        assert [worker.wait(timeout=15) for worker in workers] == [0, 0, 0]
    finally:
        for worker in workers:
            worker.kill()
        for listener in listeners:
            listener.close()
    done = [(job, pid) for event, job, pid in events(out) if event == "done"]
    assert sorted(job for job, _ in done) == sorted(ids)  # each job exactly once, none lost
    assert len({pid for _, pid in done}) >= 2  # and the work was shared
    assert visible(out) == ["events.log", *(f"p{i:02d}.bin" for i in range(24))]


# -- worker process entry point --------------------------------------------------------------------------------

def worker_main(spec: dict) -> int:
    from nrt import config, logs
    from nrt.store import Catalog
    from nrt.service.metrics import Metrics
    from nrt.service.worker import Worker, hard_exit

    out = Path(spec.pop("out"))
    url = spec.pop("url")
    handler = slow_write(out, spec.pop("chunks"), spec.pop("chunk_s"))
    max_jobs = spec.pop("max_jobs", None)
    service = {"lease_seconds": 5.0, "heartbeat_seconds": 0.5, "worker_poll_s": 0.2, **spec}
    cfg = config.from_dict({"general": {"workdir": str(out.parent / "work")}, "service": service}, "<worker test>")
    logs.setup("INFO")
    with Catalog(url) as catalog:  # as `nrt worker` does: checked by the worker, which waits while it is down
        worker = Worker(cfg, catalog, Metrics(), {"write": handler})
        worker.install_signal_handlers()
        worker.run(max_jobs=max_jobs)
    if worker.abandoned is not None:
        hard_exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1])))
