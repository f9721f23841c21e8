"""Fault-injection soak: the real daemon, for days of 30-minute cycles under an accelerated clock, with faults
injected on a seeded schedule, then an audit of every product.

What runs: a twin mirror (`nrt twin serve`) behind a fault-injecting proxy (`nrt.twin.faults`); the real
`CycleScheduler` (APScheduler on an accelerated `Clock`) enqueuing cycle jobs; two `nrt.service.worker.Worker`
processes running the real pipeline (`nrt.service.pipeline_handlers`: ingest from the mirror, pysteps nowcast,
CSGD downscaling, the publisher) with leases, heartbeats and the fenced catalog; SQLite or a throwaway
PostgreSQL cluster. To fit 1,440 cycles on two cores the domain is 0.5° square (10 x 10 cells), ensembles have
3 members and IMERG's latency is set to 1 h, so each cycle publishes three valid times (leads 0, 1, 2: every
valid time is superseded twice); DPR verification is off.

Faults (seeded):
- on the mirror: 5xx answers, stalls, resets, HTML error pages and truncated bodies on a share of the requests;
  IMERG granules and GEOS-FP initialisations published late or never;
- kill -9 of a random worker once a simulated day (restarted a second later, as systemd would);
- a model output with an all-NaN member on a share of first attempts (the publisher must refuse it);
- disk-full episodes on the product directory (a tmpfs filled up; needs root);
- a database outage of 5 simulated minutes (at least `--outage-min-s` real seconds): PostgreSQL is made
  unreachable by a TCP gate in front of it, SQLite is locked exclusively; on PostgreSQL also a server restart.

The audit counts cycles ok, degraded (with the reasons), failed, and products lost (a finished cycle's product
row or file missing), duplicated (a visible product file no row names), partial (a file that does not match its
row's checksum or does not open) and worse-superseding (a current product that is implausible, or ranked above a
smaller lead). The last four must be 0; the exit code is 1 otherwise. A progress JSON is rewritten every
simulated day, and SIGTERM/SIGINT stop the run and audit what was done.

    python scripts/soak.py --days 30 --database sqlite --json soak-sqlite.json
    python scripts/soak.py --days 30 --database postgresql --json soak-pg.json   # initdb/pg_ctl on PATH
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 6, 1, tzinfo=timezone.utc)
HALF = timedelta(minutes=30)
LEADS = (0, 1, 2)  # valid times cycle - 1 h (IMERG itself), cycle - 30 min, cycle
PRODUCT_KINDS = ("ensemble", "summary")  # every valid time of a finished cycle has both
EMAIL = "soak@example.org"  # the twin's PPS wants an e-mail as user and password
OUTAGE_MINUTES = 5.0


def settings(workdir: Path, product_dir: Path, mirror: str, lease_s: float, stall_s: float) -> dict:
    return {
        "general": {"workdir": str(workdir), "log_level": "WARNING"},
        "domain": {"west": -94.0, "south": 41.0, "east": -93.5, "north": 41.5},
        "timeline": {"imerg_latency_minutes": 60},
        "sources": {
            "imerg": {"pps_url": f"{mirror}/pps", "gesdisc_url": f"{mirror}/gesdisc/data/GPM_L3"},
            "dpr": {"enabled": False, "pps_url": f"{mirror}/pps"},
            "geosfp": {"url": f"{mirror}/nccs/datashare/gmao/geos-fp"},
            "dem": {"url": f"{mirror}/dem/nrt_twin_dem.nc"},
            # The proxy's stalls outlast the read timeout; retries and deadlines scaled to seconds-long cycles.
            "http": {"read_timeout_s": stall_s / 2, "connect_timeout_s": 2, "retries": 2, "backoff_s": 0.05,
                     "backoff_max_s": 0.2, "download_deadline_s": 4 * stall_s, "ingest_deadline_s": 8 * stall_s},
        },
        "nowcast": {"members": 3, "steps": 2, "buffer_degrees": 1.0, "max_speed_kmh": 60},
        "model": {"method": "csgd", "members": 3},
        "products": {"directory": str(product_dir), "quicklook": False, "accumulation_hours": [1], "latest_hours": 0.5},
        "catalog": {"busy_timeout_s": 2},
        "service": {"lease_seconds": lease_s, "heartbeat_seconds": lease_s / 6, "worker_poll_s": 0.1,
                    "retry_delay_s": 0.5, "max_attempts": 6, "shutdown_timeout_s": 5, "catchup_max_cycles": 2000,
                    "catchup_order": "oldest"},
        "alerts": {"areas": []},
    }


def make_config(data: dict):
    from nrt import config

    cfg = config.from_dict(data, "<soak>")
    cfg.secrets = cfg.secrets.model_copy(update={"pps_email": EMAIL, "database_url": None})
    return cfg


def broken_output(seed: int, cycle: datetime, attempt: int, rate: float) -> bool:
    return attempt == 1 and random.Random(f"{seed}:{cycle.isoformat()}").random() < rate


def publication(cfg, seed: int, late: float, missing: float):
    """When the mirror publishes each IMERG granule and GEOS-FP initialisation (`nrt.twin.faults.Publication`)."""
    from nrt.sources import geosfp, imerg
    from nrt.twin.faults import Publication

    imerg_latency = timedelta(minutes=cfg.timeline.imerg_latency_minutes)
    geosfp_latency = timedelta(hours=cfg.timeline.geosfp_latency_hours)

    def init_of(name: str) -> datetime | None:
        match = geosfp.FILE_PATTERN.fullmatch(name)
        if not match or not match["init"]:
            return None
        return datetime.strptime(match["init"], "%Y%m%d_%H").replace(tzinfo=timezone.utc)

    def due(name: str) -> datetime | None:
        granule = imerg.parse_name(name)
        if granule is not None:
            return granule.start + imerg_latency
        init = init_of(name)
        return init + geosfp_latency if init is not None else None

    def key(name: str) -> str:
        init = init_of(name)
        return f"geosfp:{init.isoformat()}" if init is not None else name

    return Publication(due, key, seed, late=late, missing=missing)


# -- worker process ------------------------------------------------------------------------------------------------

def worker_main(spec: dict) -> int:
    import numpy as np

    from nrt import downscale, logs
    from nrt.store import Catalog
    from nrt.service import load_models, pipeline_handlers
    from nrt.service.metrics import Metrics
    from nrt.service.worker import Worker, hard_exit
    from nrt.timeline import utc

    cfg = make_config(spec["config"])
    logs.setup("WARNING")
    clock = shared_clock(spec["clock"])
    catalog = Catalog(spec["url"], busy_timeout_s=cfg.catalog.busy_timeout_s)
    run_cycle = pipeline_handlers(cfg, catalog, clock=clock)["cycle"]
    broken = threading.Event()
    method_of = downscale.get_method

    def get_method(name):  # the injected model fault: member 1 all NaN, which would otherwise rank best
        method = method_of(name)
        if not broken.is_set():
            return method

        def nan_member(*args, **kwargs):
            members = np.array(method(*args, **kwargs), dtype=np.float32)
            members[1] = np.nan
            return members
        return nan_member

    downscale.get_method = get_method

    def cycle(job, models):
        if broken_output(spec["seed"], utc(job.payload["cycle_time"]), job.attempts, spec["broken_rate"]):
            broken.set()
        else:
            broken.clear()
        return run_cycle(job, models)

    worker = Worker(cfg, catalog, Metrics(), {"cycle": cycle}, load_model=lambda: load_models(cfg))
    worker.install_signal_handlers()
    worker.run()
    catalog.close()
    if worker.abandoned is not None:
        hard_exit(0)
    return 0


def shared_clock(spec: dict):
    """The harness's accelerated clock, rebuilt in another process (both read the same wall clock)."""
    from nrt.timeline import Clock

    now = spec["origin"] + (time.time() - spec["real_start"]) * spec["speed"]
    return Clock(origin=datetime.fromtimestamp(now, timezone.utc), speed=spec["speed"])


# -- databases -----------------------------------------------------------------------------------------------------

class ThrowawayPostgres:
    """A PostgreSQL cluster of its own in /tmp, so that restarts and outages disturb nobody else."""

    def __init__(self):
        import pwd

        self.directory = Path(tempfile.mkdtemp(prefix="nrt-soak-pg-"))
        self.data = self.directory / "pgdata"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l", str(self.directory / "log"), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


class ProductDisk:
    """The product directory on a tmpfs that disk-full episodes fill up; None-like when mounting is not allowed."""

    def __init__(self, path: Path, size_mib: int):
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        self.path = path
        self.mounted = done.returncode == 0
        self.filler = path / ".soak-filler"

    def fill(self) -> None:
        with open(self.filler, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * (1 << 16))
            except OSError:
                pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


class DatabaseGate:
    """A TCP relay in front of PostgreSQL: `close()` makes the database unreachable (connections cut, new ones
    refused) without touching the server, `open()` lets clients through again on the same port."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(), which else keeps it listening
            listener.close()
        with self._lock:
            links, self._links = self._links, set()
        for link in links:
            try:
                link.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            link.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._links |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._links -= {source, sink}


class SqliteLock:
    """An SQLite outage: another connection holds an exclusive lock, so every catalog call times out as busy."""

    def __init__(self, path: Path):
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def close(self) -> None:
        self._connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._connection.execute("BEGIN EXCLUSIVE")

    def open(self) -> None:
        if self._connection is not None:
            self._connection.execute("COMMIT")
            self._connection.close()
            self._connection = None


# -- harness -------------------------------------------------------------------------------------------------------

def fault_plan(cycles: int, seed: int, postgres: bool, disk: bool) -> dict[int, list[str]]:
    """Cycle index -> faults fired when the scheduler reaches it."""
    rng = random.Random(seed)
    plan: dict[int, list[str]] = collections.defaultdict(list)
    for index in range(5, cycles - 2, 48):  # one kill -9 per simulated day, at a random cycle of it
        plan[index + rng.randrange(min(43, cycles - 2 - index))].append("kill")
    if disk:
        for index in range(10, cycles - 4, 240):  # a disk-full episode every five simulated days
            plan[index + rng.randrange(4)].append("disk_full")
    if postgres:
        plan[max(2, cycles // 3)].append("db_restart")
    plan[max(3, 2 * cycles // 3)].append("db_outage")
    return dict(plan)


def spawn_worker(spec: dict, log_dir: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = open(log_dir / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(spec)],
                            env=env, stdout=log, stderr=log, cwd=REPO)


class Stop(Exception):
    """SIGTERM/SIGINT: end the run now and audit what was done."""


def soak(args) -> dict:
    from nrt.store import Catalog
    from nrt.service.demo import ensure_twin, free_port, start_mirror, twin_span
    from nrt.service.scheduler import CycleScheduler
    from nrt.twin.faults import FaultPlan, FaultProxy

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nrt-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cycles = int(round(args.days * 48))
    last = T0 + (cycles - 1) * HALF
    plan = FaultPlan(args.seed, rate=args.http_fault_rate, stall_s=args.stall_s)
    proxy = FaultProxy("http://127.0.0.1:1", plan)
    product_dir = workdir / "products"
    data = settings(workdir, product_dir, proxy.base_url, args.lease_s, args.stall_s)
    cfg = make_config(data)
    twin = Path(args.twin_dir) / f"seed{args.seed}-{cycles}cycles"
    started = time.monotonic()
    ensure_twin(cfg, twin, *twin_span(T0, last, cfg), args.seed, progress=False)
    twin_s = time.monotonic() - started
    mirror_port = free_port()
    mirror = start_mirror(twin, mirror_port)
    proxy.upstream = ("127.0.0.1", mirror_port)
    proxy.publication = publication(cfg, args.seed, args.late, args.missing)

    postgres = ThrowawayPostgres() if args.database == "postgresql" else None
    gate = DatabaseGate(postgres.port) if postgres else None
    direct_url = postgres.url if postgres else f"sqlite:///{workdir / 'catalog.sqlite'}"
    url = direct_url.replace(f":{postgres.port}/", f":{gate.port}/") if postgres else direct_url
    outage = gate or SqliteLock(workdir / "catalog.sqlite")
    disk = ProductDisk(product_dir, args.disk_mib) if args.disk_faults else None
    busy_s = cfg.catalog.busy_timeout_s
    direct = Catalog.open(direct_url, migrate=True, busy_timeout_s=busy_s)  # the harness's own view, never gated
    catalog = Catalog(url, busy_timeout_s=busy_s)  # the scheduler's, through the gate like the workers'
    faults = fault_plan(cycles, args.seed, postgres is not None, bool(disk and disk.mounted))
    speed = 1800 / args.cycle_seconds
    first_tick = T0 + timedelta(minutes=cfg.timeline.cycle_delay_minutes) - timedelta(seconds=1)
    clock_spec = {"origin": first_tick.timestamp(), "real_start": time.time() + args.warmup_s, "speed": speed}
    spec = {"config": data, "url": url, "seed": args.seed, "broken_rate": args.broken_rate, "clock": clock_spec}
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    workers = [spawn_worker(spec, logs, f"worker{i}") for i in range(2)]
    clock = shared_clock(clock_spec)
    proxy.now = clock.now
    proxy.serve_in_thread()
    fired: collections.Counter = collections.Counter()
    outage_s = max(OUTAGE_MINUTES * 60 / speed, args.outage_min_s)

    def stop(*_args):
        raise Stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    run_started = time.monotonic()
    rng = random.Random(args.seed + 1)
    done_index, disk_full_until, outage_until, next_progress = -1, None, None, 48
    interrupted, scheduler = None, None
    try:
        time.sleep(max(0.0, clock_spec["real_start"] - time.time()))
        scheduler = CycleScheduler(cfg, catalog, clock=clock, last_cycle=last).background()
        run_started = time.monotonic()
        while True:
            time.sleep(0.05)
            index = int((clock.now() - T0 - timedelta(minutes=cfg.timeline.cycle_delay_minutes)) / HALF)
            for i in range(done_index + 1, min(index, cycles - 1) + 1):
                for fault in faults.get(i, []):
                    fired[fault] += 1
                    if fault == "kill":
                        victim = rng.randrange(len(workers))
                        workers[victim].send_signal(signal.SIGKILL)
                        workers[victim].wait()
                        time.sleep(1.0)  # systemd's RestartSec
                        workers[victim] = spawn_worker(spec, logs, f"worker{victim}")
                    elif fault == "disk_full":
                        disk.fill()
                        disk_full_until = time.monotonic() + 2 * args.cycle_seconds
                    elif fault == "db_restart":
                        postgres.stop()
                        postgres.start()
                    elif fault == "db_outage":
                        outage.close()
                        outage_until = time.monotonic() + outage_s
            done_index = max(done_index, min(index, cycles - 1))
            if disk_full_until is not None and time.monotonic() >= disk_full_until:
                disk.free()
                disk_full_until = None
            if outage_until is not None and time.monotonic() >= outage_until:
                outage.open()
                outage_until = None
            if outage_until is None:
                try:
                    counts = direct.counts()["jobs"]
                except Exception:  # the database restarting: ask again on the next round
                    continue
                finished = counts["done"] + counts["failed"]
                if args.json and finished >= next_progress:
                    next_progress += 48
                    write_json(args.json, {"progress": True, "database": args.database, "cycles": cycles,
                                           "cycles_finished": finished, "wall_s": round(time.monotonic() - run_started, 1),
                                           "jobs": counts, "faults": dict(fired), "http_faults": dict(plan.counts)})
                if (done_index >= cycles - 1 and disk_full_until is None and counts["queued"] + counts["running"] == 0
                        and finished >= cycles):
                    break
            if time.monotonic() - run_started > args.timeout_s:
                interrupted = f"not finished within {args.timeout_s:g} s"
                break
    except Stop:
        interrupted = "stopped by a signal"
    wall = time.monotonic() - run_started
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    try:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        outage.open()
        result = audit(direct, cfg, product_dir, complete=interrupted is None)
    finally:
        proxy.stop()
        mirror.terminate()
        mirror.wait(timeout=10)
        catalog.close()
        direct.close()
        if disk:
            disk.free()
            disk.close()
        if gate:
            gate.close()
        if postgres:
            postgres.close()
    result.update(
        database=args.database, days=args.days, cycles=cycles, seed=args.seed, wall_s=round(wall, 1),
        twin_s=round(twin_s, 1), seconds_per_cycle=round(wall / max(1, result["cycles_finished"]), 2),
        faults=dict(fired), http_faults=dict(plan.counts), withheld_requests=sum(proxy.withheld.values()),
        outage_s=round(outage_s, 1), disk_faults=bool(disk and disk.mounted), interrupted=interrupted,
    )
    return result


def reason(flag: str) -> str:
    """A degraded flag without the time it names: `imerg_missing:2024-06-01T10:00:00Z` -> `imerg_missing`."""
    head, _, detail = flag.partition(":")
    return head if detail[:1].isdigit() else flag


def audit(catalog, cfg, product_dir: Path, complete: bool) -> dict:
    import xarray as xr

    from nrt.io import sha256_file
    from nrt.products.publish import ImplausibleProduct, check_plausible
    from nrt.service.queue import JobQueue

    jobs = {job.payload["cycle_time"]: job for job in JobQueue(catalog).jobs(kind="cycle")}
    final_runs: dict[datetime, object] = {}
    run_states: collections.Counter = collections.Counter()
    durations = []
    for run in sorted(catalog.runs(), key=lambda r: r.id):
        run_states[run.state] += 1
        if run.state in ("ok", "degraded"):
            final_runs[run.cycle_time] = run
            if run.finished_at is not None:
                durations.append((run.finished_at - run.started_at).total_seconds())
    rows = catalog.products()
    outcome: collections.Counter = collections.Counter()
    degraded: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    for key, job in jobs.items():
        if job.state == "done":
            run = final_runs.get(datetime.fromisoformat(key.replace("Z", "+00:00")))
            state = run.state if run is not None else "ok"
            outcome[state] += 1
            if job.attempts > 1:
                outcome[f"{state} after a retry"] += 1
            for flag in sorted({reason(flag) for flag in (run.degraded if run is not None else [])}):
                degraded[flag] += 1
        elif job.state == "failed":
            outcome["failed"] += 1
            failures[(job.error or "?").split(":")[0]] += 1
    by_key = {(row.kind, row.valid_time, row.cycle_time): row for row in rows}
    lost = partial = duplicated = worse = pending = 0
    for key, job in jobs.items():
        if job.state != "done":
            continue
        cycle = datetime.fromisoformat(key.replace("Z", "+00:00"))
        for lead in LEADS:
            for kind in PRODUCT_KINDS:
                row = by_key.get((kind, cycle + (lead - 2) * HALF, cycle))
                if row is None or not Path(row.path).is_file():
                    lost += 1
    registered = set()
    for row in rows:
        path = Path(row.path)
        registered.add(path)
        if path.is_file() and sha256_file(path) != row.sha256:
            partial += 1
    stac = product_dir / "stac"  # the STAC index, like latest.json, is not a product
    for path in product_dir.rglob("*"):
        if path.is_file() and not path.name.startswith(".") and path.name != "latest.json" and not path.is_relative_to(stac):
            if path not in registered:
                # A file of a cycle still to be retried (its worker killed between rename and row) is not yet an orphan:
                # the retry rewrites and registers it. Only a stopped run has such cycles.
                cycle = path.stem.rsplit("_c", 1)[-1]
                unfinished = jobs.get(f"{cycle[:4]}-{cycle[4:6]}-{cycle[6:8]}T{cycle[9:11]}:{cycle[11:13]}:00Z")
                if unfinished is not None and unfinished.state in ("queued", "running"):
                    pending += 1
                else:
                    duplicated += 1
            else:
                try:
                    xr.open_dataset(path).close()
                except Exception:
                    partial += 1
    ensembles = collections.defaultdict(list)
    for row in rows:
        if row.kind == "ensemble":
            ensembles[row.valid_time].append(row)
    for valid, candidates in ensembles.items():
        current = [row for row in candidates if row.superseded_by is None]
        if len(current) != 1 or current[0].lead != min(row.lead for row in candidates):
            worse += 1
            continue
        if Path(current[0].path).is_file():
            with xr.open_dataset(current[0].path) as ds:
                try:
                    members = ds["precipitation"].transpose("realization", ...).values  # files are (time, realization, …)
                    check_plausible(members, cfg.products, valid, current[0].cycle_time)
                except ImplausibleProduct:
                    worse += 1
    durations.sort()
    return {
        "complete": complete,
        "cycles_enqueued": len(jobs),
        "cycles_finished": sum(job.state in ("done", "failed") for job in jobs.values()),
        "outcomes": dict(outcome),
        "degraded_reasons": dict(degraded),
        "failure_reasons": dict(failures),
        "runs": dict(run_states),
        "run_seconds_median": round(durations[len(durations) // 2], 2) if durations else None,
        "products": len(rows),
        "lost": lost,
        "duplicated": duplicated,
        "files_of_unfinished_cycles": pending,
        "partial": partial,
        "worse_superseding": worse,
    }


def table(result: dict) -> str:
    state = "complete" if result["complete"] else f"INCOMPLETE ({result['interrupted']})"
    lines = [
        f"soak on {result['database']}: {result['cycles_finished']} of {result['cycles']} cycles "
        f"({result['days']:g} simulated days), {state}, seed {result['seed']}, {result['wall_s']} s wall "
        f"({result['seconds_per_cycle']} s a cycle; a run takes {result['run_seconds_median']} s, median)",
        f"  faults fired: {json.dumps(result['faults'])} (disk-full episodes {'on' if result['disk_faults'] else 'off'}; "
        f"outage {result['outage_s']} s)",
        f"  mirror faults: {json.dumps(result['http_faults'])}, {result['withheld_requests']} requests for unpublished files",
        "  cycles: " + ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())),
        "  degraded by: " + (json.dumps(result["degraded_reasons"]) if result["degraded_reasons"] else "nothing"),
        "  failed by: " + (json.dumps(result["failure_reasons"]) if result["failure_reasons"] else "nothing"),
        "  runs: " + ", ".join(f"{k} {v}" for k, v in sorted(result["runs"].items())),
        f"  products: {result['products']} rows; lost {result['lost']}, duplicated {result['duplicated']}, "
        f"partial {result['partial']}, worse-superseding {result['worse_superseding']} "
        f"(and {result['files_of_unfinished_cycles']} unregistered files of cycles still to be retried)",
    ]
    return "\n".join(lines)


def write_json(path: str, result: dict) -> None:
    from nrt.io import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(json.loads(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=30.0, help="simulated days of 30-minute cycles (default 30: 1,440)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--cycle-seconds", type=float, default=3.0, help="real seconds per simulated cycle (default 3)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--broken-rate", type=float, default=0.03, help="share of cycles whose first attempt outputs NaN")
    parser.add_argument("--http-fault-rate", type=float, default=0.03, help="share of mirror requests that meet a fault")
    parser.add_argument("--stall-s", type=float, default=1.0, help="a stalled request's silence (the read timeout is half)")
    parser.add_argument("--late", type=float, default=0.05, help="share of granules published 5-60 simulated minutes late")
    parser.add_argument("--missing", type=float, default=0.01, help="share of granules never published")
    parser.add_argument("--lease-s", type=float, default=20.0, help="job lease in real seconds (heartbeat: a sixth)")
    parser.add_argument("--outage-min-s", type=float, default=8.0,
                        help="the 5-minute database outage lasts at least this many real seconds")
    parser.add_argument("--disk-faults", action=argparse.BooleanOptionalAction, default=True,
                        help="disk-full episodes on a tmpfs product directory (needs root)")
    parser.add_argument("--disk-mib", type=int, default=512, help="size of that tmpfs")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="real seconds for the workers to start before the clock runs")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600.0)
    parser.add_argument("--workdir", help="default: a new folder in /tmp")
    parser.add_argument("--twin-dir", default=str(Path(tempfile.gettempdir()) / "nrt-soak-twin"),
                        help="where the twin mirror trees are generated, and reused by later runs")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON (and progress every simulated day)")
    args = parser.parse_args(argv)
    result = soak(args)
    print(table(result))
    if args.json:
        write_json(args.json, result)
    bad = result["lost"] + result["duplicated"] + result["partial"] + result["worse_superseding"]
    return 1 if bad or not result["complete"] else 0


if __name__ == "__main__":
    sys.exit(main())
