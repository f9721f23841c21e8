"""The production ingest reads the twin unchanged: its readers on the twin's files, and `ingest()` with the real
download client through the twin's HTTP mirror into a real SQLite catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest

from nrt.store import Catalog
from nrt.grids import imerg_window, target_grid
from nrt.sources import dem, dpr, geosfp, imerg, ingest, ingest_settings
from nrt.sources.http import Client
from nrt.twin import naming
from nrt.twin.server import serve_in_thread
from nrt.twin.writers import read_truth
from twin_helpers import IOWA, START, make_tree, small_spec

EMAIL = "demo@example.org"
END = START + timedelta(hours=7)  # 12:00-19:00: IMERG, the 12:02 DPR granule, GEOS-FP from 12 and 18 UTC
T = datetime(2024, 6, 1, 17, 30, tzinfo=timezone.utc)  # newest IMERG S = 13:30; motion 12:30, 13:00, 13:30


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("twin"), small_spec(START, END))


@pytest.fixture(scope="module")
def mirror(tree):
    server, url = serve_in_thread(tree)
    yield url
    server.stop()


def test_imerg_reader_reads_the_twin(tree, cfg):
    paths = sorted((tree / "pps/imerg/early").rglob("*.RT-H5"))[:3]
    for path in paths:
        imerg.validate(path, **imerg.validate_settings(imerg.settings(cfg)))
    ds = imerg.read_imerg(paths, IOWA, variables=("randomError", "probabilityLiquidPrecipitation"))
    window = imerg_window(IOWA)
    with h5py.File(paths[0], "r") as f:
        raw = f["Grid/precipitation"][0, window.lon_slice, window.lat_slice].T
    assert ds.precipitation.shape == (3, *window.grid.shape)
    assert np.array_equal(ds.precipitation.values[0], raw) and np.isfinite(ds.precipitation.values).all()
    assert float(ds.randomError.max()) > 0 and float(ds.probabilityLiquidPrecipitation.min()) >= 0
    assert imerg.identify(paths[0])["source"] == "imerg"
    gesdisc = next((tree / naming.GESDISC_L3).rglob("*.HDF5"))
    imerg.validate(gesdisc, **imerg.validate_settings(imerg.settings(cfg)))


def test_dpr_reader_grids_the_twin_swath_onto_the_truth(tree, cfg):
    path = next((tree / naming.DPR_FOLDER).glob("*.RT-H5"))
    dpr.validate(path)
    half_hour = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
    swath = dpr.read_dpr(path, half_hour, half_hour + timedelta(minutes=30))
    grid = target_grid(IOWA)
    gridded = dpr.grid_swath(swath, grid)
    covered = gridded.coverage.values
    assert 0.05 < covered.mean() < 0.8  # one pass over the domain
    truth = read_truth(tree, half_hour, half_hour + timedelta(minutes=30)).sel(lat=grid.lats, lon=grid.lons, method="nearest")
    observed = gridded.precipitation.values[covered]
    expected = truth.values[0][covered]
    assert np.isfinite(observed).all()
    assert np.corrcoef(observed, expected)[0, 1] > 0.8


def test_geosfp_reader_reads_the_twin(tree, cfg):
    variables = [*cfg.sources.geosfp.slv_variables, *cfg.sources.geosfp.flx_variables]
    valid = datetime(2024, 6, 1, 12, 30, tzinfo=timezone.utc)
    init = START
    files = {
        hour: [tree / naming.geosfp_forecast_path(c, init, hour) for c in naming.GEOSFP_COLLECTIONS]
        for hour in geosfp.geosfp_hours_for(valid)
    }
    for paths in files.values():
        for path in paths:
            geosfp.validate(path, **geosfp.validate_settings(geosfp.settings(cfg)))
    ds = geosfp.read_geosfp(files, valid, target_grid(IOWA), variables)
    assert set(variables) <= set(ds.data_vars)
    assert 250 < float(ds.T2M.mean()) < 320 and float(ds.PRECTOT.min()) >= 0 and float(ds.TQV.min()) > 0


def test_dem_loader_reads_the_twin(tree, cfg):
    dem.validate(tree / naming.DEM_FILE, **dem.validate_settings(dem.settings(cfg)))
    grid = target_grid(IOWA)
    ds = dem.load_dem(tree / naming.DEM_FILE, grid)
    assert np.isfinite(ds.elevation.values).all() and float(ds.elevation_std.max()) > 0
    assert 0 < float(ds.elevation.min()) < float(ds.elevation.max()) < 3000


def test_ingest_fetches_every_source_through_the_mirror(tree, mirror, cfg):
    cfg.sources.imerg.pps_url = f"{mirror}/pps"
    cfg.sources.dpr.pps_url = f"{mirror}/pps"
    cfg.sources.geosfp.url = f"{mirror}/nccs/datashare/gmao/geos-fp"
    cfg.sources.dem.url = f"{mirror}/dem/nrt_twin_dem.nc"
    cfg.secrets.pps_email = EMAIL
    catalog = Catalog.open(cfg.database_url, migrate=True)
    try:
        with Client.from_config(cfg) as client:
            results = {source: ingest(source, ingest_settings(cfg), catalog, T, client) for source in ("imerg", "dpr", "geosfp", "dem")}
    finally:
        catalog.close()
    for source, result in results.items():
        assert result.bad == [] and result.missing == [], (source, result)
    assert [p.name for p in results["imerg"].files] == [
        imerg.filename(START + timedelta(minutes=m)) for m in (30, 60, 90)
    ]
    assert len(results["dpr"].files) == 1 and len(results["dem"].files) == 1
    assert len(results["geosfp"].files) == len(geosfp.expected_files(geosfp.settings(cfg), T)) > 0
    downloaded = results["imerg"].files[0]
    assert downloaded.read_bytes() == (tree / naming.imerg_pps_path(START + timedelta(minutes=30), "V07B")).read_bytes()
