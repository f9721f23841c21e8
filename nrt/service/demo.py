"""`nrt demo`: the whole system, offline, on a synthetic twin served like the real servers.

It generates a twin window, serves it with `nrt twin serve` on localhost, and runs the real scheduler and
worker (the same classes `nrt run` uses) for N cycles on an accelerated clock, with the shipped demo
checkpoint and an SQLite catalog in the work directory. Nothing here is special-cased in the pipeline:
the demo differs from production only in its configuration.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import tomli_w

from nrt.errors import NrtError
from nrt.timeline import HALF_HOUR, floor_to, geosfp_hours_for, isoformat

log = logging.getLogger("nrt.demo")

#: A mid-April night over Iowa: the season of the demo checkpoint's training twin (2024-04-01..10), on days it
#: was not trained on, so its input guard finds the twin's GEOS-FP within the training range. The twin's DPR
#: granule 00:32:58-01:02:57 UTC crosses the domain (about 4200 footprints), so the cycles from 01:00 on
#: verify against it.
FIRST_CYCLE = datetime(2024, 4, 19, 0, 30, tzinfo=timezone.utc)
DEMO_EMAIL = "demo@example.org"  # the twin's PPS mirror wants an e-mail as user and password, like the real one
CLOCK_SPEED = 180.0  # simulated seconds per real second: a new cycle every 10 s of real time


@dataclass
class DemoResult:
    workdir: Path
    config_path: Path
    product_dir: Path
    cycles: list[datetime]
    catalog_counts: dict[str, dict[str, int]]
    products: list  # catalog product rows (kind, cycle_time, path, size, ...)
    quicklook: Path | None
    metrics_sample: list[str] = field(default_factory=list)
    seconds: float = 0.0
    method: str = "diffusion"  # the downscaling method the cycles ran (model.method)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_config(base, workdir: Path, port: int):
    """The base config pointed at the work directory, the twin mirror on `port`, SQLite and the CPU/GPU at hand."""
    url = f"http://127.0.0.1:{port}"
    cfg = base.model_copy(deep=True)
    cfg.general.workdir = workdir
    cfg.catalog.url = "sqlite:///{workdir}/catalog.sqlite"
    cfg.sources.imerg.server = "pps"
    cfg.sources.imerg.pps_url = f"{url}/pps"
    cfg.sources.imerg.gesdisc_url = f"{url}/gesdisc/data/GPM_L3"
    cfg.sources.dpr.pps_url = f"{url}/pps"
    cfg.sources.geosfp.url = f"{url}/nccs/datashare/gmao/geos-fp"
    cfg.sources.dem.url = f"{url}/dem/nrt_twin_dem.nc"
    cfg.service.catchup_order = "oldest"  # publish oldest first so accumulations build up in order
    cfg.service.metrics_port = 0
    cfg.secrets = base.secrets.model_copy(update={"pps_email": DEMO_EMAIL, "database_url": None})
    return cfg


def write_config(cfg, path: Path) -> Path:
    """The config the demo used, as TOML that `nrt --config` reads back (secrets are never written)."""
    from nrt.io import atomic_path

    data = cfg.model_dump(mode="json", exclude_none=True)
    with atomic_path(path) as tmp:
        tmp.write_text("# Written by `nrt demo`: the configuration it ran with.\n" + tomli_w.dumps(data))
    return path


def twin_span(first: datetime, last: datetime, cfg) -> tuple[datetime, datetime]:
    """Enough twin for every cycle: IMERG from the first motion window, GEOS-FP from its forecast start.

    The last cycle's newest valid time needs the GEOS-FP hour stamped after it (HH:30), and the twin
    writes that hour once it has simulated the half-hour starting at the stamp.
    """
    latency = timedelta(minutes=cfg.timeline.imerg_latency_minutes)
    earliest = first - latency - cfg.timeline.motion_granules * HALF_HOUR
    return floor_to(earliest, timedelta(hours=6)), geosfp_hours_for(last)[1] + HALF_HOUR


def ensure_twin(cfg, root: Path, start: datetime, end: datetime, seed: int, progress: bool) -> None:
    """Generate the twin window unless `root` already holds this exact one (a rerun reuses it)."""
    from tqdm import tqdm

    from nrt.twin.generate import generate, load_manifest, work_units
    from nrt.twin.spec import spec_for_config

    spec = spec_for_config(cfg, start, end, seed)
    if (root / "twin.json").is_file():
        try:
            if load_manifest(root).get("spec") == spec.to_dict():
                log.info("reusing the twin in %s", root)
                return
        except NrtError:
            pass
        shutil.rmtree(root)
    with tqdm(total=work_units(spec), desc="twin", unit="step", disable=not progress, file=sys.stderr) as bar:
        generate(spec, root, bar.update)


def start_mirror(root: Path, port: int, timeout_s: float = 30.0) -> subprocess.Popen:
    """`nrt twin serve` in a child process; returns once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrt.cli", "--log-level", "WARNING", "twin", "serve", "--root", str(root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NrtError(f"nrt twin serve exited with code {proc.returncode} before answering on port {port}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/dem/", timeout=2).close()
            return proc
        except urllib.error.HTTPError:
            return proc  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise NrtError(f"nrt twin serve did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")


def fresh_state(cfg) -> None:
    """A demo run starts from an empty catalog and product tree (the twin and DEM cache are kept)."""
    for path in cfg.workdir.glob("catalog.sqlite*"):
        path.unlink()
    for folder in (cfg.product_dir, cfg.data_dir):
        if folder.exists():
            shutil.rmtree(folder)


def metrics_sample(registry) -> list[str]:
    from prometheus_client import generate_latest

    wanted = (
        "nrt_cycles_total", "nrt_cycle_last_success_timestamp_seconds", "nrt_products_written_total",
        "nrt_source_newest_granule_timestamp_seconds", "nrt_stage_duration_seconds_sum",
        "nrt_last_product_mean_rain_rate_mm_per_hour", "nrt_last_product_max_exceedance_probability",
        "nrt_precipitation_alert_probability", "nrt_verification_overpasses_total", "nrt_verification_crpss",
        "nrt_downscale_fallback_total",
    )
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if line.startswith(wanted)]


def run_demo(base_cfg, workdir: Path, cycles: int = 3, seed: int = 20250101, progress: bool = True) -> DemoResult:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from nrt.service import load_models, open_catalog, pipeline_handlers
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import CycleScheduler
    from nrt.service.worker import Worker
    from nrt.timeline import Clock, bridge_valid_times, newest_imerg_start

    if cycles < 1:
        raise NrtError("--cycles must be at least 1")
    started = time.monotonic()
    workdir = workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = demo_config(base_cfg, workdir, port)
    first = FIRST_CYCLE
    last = first + (cycles - 1) * HALF_HOUR
    ensure_twin(cfg, workdir / "twin", *twin_span(first, last, cfg), seed, progress)
    fresh_state(cfg)
    config_path = write_config(cfg, workdir / "config.toml")

    mirror = start_mirror(workdir / "twin", port)
    try:
        catalog = open_catalog(cfg, migrate=True)
        metrics = Metrics()
        delay = timedelta(minutes=cfg.timeline.cycle_delay_minutes)
        clock = Clock(first + delay, speed=CLOCK_SPEED)  # the first tick is due now and enqueues `first`
        steps_per_cycle = len(bridge_valid_times(newest_imerg_start(first, timedelta(minutes=cfg.timeline.imerg_latency_minutes)), first))
        # Log lines go through tqdm.write while the bar is shown, so they print above it instead of through it.
        redirect = logging_redirect_tqdm([logging.getLogger("nrt")]) if progress else contextlib.nullcontext()
        with redirect, tqdm(total=cycles * steps_per_cycle, desc="demo", unit="valid time", disable=not progress,
                            file=sys.stderr) as bar:

            def tell(message: str) -> None:
                bar.set_postfix_str(message)
                if message.startswith("valid time"):
                    bar.update(1)

            worker = Worker(cfg, catalog, metrics, pipeline_handlers(cfg, catalog, clock=clock, progress=tell),
                            load_model=lambda: load_models(cfg))
            scheduler = CycleScheduler(cfg, catalog, metrics, clock=clock, last_cycle=last).background()
            try:
                worker.run(max_jobs=cycles)
            finally:
                scheduler.shutdown(wait=False)
        products = sorted(catalog.products(), key=lambda row: (row.cycle_time, row.valid_time, row.kind))
        quicklooks = [row.path for row in products if row.kind == "quicklook"]
        quicklook = None
        if quicklooks:
            quicklook = workdir / "quicklook.png"
            shutil.copyfile(quicklooks[-1], quicklook)
        return DemoResult(
            workdir, config_path, cfg.product_dir, [first + k * HALF_HOUR for k in range(cycles)], catalog.counts(), products,
            quicklook, metrics_sample(metrics.registry), time.monotonic() - started, cfg.model.method,
        )
    finally:
        mirror.terminate()
        mirror.wait(timeout=10)


def describe(result: DemoResult) -> str:
    lines = [
        f"nrt demo: {len(result.cycles)} cycles ({isoformat(result.cycles[0])} .. {isoformat(result.cycles[-1])}) "
        f"in {result.seconds:.0f} s with {result.method}, work directory {result.workdir}",
        f"  config used: {result.config_path}",
        f"  products ({len(result.products)} files, {sum(row.size for row in result.products) / 1e6:.1f} MB):",
    ]
    by_cycle: dict[datetime, Counter] = {}
    for row in result.products:
        by_cycle.setdefault(row.cycle_time, Counter())[row.kind] += 1
    for cycle_time, kinds in by_cycle.items():
        size = sum(row.size for row in result.products if row.cycle_time == cycle_time)
        made = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        lines.append(f"    cycle {isoformat(cycle_time)}: {made} ({size / 1e6:.1f} MB)")
    lines.append(f"    under {result.product_dir}")
    lines.append("  catalog:")
    for table, states in result.catalog_counts.items():
        lines.append(f"    {table}: " + ", ".join(f"{state} {n}" for state, n in sorted(states.items())))
    lines.append("  metrics sample:")
    lines.extend(f"    {line}" for line in result.metrics_sample)
    if result.quicklook:
        lines.append(f"  quicklook: {result.quicklook}")
    return "\n".join(lines)
