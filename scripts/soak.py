"""Fault-injection soak: the real scheduler, two real worker processes, the real catalog and publisher, for days
of 30-minute cycles under an accelerated clock, with faults injected on a seeded schedule.

What runs for real: `CycleScheduler` (APScheduler, accelerated `Clock`) enqueuing cycle jobs; two `nrt.service.worker`
processes claiming them with leases, heartbeats and the fenced catalog; `publish_valid_time` writing and ranking
three valid times per cycle (leads 0, 1, 2, so every valid time is superseded twice); SQLite or a throwaway
PostgreSQL cluster. What stands in: the cycle's science (ingest, nowcast, diffusion) is a seeded random
ensemble per valid time, so 1,440 cycles fit on two cores. Mirror faults (5xx, stalls, resets, HTML, truncation,
late and missing granules) are exercised by tests/test_http.py, test_sources_ingest.py and test_pipeline_faults.py,
not here.

Faults (seeded): kill -9 of a random worker (restarted a second later, as systemd would); a model output with an
all-NaN member on a cycle's first attempt (the publisher must refuse it and the retry publish); disk-full
episodes on the product directory (a tmpfs filled up; needs root); on PostgreSQL a server restart and an outage.

The audit at the end counts, per cycle, ok / ok after a retry / failed (with the reason), and over the products:
lost (a finished cycle's product row or file missing), duplicated (a visible product file no row names), partial
(a file that does not match its row's checksum or does not open) and worse-superseding (a current product that is
implausible, or ranked above a smaller lead). The last four must be 0; the exit code is 1 otherwise.

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
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 6, 1, tzinfo=timezone.utc)
HALF = timedelta(minutes=30)
LEADS = (0, 1, 2)  # valid times cycle - 30 min, cycle, cycle + 30 min
MEMBERS = 4


def settings(workdir: Path, product_dir: Path, lease_s: float) -> dict:
    return {
        "general": {"workdir": str(workdir), "log_level": "WARNING"},
        # A small domain: products of a few kB, so the disk, not the CPU, is what fills up.
        "domain": {"west": -94.0, "south": 41.0, "east": -93.0, "north": 41.5},
        "products": {"directory": str(product_dir), "quicklook": False, "accumulation_hours": [1]},
        "service": {"lease_seconds": lease_s, "heartbeat_seconds": lease_s / 6, "worker_poll_s": 0.1,
                    "retry_delay_s": 0.5, "max_attempts": 6, "shutdown_timeout_s": 5, "catchup_max_cycles": 2000,
                    "catchup_order": "oldest"},
        "alerts": {"areas": []},
    }


def ensemble(cycle: datetime, lead: int, shape: tuple[int, int], broken: bool) -> np.ndarray:
    rng = np.random.default_rng([int(cycle.timestamp()) // 60, lead])
    members = rng.gamma(0.6, 1.5, (MEMBERS, *shape)).astype(np.float32)
    if broken:
        members[1] = np.nan  # a model output gone wrong: the publisher must refuse it
    return members


def broken_output(seed: int, cycle: datetime, attempt: int, rate: float) -> bool:
    return attempt == 1 and random.Random(f"{seed}:{cycle.isoformat()}").random() < rate


# -- worker process ------------------------------------------------------------------------------------------------

def worker_main(spec: dict) -> int:
    import xarray as xr

    from nrt import config, logs
    from nrt.store import Catalog
    from nrt.grids import target_grid
    from nrt.pipeline import CycleReport
    from nrt.products import publish_valid_time
    from nrt.service.metrics import Metrics
    from nrt.service.worker import Worker, hard_exit
    from nrt.timeline import utc

    cfg = config.from_dict(spec["config"], "<soak worker>")
    logs.setup("WARNING")
    grid = target_grid(cfg.domain.box())
    catalog = Catalog(spec["url"])

    def cycle(job, _model):
        cycle_time = utc(job.payload["cycle_time"])
        fenced = catalog.fenced(job.id, job.lease_token, margin_s=cfg.service.lease_seconds / 2)
        run_id = fenced.start_run(cycle_time)
        products = []
        try:
            broken = broken_output(spec["seed"], cycle_time, job.attempts, spec["broken_rate"])
            for lead in LEADS:
                valid = cycle_time + (lead - 1) * HALF
                time.sleep(random.uniform(0, spec["work_s"]))  # room for a kill -9 mid-cycle
                members = ensemble(cycle_time, lead, grid.shape, broken and lead == 0)  # would rank best
                published = publish_valid_time(
                    xr.DataArray(members, dims=("member", "lat", "lon")), cfg=cfg, catalog=fenced, grid=grid,
                    valid_time=valid, cycle_time=cycle_time, forecast_reference_time=cycle_time - HALF, lead=lead,
                    quicklook=False,
                )
                products.extend(published.products)
        except BaseException as exc:
            state = "failed" if isinstance(exc, Exception) else "abandoned"
            fenced.finish_run(run_id, state, {}, error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        fenced.finish_run(run_id, "ok", {})
        return CycleReport(cycle_time, products=tuple(products))

    worker = Worker(cfg, catalog, Metrics(), {"cycle": cycle}, recorders={"cycle": lambda _report: None})
    worker.install_signal_handlers()
    worker.run()
    catalog.close()
    if worker.abandoned is not None:
        hard_exit(0)
    return 0


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


def soak(args) -> dict:
    from nrt import config
    from nrt.store import Catalog
    from nrt.service.scheduler import Clock, CycleScheduler

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nrt-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cycles = int(args.days * 48)
    postgres = ThrowawayPostgres() if args.database == "postgresql" else None
    url = postgres.url if postgres else f"sqlite:///{workdir / 'catalog.sqlite'}"
    disk = ProductDisk(workdir / "products", args.disk_mib) if args.disk_faults else None
    product_dir = workdir / "products"
    data = settings(workdir, product_dir, args.lease_s)
    cfg = config.from_dict(data, "<soak>")
    catalog = Catalog.open(url, migrate=True)
    plan = fault_plan(cycles, args.seed, postgres is not None, bool(disk and disk.mounted))
    spec = {"config": data, "url": url, "seed": args.seed, "broken_rate": args.broken_rate, "work_s": args.work_s}
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    workers = [spawn_worker(spec, logs, f"worker{i}") for i in range(2)]
    fired: collections.Counter = collections.Counter()
    last = T0 + (cycles - 1) * HALF
    clock = Clock(origin=T0 + timedelta(minutes=cfg.timeline.cycle_delay_minutes) - timedelta(seconds=1),
                  speed=1800 / args.cycle_seconds)
    scheduler = CycleScheduler(cfg, catalog, clock=clock, last_cycle=last)
    started = time.monotonic()
    background = scheduler.background()
    rng = random.Random(args.seed + 1)
    done_index, disk_full_until, outage_until = -1, None, None
    try:
        while True:
            time.sleep(0.05)
            index = int((clock.now() - T0 - timedelta(minutes=cfg.timeline.cycle_delay_minutes)) / HALF)
            for i in range(done_index + 1, min(index, cycles - 1) + 1):
                for fault in plan.get(i, []):
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
                        postgres.stop()
                        outage_until = time.monotonic() + args.outage_s
            done_index = max(done_index, min(index, cycles - 1))
            if disk_full_until is not None and time.monotonic() >= disk_full_until:
                disk.free()
                disk_full_until = None
            if outage_until is not None and time.monotonic() >= outage_until:
                postgres.start()
                outage_until = None
            if done_index >= cycles - 1 and outage_until is None and disk_full_until is None:
                try:
                    counts = catalog.counts()["jobs"]
                except Exception:
                    continue
                if counts["queued"] + counts["running"] == 0 and counts["done"] + counts["failed"] >= cycles:
                    break
            if time.monotonic() - started > args.timeout_s:
                raise SystemExit(f"soak: not finished within {args.timeout_s:g} s")
        wall = time.monotonic() - started
    finally:
        background.shutdown(wait=False)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    try:
        result = audit(catalog, cfg, cycles, product_dir)
    finally:
        catalog.close()
        if disk:
            disk.free()
            disk.close()
        if postgres:
            postgres.close()
    result.update(database=args.database, days=args.days, seed=args.seed, wall_s=round(wall, 1), faults=dict(fired),
                  disk_faults=bool(disk and disk.mounted))
    return result


def audit(catalog, cfg, cycles: int, product_dir: Path) -> dict:
    import xarray as xr

    from nrt.io import sha256_file
    from nrt.products.publish import ImplausibleProduct, check_plausible
    from nrt.service.queue import JobQueue

    jobs = {job.payload["cycle_time"]: job for job in JobQueue(catalog).jobs(kind="cycle")}
    runs = catalog.runs()
    rows = catalog.products()
    outcome: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    for job in jobs.values():
        if job.state == "done":
            outcome["ok" if job.attempts == 1 else "ok after retry"] += 1
        else:
            outcome[job.state] += 1
            reasons[(job.error or "?").split(":")[0]] += 1
    by_key = {(row.kind, row.valid_time, row.cycle_time): row for row in rows}
    lost = partial = duplicated = worse = 0
    for key, job in jobs.items():
        if job.state != "done":
            continue
        cycle = datetime.fromisoformat(key.replace("Z", "+00:00"))
        for lead in LEADS:
            for kind in ("ensemble", "summary"):
                row = by_key.get((kind, cycle + (lead - 1) * HALF, cycle))
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
    run_states = collections.Counter(run.state for run in runs)
    return {
        "cycles": cycles,
        "cycles_enqueued": len(jobs),
        "outcomes": dict(outcome),
        "failure_reasons": dict(reasons),
        "runs": dict(run_states),
        "products": len(rows),
        "lost": lost + max(0, cycles - len(jobs)) * len(LEADS) * 2,
        "duplicated": duplicated,
        "partial": partial,
        "worse_superseding": worse,
    }


def table(result: dict) -> str:
    lines = [
        f"soak on {result['database']}: {result['cycles']} cycles ({result['days']:g} simulated days), "
        f"seed {result['seed']}, {result['wall_s']} s wall",
        f"  faults fired: {json.dumps(result['faults'])} (disk-full episodes {'on' if result['disk_faults'] else 'off: no tmpfs'})",
        "  cycles: " + ", ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())),
        "  failure reasons: " + (json.dumps(result["failure_reasons"]) if result["failure_reasons"] else "none"),
        "  runs: " + ", ".join(f"{k} {v}" for k, v in sorted(result["runs"].items())),
        f"  products: {result['products']} rows; lost {result['lost']}, duplicated {result['duplicated']}, "
        f"partial {result['partial']}, worse-superseding {result['worse_superseding']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_main(json.loads(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=30.0, help="simulated days of 30-minute cycles (default 30: 1,440)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--cycle-seconds", type=float, default=1.0, help="real seconds per simulated cycle (default 1)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--broken-rate", type=float, default=0.03, help="share of cycles whose first attempt outputs NaN")
    parser.add_argument("--work-s", type=float, default=0.1, help="most real seconds of simulated work per valid time")
    parser.add_argument("--lease-s", type=float, default=6.0, help="job lease in real seconds (heartbeat: a sixth)")
    parser.add_argument("--outage-s", type=float, default=8.0, help="real seconds of the PostgreSQL outage")
    parser.add_argument("--disk-faults", action=argparse.BooleanOptionalAction, default=True,
                        help="disk-full episodes on a tmpfs product directory (needs root)")
    parser.add_argument("--disk-mib", type=int, default=512, help="size of that tmpfs")
    parser.add_argument("--timeout-s", type=float, default=7200.0)
    parser.add_argument("--workdir", help="default: a new folder in /tmp")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = parser.parse_args(argv)
    result = soak(args)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    bad = result["lost"] + result["duplicated"] + result["partial"] + result["worse_superseding"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
