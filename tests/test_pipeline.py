"""Two cycles on the twin through the HTTP mirror, run by the real scheduler and worker on an accelerated clock.

One module fixture runs the service once (CycleScheduler in a background thread enqueues the 12:00 and
12:30 cycles, a Worker claims and runs them with the real pipeline, metrics served over HTTP); the tests
then check what it left: products, catalog, CF files, metrics, and finally that rerunning a cycle
changes nothing.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from prometheus_client.parser import text_string_to_metric_families

from pipeline_helpers import (
    MEMBERS, T1, T2, config_data, ensemble_values, hidden_files, make_config, model_settings, sha256, twin_tree,
    visible_files,
)
from nrt.grids import target_grid
from nrt.timeline import HALF_HOUR, bridge_valid_times
from nrt.service.queue import JobQueue

S1, S2 = T1 - timedelta(hours=4), T2 - timedelta(hours=4)  # newest IMERG Early granule of each cycle
CLOCK_SPEED = 600.0  # a cycle every 3 s of real time


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(twin tree, `[model]` settings), shared with the other pipeline and demo test modules."""
    return twin_tree(tmp_path_factory), model_settings(tmp_path_factory)


@pytest.fixture(scope="module")
def service_run(tmp_path_factory, world):
    """Scheduler + worker + metrics over the twin mirror for the cycles T1 and T2."""
    from nrt.service import load_models, open_catalog, pipeline_handlers
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import Clock, CycleScheduler
    from nrt.service.worker import Worker
    from nrt.twin import serve_in_thread

    root, model = world
    mirror, base_url = serve_in_thread(root)
    work = tmp_path_factory.mktemp("service")
    cfg = make_config(config_data(work, base_url, model))
    catalog = open_catalog(cfg, migrate=True)
    metrics = Metrics()
    metrics_server, port = metrics.start_http("127.0.0.1", 0)
    models = load_models(cfg)
    clock = Clock(T1 + timedelta(minutes=cfg.timeline.cycle_delay_minutes), speed=CLOCK_SPEED)
    started = time.time()
    worker = Worker(cfg, catalog, metrics, pipeline_handlers(cfg, catalog, clock=clock), load_model=lambda: models)
    scheduler = CycleScheduler(cfg, catalog, metrics, clock=clock, last_cycle=T2).background()
    try:
        done = worker.run(max_jobs=2)
    finally:
        scheduler.shutdown(wait=False)
    finished = time.time()
    yield SimpleNamespace(
        cfg=cfg, catalog=catalog, port=port, models=models, done=done, started=started, finished=finished,
        base_url=base_url,
    )
    metrics_server.shutdown()
    mirror.stop()
    catalog.close()


def products_of(catalog, cycle_time, kind="ensemble"):
    return [p for p in catalog.products(kind=kind) if p.cycle_time == cycle_time]


def test_two_cycles_run_through_scheduler_and_worker_and_publish_every_valid_time(service_run):
    catalog = service_run.catalog
    assert service_run.done == 2
    jobs = JobQueue(catalog).jobs(kind="cycle")
    assert sorted(j.payload["cycle_time"] for j in jobs) == ["2024-06-01T12:00:00Z", "2024-06-01T12:30:00Z"]
    assert all(j.state == "done" and j.attempts == 1 for j in jobs)
    for cycle, newest in ((T1, S1), (T2, S2)):
        ensembles = products_of(catalog, cycle)
        assert [p.valid_time for p in ensembles] == bridge_valid_times(newest, cycle)  # S ... T: 9 valid times
        assert [p.lead for p in ensembles] == list(range(9))
        assert all(p.members == MEMBERS for p in ensembles)
        assert len(products_of(catalog, cycle, "summary")) == 9
        assert [p.valid_time for p in products_of(catalog, cycle, "quicklook")] == [cycle]
    runs = catalog.runs()
    assert sorted((r.cycle_time, r.state, tuple(r.degraded)) for r in runs) == [(T1, "ok", ()), (T2, "ok", ())]
    assert {"ingest", "nowcast", "downscale", "products"} <= set(runs[0].timings)


def test_catalog_rows_point_at_whole_files_and_the_newer_cycle_supersedes(service_run):
    catalog, cfg = service_run.catalog, service_run.cfg
    rows = catalog.products()
    assert len(rows) == 2 * (9 * (2 + 3) + 1)  # per cycle: 9 ensembles, summaries and 3 accumulation windows each, 1 quicklook
    for row in rows:
        path = Path(row.path)
        assert path.is_file() and path.is_relative_to(cfg.product_dir)
        assert row.size == path.stat().st_size and row.sha256 == sha256(path)
        assert row.checkpoint == service_run.models.sha256
    registered = {Path(r.path) for r in rows} | {cfg.product_dir / "latest.json"}
    stac = cfg.product_dir / "stac"  # the STAC index, like latest.json, is not a product
    assert {p for p in visible_files(cfg.product_dir) if not p.is_relative_to(stac)} == registered
    assert hidden_files(cfg.product_dir) == []  # no temporary file survives a clean run

    old = {p.valid_time: p for p in products_of(catalog, T1)}
    new = {p.valid_time: p for p in products_of(catalog, T2)}
    shared = sorted(set(old) & set(new))
    assert shared == [S2 + k * HALF_HOUR for k in range(8)]  # 08:30 ... 12:00
    for valid in shared:
        assert new[valid].lead == old[valid].lead - 1
        assert catalog.best_product(valid).id == new[valid].id
        assert catalog.product(old[valid].id).superseded_by == new[valid].id
        assert catalog.product(new[valid].id).superseded_by is None
    only_old, only_new = S1, T2
    assert catalog.best_product(only_old).id == old[only_old].id  # nothing newer covers 08:00
    assert catalog.best_product(only_new).id == new[only_new].id

    latest = json.loads((cfg.product_dir / "latest.json").read_text())
    assert latest["newest_valid_time"] == "2024-06-01T12:30:00Z"
    entry = latest["valid_times"]["2024-06-01T10:00:00Z"]["ensemble"]
    assert entry["cycle_time"] == "2024-06-01T12:30:00Z" and entry["lead"] == 3
    assert (cfg.product_dir / entry["path"]).is_file()


def test_products_are_cf_ensembles_of_the_configured_members_at_005_degrees(service_run):
    cfg, catalog = service_run.cfg, service_run.catalog
    grid = target_grid(cfg.domain.box())
    row = next(p for p in products_of(catalog, T2) if p.lead == 3)
    with xr.open_dataset(row.path) as ds:
        precip = ds["precipitation"]
        assert precip.dims == ("time", "realization", "lat", "lon")  # the file layout
        assert precip.shape == (1, MEMBERS, *grid.shape) == (1, MEMBERS, 30, 40)
        assert precip.attrs["units"] == "mm h-1" and precip.attrs["standard_name"] == "lwe_precipitation_rate"
        assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
        np.testing.assert_allclose(np.diff(ds["lat"].values), 0.05, atol=1e-9)  # ascending, 0.05°
        np.testing.assert_allclose(np.diff(ds["lon"].values), 0.05, atol=1e-9)
        np.testing.assert_allclose(ds["lat"].values[[0, -1]], [41.025, 42.475])
        assert ds.attrs["Conventions"].startswith("CF-")
        assert ds["time"].values[0] == np.datetime64("2024-06-01T10:00")
        assert ds["forecast_reference_time"].values == np.datetime64("2024-06-01T08:30")
        assert ds.attrs["degraded"] == "none" and ds.attrs["method"] == "diffusion"
        assert ds.attrs["checkpoint_sha256"] == service_run.models.sha256
        assert ds.attrs["nowcast_method"] == "steps"
        values = precip.values
        assert np.isfinite(values).all() and (values >= 0).all()
        assert not np.array_equal(values[:, 0], values[:, 1])  # members differ
        assert "input_precipitation" in ds  # the verification baseline travels with the ensemble


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families, family, name, **labels) -> float:
    matches = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, (name, labels, families[family].samples)
    return matches[0]


def test_metrics_scraped_over_http_match_what_the_run_did(service_run):
    families = scrape(service_run.port)
    catalog = service_run.catalog
    assert sample(families, "nrt_cycles", "nrt_cycles_total", outcome="ok") == 2
    assert sample(families, "nrt_cycles", "nrt_cycles_total", outcome="degraded") == 0
    assert sample(families, "nrt_cycles", "nrt_cycles_total", outcome="failed") == 0
    last = sample(families, "nrt_cycle_last_success_timestamp_seconds", "nrt_cycle_last_success_timestamp_seconds")
    assert service_run.started <= last <= service_run.finished

    rows = catalog.products()
    for kind, count in (("ensemble", 18), ("summary", 18), ("quicklook", 2)):
        assert sample(families, "nrt_products_written", "nrt_products_written_total", kind=kind) == count
        written = sum(r.size for r in rows if r.kind == kind)
        assert sample(families, "nrt_product_bytes", "nrt_product_bytes_total", kind=kind) == written

    newest = "nrt_source_newest_granule_timestamp_seconds"
    assert sample(families, newest, newest, source="imerg") == S2.timestamp()
    assert sample(families, newest, newest, source="geosfp") == datetime(2024, 6, 1, 13, tzinfo=timezone.utc).timestamp()
    assert sample(families, newest, newest, source="dpr") == datetime(2024, 6, 1, 12, 2, 57, tzinfo=timezone.utc).timestamp()
    fresh = "nrt_source_last_success_timestamp_seconds"
    for source in ("imerg", "geosfp", "dem", "dpr"):
        assert service_run.started <= sample(families, fresh, fresh, source=source) <= service_run.finished

    count = "nrt_stage_duration_seconds_count"
    for stage in ("ingest", "nowcast", "downscale", "products"):
        assert sample(families, "nrt_stage_duration_seconds", count, stage=stage) == 2
    assert sample(families, "nrt_stage_duration_seconds", count, stage="verify") == 1  # only 12:30 saw DPR
    assert sample(families, "nrt_jobs", "nrt_jobs", state="queued") == 0
    assert sample(families, "nrt_jobs", "nrt_jobs", state="running") == 0
    info = [s.labels for s in families["nrt_checkpoint_info"].samples]
    assert info == [{"name": service_run.cfg.model.checkpoint, "sha256": service_run.models.sha256}]

    # The last product is the newest valid time of the 12:30 cycle; recompute its statistics from the file.
    values = ensemble_values(products_of(catalog, T2)[-1].path)[:, 0]
    mean = sample(families, "nrt_last_product_mean_rain_rate_mm_per_hour", "nrt_last_product_mean_rain_rate_mm_per_hour")
    assert mean == pytest.approx(float(values.mean(axis=0).mean()), abs=1 / 256)
    for threshold in service_run.cfg.products.thresholds_mmh:
        got = sample(families, "nrt_last_product_max_exceedance_probability",
                     "nrt_last_product_max_exceedance_probability", threshold=f"{threshold:g}")
        assert got == float((values > threshold).mean(axis=0).max())

    scored = {s.valid_time for s in catalog.scores(truth_source="dpr")}
    assert scored  # the DPR swath crosses the domain in the 12:30 cycle's window
    assert sample(families, "nrt_verification_overpasses", "nrt_verification_overpasses_total") == len(scored)
    models = {s.labels["model"] for s in families["nrt_verification_score"].samples}
    assert models == {"nrt", "bilinear", "csgd"}
    assert {s.labels["baseline"] for s in families["nrt_verification_crpss"].samples} == {"bilinear", "csgd"}


def test_rerunning_a_cycle_gives_the_same_catalog_state_and_values(service_run):
    """Runs last in this module: it reruns T2 in place and checks nothing the other tests saw has changed."""
    from nrt import pipeline
    from nrt.sources.http import Client

    catalog, cfg = service_run.catalog, service_run.cfg

    def state():
        rows = [(p.id, p.kind, p.valid_time, p.cycle_time, p.lead, p.members, p.path, p.checkpoint, p.superseded_by)
                for p in catalog.products()]
        granules = sorted((g.source, g.name, g.state, g.sha256) for g in catalog.granules("imerg") + catalog.granules("geosfp"))
        scores = [(s.product_id, s.metric, s.threshold, s.lead, s.model) for s in catalog.scores()]
        return rows, granules, scores, [(j.id, j.state) for j in JobQueue(catalog).jobs()]

    before = state()
    values = {p.path: ensemble_values(p.path) for p in catalog.products(kind="ensemble") if p.cycle_time == T2}
    with Client.from_config(cfg) as client:
        report = pipeline.run_cycle(T2, cfg, catalog, client, service_run.models)
    assert report.degraded == () and len(report.products) == 46
    assert state() == before
    for row in catalog.products():
        assert row.sha256 == sha256(Path(row.path))  # rewritten files were registered again
    for path, old in values.items():
        np.testing.assert_array_equal(ensemble_values(path), old)
    assert hidden_files(cfg.product_dir) == []
    runs = catalog.runs(since=T2)
    assert [r.state for r in runs] == ["ok", "ok"]  # each attempt is logged as a run
