"""DPR naming, the swath reader (real V06/V07 files vs h5py) and gridding (vs a brute-force computation)."""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone

import h5py
import numpy as np
import pytest

from nrt.errors import DataError
from nrt.grids import Domain, target_grid
from nrt.sources import dpr

V07 = "2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5"
V06 = "2A.GPM.DPR.V8-20180723.20140308-S220950-E234217.000144.V06A.HDF5"
EARTH_M = 6_371_000.0


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


def independent_times(path, group):
    with h5py.File(path, "r") as h5:
        st = {k: h5[f"{group}/ScanTime/{k}"][:] for k in dpr.SCAN_TIME_FIELDS}
    return np.array(
        [
            np.datetime64(datetime(*(int(st[k][i]) for k in dpr.SCAN_TIME_FIELDS[:6]), int(st["MilliSecond"][i]) * 1000), "ns")
            for i in range(st["Year"].size)
        ]
    )


# ---------------------------------------------------------------- names

def test_names_round_trip():
    start, end = utc(2022, 8, 18, 0, 41, 28), utc(2022, 8, 18, 1, 11, 27)
    name = dpr.nrt_filename(start, end)
    assert name == "2A.GPM.DPR.V920211125.20220818-S004128-E011127.V07A.RT-H5"
    rf = dpr.parse_name(name)
    assert (rf.start, rf.end, rf.version, rf.subdir) == (start, end, "V07A", "radar/DprL2")
    assert dpr.pps_relative_path(rf) == f"radar/DprL2/{name}"
    research = dpr.parse_name(V07)
    assert (research.start, research.end) == (utc(2014, 3, 8, 22, 9, 50), utc(2014, 3, 8, 23, 42, 17))
    assert research.subdir == "GPM_2ADPR.07/2014/067"
    assert dpr.research_filename(research.start, research.end, 144) == V07
    across = dpr.parse_name(dpr.nrt_filename(utc(2022, 8, 18, 23, 50), utc(2022, 8, 19, 0, 20)))
    assert across.end == utc(2022, 8, 19, 0, 20)


@pytest.mark.parametrize(
    "name",
    [
        "2A.GPM.DPR.V920211125.20220818-S004128-E011127.000144.V07A.RT-H5",  # NRT files have no orbit
        "2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.V07A.HDF5",  # research files always do
        "2A.GPM.Ku.V920211125.20220818-S004128-E011127.V07A.RT-H5",
    ],
)
def test_inconsistent_names_are_refused(name):
    assert dpr.parse_name(name) is None


def test_selection_keeps_listed_swaths_overlapping_the_lookback(cfg):
    t = utc(2024, 6, 1, 12)
    listed = [
        dpr.parse_name(dpr.nrt_filename(utc(2024, 6, 1, 5, 40), utc(2024, 6, 1, 6, 10))),  # ends inside 06:00..12:00
        dpr.parse_name(dpr.nrt_filename(utc(2024, 6, 1, 5, 0), utc(2024, 6, 1, 5, 30))),  # too old
        dpr.parse_name(dpr.nrt_filename(utc(2024, 6, 1, 11, 50), utc(2024, 6, 1, 12, 20))),
        dpr.parse_name(dpr.nrt_filename(utc(2024, 6, 1, 12, 20), utc(2024, 6, 1, 12, 50))),  # after t
        dpr.parse_name(dpr.nrt_filename(utc(2024, 6, 1, 9), utc(2024, 6, 1, 9, 30), version="V06A")),
    ]
    chosen, missing = dpr.select(dpr.settings(cfg), t, dpr.expected_files(dpr.settings(cfg), t), listed)
    assert [rf.start for rf in chosen] == [utc(2024, 6, 1, 5, 40), utc(2024, 6, 1, 11, 50)]
    assert missing == []
    assert dpr.list_url(dpr.settings(cfg), t) == "http://127.0.0.1:8765/pps/text/radar/DprL2/"


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("name, group", [(V07, "FS"), (V06, "NS")])
def test_read_real_swath_matches_h5py(gpm_dir, name, group):
    swath = dpr.read_dpr(gpm_dir / name)
    with h5py.File(gpm_dir / name, "r") as h5:
        rate = h5[f"{group}/SLV/precipRateNearSurface"][:]
        lat, lon = h5[f"{group}/Latitude"][:], h5[f"{group}/Longitude"][:]
    np.testing.assert_array_equal(swath.rate, np.where(rate >= 0, rate, np.nan))
    np.testing.assert_array_equal(swath.lat, lat)
    np.testing.assert_array_equal(swath.lon, lon)
    np.testing.assert_array_equal(swath.scan_time, independent_times(gpm_dir / name, group))
    assert swath.rate.dtype == np.float32 and swath.version == name.split(".")[-2]


def test_time_window_keeps_only_scans_inside(gpm_dir):
    times = independent_times(gpm_dir / V07, "FS")
    start = utc(2014, 3, 8, 22, 9, 53)
    end = utc(2014, 3, 8, 22, 9, 56)
    swath = dpr.read_dpr(gpm_dir / V07, start, end)
    keep = (times >= np.datetime64("2014-03-08T22:09:53")) & (times < np.datetime64("2014-03-08T22:09:56"))
    assert 0 < keep.sum() < times.size
    np.testing.assert_array_equal(swath.scan_time, times[keep])
    with h5py.File(gpm_dir / V07, "r") as h5:
        np.testing.assert_array_equal(swath.lat, h5["FS/Latitude"][:][keep])
    empty = dpr.read_dpr(gpm_dir / V07, utc(2014, 3, 9), utc(2014, 3, 9, 0, 30))
    assert empty.empty and empty.rate.shape == (0, 10)


def test_all_fill_swath(gpm_dir, tmp_path):
    path = tmp_path / V07
    shutil.copy(gpm_dir / V07, path)
    path.chmod(0o644)
    with h5py.File(path, "r+") as h5:
        h5["FS/SLV/precipRateNearSurface"][...] = np.float32(-9999.9)
    with pytest.raises(DataError, match="precipRateNearSurface is all fill"):
        dpr.read_dpr(path)


def test_other_product_and_truncation(gpm_dir, tmp_path):
    imerg_as_dpr = tmp_path / V07
    shutil.copy(gpm_dir / "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5", imerg_as_dpr)
    with pytest.raises(DataError, match="not a DPR 2A file"):
        dpr.read_dpr(imerg_as_dpr)
    truncated = tmp_path / V06
    truncated.write_bytes((gpm_dir / V06).read_bytes()[:200_000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        dpr.validate(truncated)


# ---------------------------------------------------------------- gridding

def great_circle_m(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_M * np.arcsin(np.sqrt(a))


def brute_force(swath, grid, footprint_km=5.0):
    """Gaussian-weighted mean of the footprints within footprint/√2 of each cell centre, by direct distances."""
    radius = footprint_km * 1000 / math.sqrt(2)
    sigma = footprint_km * 1000 / (2 * math.sqrt(2 * math.log(2)))
    lon2d, lat2d = grid.lonlats()
    d = great_circle_m(lat2d[..., None], lon2d[..., None], swath.lat.ravel(), swath.lon.ravel())
    rate = swath.rate.ravel()
    near = d <= radius
    w = np.where(near & np.isfinite(rate), np.exp(-(d**2) / (2 * sigma**2)), 0.0)
    with np.errstate(invalid="ignore"):
        mean = (w * np.nan_to_num(rate)).sum(-1) / w.sum(-1)
    dmin = d.min(-1)
    times = np.broadcast_to(swath.scan_time[:, None], swath.lat.shape).ravel()
    # Cells with a footprint right at the radius can go either way (chord vs arc distance): not compared.
    clear = ~(np.abs(d - radius) < 0.01 * radius).any(-1)
    return mean, dmin, radius, times[d.argmin(-1)], clear


def test_real_swath_gridding_matches_brute_force(gpm_dir):
    swath = dpr.read_dpr(gpm_dir / V07)
    grid = target_grid(Domain(159.5, -66.5, 161.0, -65.5))
    ds = dpr.grid_swath(swath, grid)
    mean, dmin, radius, nearest_time, clear = brute_force(swath, grid)
    np.testing.assert_array_equal(ds.coverage.values[clear], (dmin <= radius)[clear])
    inside = ds.coverage.values & clear
    assert inside.sum() > 50
    np.testing.assert_allclose(ds.precipitation.values[inside], mean[inside], rtol=1e-4, atol=1e-6)
    assert np.isnan(ds.precipitation.values[~ds.coverage.values]).all()
    np.testing.assert_array_equal(ds.scan_time.values[inside], nearest_time[inside])
    assert np.isnat(ds.scan_time.values[~ds.coverage.values]).all()
    assert np.nanmax(ds.precipitation.values) > 0  # the swath's rain reaches the grid


def synthetic_swath(rate_value=2.0, nscan=60, nray=49, spacing_km=5.0, lat0=41.0, lon0=-94.0):
    """A straight north-going swath on a regular ~5 km lattice, one scan every 0.6 s."""
    dlat = spacing_km / 111.195
    dlon = spacing_km / (111.195 * math.cos(math.radians(lat0)))
    lat = lat0 + dlat * np.arange(nscan)[:, None] + 0 * np.arange(nray)[None, :]
    lon = lon0 + dlon * (np.arange(nray)[None, :] - nray // 2) + 0 * np.arange(nscan)[:, None]
    rate = np.full(lat.shape, rate_value, np.float32)
    rate[:, :5] = np.nan  # western rays without retrieval
    times = np.datetime64("2024-06-01T12:00:00", "ns") + (np.arange(nscan) * 600).astype("timedelta64[ms]")
    return dpr.DprSwath(lat.astype(np.float32), lon.astype(np.float32), rate, times, "synthetic", "V07A")


def test_constant_swath_grids_to_the_constant_and_its_footprint():
    swath = synthetic_swath()
    grid = target_grid(Domain(-96.0, 40.5, -92.0, 43.0))
    ds = dpr.grid_swath(swath, grid)
    cov = ds.coverage.values
    rain = ds.precipitation.values
    assert cov.sum() > 1000
    np.testing.assert_allclose(rain[np.isfinite(rain)], 2.0, rtol=1e-6)
    assert np.isnan(rain[~cov]).all()
    # cells far inside the swath all covered; far outside none
    lon2d, lat2d = grid.lonlats()
    half_width = 24 * 5.0 / (111.195 * math.cos(math.radians(41)))
    core = (np.abs(lon2d + 94.0) < half_width - 0.05) & (lat2d > 41.05) & (lat2d < swath.lat.max() - 0.05)
    assert cov[core].all()
    assert not cov[np.abs(lon2d + 94.0) > half_width + 0.1].any()
    # the western rays have no retrieval: covered but NaN
    west_rays = core & (lon2d < -94.0 - half_width + 4 * 5.0 / 84) & (lon2d > -94.0 - half_width + 0.02)
    assert west_rays.any() and np.isnan(rain[west_rays]).all()
    # scan times increase northwards along the swath
    column = ds.scan_time.values[:, grid.index_of(42.0, -94.0)[1]]
    valid = ~np.isnat(column)
    assert np.all(np.diff(column[valid].astype(np.int64)) >= 0)


def test_swath_missing_the_grid_gives_empty_coverage(gpm_dir):
    swath = dpr.read_dpr(gpm_dir / V07)
    ds = dpr.grid_swath(swath, target_grid(Domain(-96.7, 40.3, -90.1, 43.6)))
    assert not ds.coverage.values.any() and np.isnan(ds.precipitation.values).all()
    assert (ds.scan_time.values.dtype, ds.precipitation.dims) == (np.dtype("datetime64[ns]"), ("lat", "lon"))


def test_empty_time_window_grids_to_nothing(gpm_dir):
    swath = dpr.read_dpr(gpm_dir / V07, utc(2014, 3, 8, 23), utc(2014, 3, 8, 23, 30))
    ds = dpr.grid_swath(swath, target_grid(Domain(159.5, -66.5, 161.0, -65.5)))
    assert not ds.coverage.values.any()
