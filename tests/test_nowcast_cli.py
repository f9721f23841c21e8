"""`nrt nowcast` on IMERG V07 files written in the real layout: a valid CF file, the same numbers as the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter

from nrt import config
from nrt.cli import main
from nrt.grids import Domain, imerg_grid
from nrt.nowcast import nowcast, nowcast_domain
from nrt.sources.imerg import filename, read_imerg

START = datetime(2024, 6, 1, 10, 0, tzinfo=timezone.utc)
FILE_AREA = Domain(-99.0, 38.0, -89.0, 46.0)  # what the test files cover: the domain plus more than its buffer
TOML = """
[domain]
west = -95.0
south = 41.0
east = -93.0
north = 43.0
[nowcast]
members = 3
max_speed_kmh = 60.0  # above the test field's 43 km/h, so its motion is not clipped
buffer_degrees = 0.5
cascade_levels = 5
"""


def write_cut_granule(path, grid, values_lat_lon: np.ndarray) -> None:
    """An IMERG V07 granule cut to `grid`, laid out like the real file: Grid/precipitation (time, lon, lat)."""
    with h5py.File(path, "w") as h5:
        h5.attrs["FileHeader"] = np.bytes_("AlgorithmID=3IMERGHH;ProductVersion=V07B;")
        g = h5.create_group("Grid")
        g["lat"] = grid.lats.astype(np.float32)
        g["lon"] = grid.lons.astype(np.float32)
        data = np.where(np.isfinite(values_lat_lon), values_lat_lon, np.float32(-9999.9)).astype(np.float32)
        ds = g.create_dataset("precipitation", data=data.T[np.newaxis], fillvalue=np.float32(-9999.9))
        ds.attrs["units"] = np.bytes_("mm/hr")


@pytest.fixture
def granules(tmp_path):
    grid = imerg_grid(FILE_AREA)
    rng = np.random.default_rng(5)
    canvas = gaussian_filter(rng.normal(size=(grid.nlat + 20, grid.nlon + 20)), 3)
    canvas = np.clip(canvas / canvas.std() - 0.3, 0, None) * 6
    paths = []
    for k in range(3):  # moving 2 cells east and 1 north per half hour
        field = canvas[10 - k : 10 - k + grid.nlat, 10 - 2 * k : 10 - 2 * k + grid.nlon].astype(np.float32)
        path = tmp_path / "in" / filename(START + k * timedelta(minutes=30))
        path.parent.mkdir(exist_ok=True)
        write_cut_granule(path, grid, field)
        paths.append(path)
    return paths


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "nrt.toml"
    path.write_text(TOML)
    return path


def test_cli_writes_a_cf_netcdf_matching_the_library(granules, cfg_file, tmp_path, capsys):
    out = tmp_path / "out" / "nowcast.nc"
    code = main(["--config", str(cfg_file), "nowcast", "--inputs", *map(str, granules[::-1]), "--steps", "4", "--out", str(out)])
    assert code == 0
    assert '"method": "steps"' in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["nowcast.nc"]  # no temp file left behind

    with netCDF4.Dataset(out) as nc:
        assert nc.Conventions == "CF-1.8"
        var = nc["precipitation"]
        assert var.dimensions == ("member", "time", "lat", "lon")
        assert var.units == "mm h-1" and var.standard_name == "lwe_precipitation_rate"
        assert nc["time"].units.startswith("seconds since 1970-01-01")
        assert nc["lat"].units == "degrees_north" and np.all(np.diff(nc["lat"][:]) > 0)
        assert nc["eastward_motion"].units == "m s-1"

    cfg = config.load(cfg_file)
    area = nowcast_domain(cfg.domain.box(), cfg.nowcast, steps=4)
    expected = nowcast(read_imerg(granules, area)["precipitation"], cfg.nowcast, steps=4)
    with xr.open_dataset(out) as ds:
        assert ds["precipitation"].shape == (3, 4) + expected.precip.shape[2:]
        times = [START + timedelta(minutes=30 * (2 + k)) for k in range(1, 5)]
        assert list(ds["time"].values) == [np.datetime64(t.replace(tzinfo=None), "ns") for t in times]
        np.testing.assert_array_equal(ds["precipitation"].values, expected.precip.values)
        assert float(ds["eastward_motion"].median()) > 0 and float(ds["northward_motion"].median()) > 0
        assert ds.attrs["nowcast_method"] == "steps" and ds.attrs["nowcast_degraded"] == ""


def test_cli_records_degradation_and_lead_offset(granules, cfg_file, tmp_path, capsys):
    out = tmp_path / "late.nc"
    code = main(["--config", str(cfg_file), "nowcast", "--inputs", *map(str, granules), "--steps", "2", "--members", "2",
                 "--method", "extrapolation", "--lead-offset", "1", "--out", str(out)])
    assert code == 0
    with xr.open_dataset(out) as ds:
        assert ds.attrs["nowcast_degraded"] == "missing_newest_granule"
        assert ds["precipitation"].attrs["nowcast_degraded"] == "missing_newest_granule"
        assert list(ds["forecast_period"].values) == [60, 90]
        assert ds.sizes["member"] == 2


def test_cli_bad_input_is_one_line_and_exit_2(granules, cfg_file, tmp_path, capsys):
    broken = tmp_path / "in" / filename(START + timedelta(minutes=90))
    broken.write_bytes(granules[0].read_bytes()[:400])
    out = tmp_path / "never.nc"
    code = main(["--config", str(cfg_file), "nowcast", "--inputs", *map(str, granules), str(broken), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nrt: error: ") and broken.name in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_vet_motion_in_a_subprocess(granules, cfg_file, tmp_path):
    # pysteps' VET kernel is OpenMP-parallel and slows down many times over on a busy machine unless it has
    # one thread; run it as an operator would, with OMP_NUM_THREADS=1.
    out = tmp_path / "vet.nc"
    command = [sys.executable, "-m", "nrt.cli", "--config", str(cfg_file), "nowcast", "--inputs", *map(str, granules),
               "--motion", "vet", "--method", "extrapolation", "--steps", "2", "--members", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["method"] == "extrapolation"
    with xr.open_dataset(out) as ds:
        assert ds["precipitation"].attrs["nowcast_motion"] == "vet"
        east, north = float(ds["eastward_motion"].median()), float(ds["northward_motion"].median())
    # 2 cells east and 1 north per half hour at about 42°N: ~8.3 and ~6.2 m/s
    assert east == pytest.approx(2 * 0.1 * 111195 * np.cos(np.radians(42)) / 1800, rel=0.15)
    assert north == pytest.approx(0.1 * 111195 / 1800, rel=0.15)
