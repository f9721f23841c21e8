"""Faults around a cycle: a worker killed with SIGKILL mid-cycle, late or missing sources, no IMERG at all.

Each case serves its own copy of the shared twin (with the files that are late or lost deleted) through the
real HTTP mirror and runs the real pipeline into a fresh work directory and SQLite catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline_helpers import (
    EMAIL, T2, config_data, copy_tree, hidden_files, make_config, model_settings, sha256, twin_tree, visible_files,
    write_toml,
)
from nrt.timeline import HALF_HOUR, bridge_valid_times, isoformat
from nrt.service.queue import JobQueue

REPO = Path(__file__).resolve().parents[1]
S2 = T2 - timedelta(hours=4)  # 08:30, the newest IMERG Early granule expected at 12:30


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return twin_tree(tmp_path_factory), model_settings(tmp_path_factory)


@pytest.fixture(scope="module")
def models(world, tmp_path_factory):
    from nrt.service import load_models

    return load_models(make_config(config_data(tmp_path_factory.mktemp("model"), "http://127.0.0.1:1", world[1])))


class Served:
    """A twin tree served on 127.0.0.1 and a config pointing at it, with a catalog in `work`."""

    def __init__(self, root: Path, work: Path, model_section: dict, **sections):
        from nrt.service import open_catalog
        from nrt.twin import serve_in_thread

        self.server, base_url = serve_in_thread(root)
        self.data = config_data(work, base_url, {**model_section, **sections.pop("model", {})}, **sections)
        self.cfg = make_config(self.data)
        self.catalog = open_catalog(self.cfg, migrate=True)

    def cycle(self, cycle_time, models):
        from nrt import pipeline
        from nrt.sources.http import Client

        with Client.from_config(self.cfg) as client:
            return pipeline.run_cycle(cycle_time, self.cfg, self.catalog, client, models)

    def close(self):
        self.catalog.close()
        self.server.stop()


@pytest.fixture
def serve(world, tmp_path):
    """serve(edit=None, **config sections): copy the twin, let `edit(root)` damage it, serve it."""
    made = []

    def start(edit=None, **sections):
        root = copy_tree(world[0], tmp_path / "twin") if edit else world[0]
        if edit:
            edit(root)
        made.append(Served(root, tmp_path / "work", world[1], **sections))
        return made[-1]

    yield start
    for served in made:
        served.close()


def imerg_granules(root: Path, start) -> list[Path]:
    """The PPS and GES DISC copies of the IMERG Early granule starting at `start`."""
    stamp = f"{start:%Y%m%d}-S{start:%H%M%S}"
    found = [p for p in (root / "pps").rglob("3B-HHR-E*") if stamp in p.name]
    found += [p for p in (root / "gesdisc").rglob("3B-HHR-E*") if stamp in p.name]
    assert len(found) == 2, found
    return found


def test_missing_newest_imerg_granule_nowcasts_from_the_previous_one_with_one_more_lead(serve, models):
    served = serve(lambda root: [p.unlink() for p in imerg_granules(root, S2)])
    report = served.cycle(T2, models)
    flag = f"imerg_missing:{isoformat(S2)}"
    assert report.degraded == (flag,)
    assert report.imerg_start == S2 - HALF_HOUR
    ensembles = [p for p in report.products if p.kind == "ensemble"]
    assert [p.valid_time for p in ensembles] == bridge_valid_times(S2, T2)  # every valid time is still made
    assert [p.lead for p in ensembles] == list(range(1, 10))  # ... each one lead further from the granule used
    with xr.open_dataset(ensembles[0].path) as ds:
        assert ds.attrs["degraded"] == flag
        assert ds["forecast_reference_time"].values == np.datetime64("2024-06-01T08:00")  # the granule used
        assert ds["time"].values[0] == np.datetime64("2024-06-01T08:30")
    assert [(r.state, r.degraded) for r in served.catalog.runs()] == [("degraded", [flag])]


def geosfp_forecast(root: Path, init) -> Path:
    return root / "nccs" / "datashare" / "gmao" / "geos-fp" / "forecast" / f"{init:Y%Y/M%m/D%d/H%H}"


def test_missing_newest_geosfp_forecast_falls_back_to_the_previous_one(serve, models):
    # With a 30 min publication latency the 12:30 cycle wants the 12:00 forecast for its last hours.
    init = T2.replace(minute=0)
    served = serve(lambda root: shutil.rmtree(geosfp_forecast(root, init)), timeline={"geosfp_latency_hours": 0.5})
    report = served.cycle(T2, models)
    assert report.degraded == ("geosfp_previous_forecast",)  # and no hour went without GEOS-FP
    assert len([p for p in report.products if p.kind == "ensemble"]) == 9
    used = [g.name for g in served.catalog.granules("geosfp", state="downloaded")]
    assert len(used) == 2 * 6 and all(".20240601_06+" in name for name in used)  # hours 08:30 ... 13:30
    assert report.sources["geosfp"] == T2 + HALF_HOUR  # the hour stamped 13:30 starts at 13:00


def test_without_any_geosfp_products_are_still_written(serve, models):
    served = serve(lambda root: shutil.rmtree(geosfp_forecast(root, T2).parents[3]))
    report = served.cycle(T2, models)
    assert report.degraded == ("geosfp_missing",)
    ensembles = [p for p in report.products if p.kind == "ensemble"]
    assert [p.lead for p in ensembles] == list(range(9))
    assert "geosfp" not in report.sources
    with xr.open_dataset(ensembles[-1].path) as ds:
        assert ds.attrs["degraded"] == "geosfp_missing"


def test_without_dpr_there_is_no_verification_and_no_failure(serve, models):
    served = serve(lambda root: [p.unlink() for p in (root / "pps" / "radar").rglob("2A.GPM.DPR*")])
    report = served.cycle(T2, models)
    assert report.degraded == () and report.scores == ()
    assert "verify" not in report.timings and "dpr" not in report.sources
    assert set(report.sources) == {"imerg", "geosfp", "dem"} and report.sources["dem"] is None  # static: no granule time
    assert len(report.products) == 46  # 9 valid times x (ensemble, summary, 3 accumulations) + 1 quicklook
    assert served.catalog.scores() == []


def test_without_the_dem_the_cycle_is_flagged_and_no_dem_success_is_reported(serve, models):
    served = serve(lambda root: (root / "dem" / "nrt_twin_dem.nc").unlink())
    report = served.cycle(T2, models)
    assert "dem_missing" in report.degraded
    assert set(report.sources) == {"imerg", "geosfp", "dpr"}  # nrt_source_last_success_timestamp_seconds{source="dem"} stays
    assert len([p for p in report.products if p.kind == "ensemble"]) == 9


def test_no_imerg_at_all_fails_the_cycle_and_logs_a_failed_run(serve, models):
    from nrt.acquire import CycleFailed

    served = serve(lambda root: [p.unlink() for p in (root / "pps" / "imerg").rglob("3B-HHR-E*")])
    with pytest.raises(CycleFailed) as failure:
        served.cycle(T2, models)
    assert failure.value.stage == "ingest"
    [run] = served.catalog.runs()
    assert run.state == "failed" and run.error.startswith("CycleFailed: ingest: no IMERG Early granule")
    assert served.catalog.products() == []


def test_csgd_method_writes_the_same_products_marked_csgd(serve):
    from nrt.service import load_models

    served = serve(model={"method": "csgd"})
    models = load_models(served.cfg)
    report = served.cycle(T2, models)
    assert report.downscale_method == "csgd" and report.degraded == () and report.downscale_fallbacks == ()
    assert Counter(p.kind for p in report.products) == {
        "ensemble": 9, "summary": 9, "accumulation_1h": 9, "accumulation_3h": 9, "accumulation_6h": 9, "quicklook": 1,
    }
    ensembles = [p for p in report.products if p.kind == "ensemble"]
    assert [p.lead for p in ensembles] == list(range(9))
    for product in ensembles:
        assert served.catalog.product(product.id).checkpoint == models.csgd_sha256
        check_csgd_product(product.path, served.cfg.model.members, degraded="none")
    assert [(r.state, r.degraded) for r in served.catalog.runs()] == [("ok", [])]


def test_unloadable_checkpoint_falls_back_to_csgd_flags_and_counts_it(serve, tmp_path):
    from nrt.service import load_models
    from nrt.service.metrics import Metrics

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")  # and no JSON sidecar
    served = serve(model={"checkpoint": str(broken)})
    models = load_models(served.cfg)  # the worker starts anyway
    report = served.cycle(T2, models)
    flag = "downscale_fallback:checkpoint_unloadable"
    assert report.downscale_method == "csgd" and report.degraded == (flag,)
    assert report.downscale_fallbacks == ("checkpoint_unloadable",)
    assert [(r.state, r.degraded) for r in served.catalog.runs()] == [("degraded", [flag])]
    ensembles = [p for p in report.products if p.kind == "ensemble"]
    assert len(ensembles) == 9
    for product in ensembles:
        check_csgd_product(product.path, served.cfg.model.members, degraded=flag)
    metrics = Metrics()
    assert metrics.record_cycle(report) == "degraded"
    registry = metrics.registry
    assert registry.get_sample_value("nrt_downscale_fallback_total", {"reason": "checkpoint_unloadable"}) == 1
    assert registry.get_sample_value("nrt_cycles_total", {"outcome": "degraded"}) == 1


def check_csgd_product(path, members: int, degraded: str) -> None:
    """A whole CF ensemble file written by the CSGD method: marked, finite, non-negative, following its input."""
    with xr.open_dataset(path) as ds:
        assert ds.attrs["method"] == "csgd" and ds.attrs["degraded"] == degraded
        assert ds.attrs["Conventions"].startswith("CF-")
        precip = ds["precipitation"]
        assert precip.dims == ("time", "realization", "lat", "lon") and precip.shape[1] == members
        values = precip.values[0]
        assert np.isfinite(values).all() and (values >= 0).all()
        assert not np.array_equal(values[0], values[1])
        given = ds["input_precipitation"].values[0]
        wet, dry = given > 1.0, given < 0.01
        if wet.sum() >= 10 and dry.sum() >= 10:  # the members follow the rain they were drawn from
            assert values[:, wet].mean() > 2 * values[:, dry].mean()


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_kill_9_mid_cycle_leaves_no_visible_partial_product_and_the_next_worker_finishes(serve, models, tmp_path):
    from nrt.service import pipeline_handlers
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import CycleScheduler
    from nrt.service.worker import Worker

    lease = {"lease_seconds": 3.0, "heartbeat_seconds": 0.5, "worker_poll_s": 0.2}
    served = serve(service=lease)
    catalog, cfg = served.catalog, served.cfg
    job_id = CycleScheduler(cfg, catalog).enqueue(T2)
    conf = write_toml(tmp_path / "worker.toml", served.data)
    env = {**os.environ, "NRT_PPS_EMAIL": EMAIL, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "victim.log"
    with open(log, "wb") as err:
        victim = subprocess.Popen(
            [sys.executable, "-m", "nrt.cli", "--config", str(conf), "worker", "--max-jobs", "1", "--metrics-port", "0"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        wait_for(lambda: catalog.products() or victim.poll() is not None, 120, "the first registered product")
        assert victim.poll() is None, log.read_text()[-2000:]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)

    # At the crash: the job is still leased to the dead worker, and every registered product is a whole file.
    job = JobQueue(catalog).job(job_id)
    assert job.state == "running" and job.lease_owner.split(":")[1] == str(victim.pid)
    assert 0 < len(catalog.products()) < 46  # killed mid-cycle
    assert JobQueue(catalog).claim("probe", lease_s=1) is None  # nobody may take it before the lease runs out
    for row in catalog.products():
        assert sha256(Path(row.path)) == row.sha256
    for path in visible_files(cfg.product_dir):
        if path.suffix == ".nc":
            xr.open_dataset(path).close()  # complete: a renamed temp file, never a half-written one

    metrics = Metrics()
    rescuer = Worker(cfg, catalog, metrics, pipeline_handlers(cfg, catalog), load_model=lambda: models)
    assert rescuer.run(max_jobs=1) == 1
    job = JobQueue(catalog).job(job_id)
    assert job.state == "done" and job.attempts == 2 and job.lease_owner in (None, rescuer.owner)

    rows = catalog.products()
    assert len(rows) == 46 and {r.cycle_time for r in rows} == {T2}
    for row in rows:
        assert sha256(Path(row.path)) == row.sha256  # the catalog never points at a missing or stale file
    registered = {Path(r.path) for r in rows} | {cfg.product_dir / "latest.json"}
    stac = cfg.product_dir / "stac"  # the STAC index, like latest.json, is not a product
    assert {p for p in visible_files(cfg.product_dir) if not p.is_relative_to(stac)} == registered
    # Only the killed process's temporary files may remain (hidden; retention sweeps them), none of ours.
    leftovers = hidden_files(cfg.product_dir)
    assert all(f".part-{victim.pid}-" in p.name for p in leftovers), leftovers
    latest = (cfg.product_dir / "latest.json").read_text()
    assert not any(p.name in latest for p in leftovers)
    assert json.loads(latest)["newest_valid_time"] == isoformat(T2)
    assert [r.state for r in catalog.runs()] == ["ok", "abandoned"]  # the killed attempt, closed by the rescuer


def test_cycle_command_runs_the_cycle_of_a_time_and_prints_a_json_report(serve, capsys):
    from nrt.cli import build_parser
    from nrt.errors import ConfigError

    served = serve()
    args = build_parser().parse_args(["cycle", "--time", "2024-06-01T12:10Z", "--json"])  # floors to 12:00
    assert args.handler(args, served.cfg) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cycle_time"] == "2024-06-01T12:00:00Z" and report["imerg_start"] == "2024-06-01T08:00:00Z"
    assert report["degraded"] == [] and report["nowcast_method"] == "steps"
    assert len(report["products"]) == 46 and all(Path(p).is_file() for p in report["products"])
    assert {"ingest", "nowcast", "downscale", "products"} <= set(report["timings_s"])

    args = build_parser().parse_args(["cycle", "--time", "yesterday"])
    with pytest.raises(ConfigError, match=r"^--time: not an ISO 8601 time") as bad:
        args.handler(args, served.cfg)
    assert "\n" not in str(bad.value)


def test_an_interrupted_cycle_closes_its_run_as_abandoned(serve, models, monkeypatch):
    """Ctrl-C (or SIGTERM in `nrt cycle`) used to leave the run `running` for ever."""
    from nrt import downscale

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(downscale.METHODS, models.method, interrupted)
    served = serve()
    with pytest.raises(KeyboardInterrupt):
        served.cycle(T2, models)
    (run,) = served.catalog.runs()
    assert run.state == "abandoned" and run.finished_at is not None and "KeyboardInterrupt" in run.error
