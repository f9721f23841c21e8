"""DEM: ETOPO-style netCDF and GeoTIFF block-averaged to 0.05° (vs reshape means), elevation std, the cache."""

from __future__ import annotations

import os

import netCDF4
import numpy as np
import pytest
import tifffile

from nrt.errors import DataError
from nrt.grids import Domain, target_grid
from nrt.sources import dem, identify

GRID = target_grid(Domain(-94.0, 41.0, -93.0, 42.0))  # 20 x 20 cells of 0.05°


def relief(nlat, nlon, seed=1):
    rng = np.random.default_rng(seed)
    return (300 + 40 * rng.standard_normal((nlat, nlon))).astype(np.float32)


def write_etopo(path, west, south, nlat, nlon, res, z):
    """ETOPO 2022 layout: 1-D `lat`, `lon` of cell centres and `z` (lat, lon), south first."""
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("lat", nlat)
        nc.createDimension("lon", nlon)
        nc.createVariable("lat", "f8", ("lat",))[:] = south + res * (np.arange(nlat) + 0.5)
        nc.createVariable("lon", "f8", ("lon",))[:] = west + res * (np.arange(nlon) + 0.5)
        var = nc.createVariable("z", "f4", ("lat", "lon"), fill_value=np.float32(-99999))
        var.units = "m"
        var[:] = z
    return path


def reshape_stats(z, factor):
    """Independent block statistics: each 0.05° cell holds factor x factor source cells."""
    blocks = z.astype(np.float64).reshape(z.shape[0] // factor, factor, z.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3)), blocks.std(axis=(1, 3))


def test_etopo_netcdf_block_average_and_std(tmp_path):
    res = 1 / 120  # ETOPO 2022 30"
    # a DEM larger than the grid: one degree of margin on every side
    z = relief(360, 360)
    path = write_etopo(tmp_path / "etopo.nc", -95.0, 40.0, 360, 360, res, z)
    ds = dem.load_dem(path, GRID)
    inner = z[120:240, 120:240]
    mean, std = reshape_stats(inner, 6)
    np.testing.assert_allclose(ds.elevation.values, mean, rtol=1e-6)
    np.testing.assert_allclose(ds.elevation_std.values, std, rtol=1e-4, atol=1e-3)
    assert ds.elevation.dims == ("lat", "lon") and ds.elevation.attrs["units"] == "m"
    np.testing.assert_allclose(ds.lat.values, GRID.lats)


def test_fill_cells_are_left_out_of_the_average(tmp_path):
    res = 1 / 120
    z = relief(120, 120, seed=2)
    z[0, 0] = -99999  # one source cell of the south-west 0.05° cell is fill
    path = write_etopo(tmp_path / "etopo.nc", -94.0, 41.0, 120, 120, res, z)
    ds = dem.load_dem(path, GRID)
    assert ds.elevation.values[0, 0] == pytest.approx(z[:6, :6].ravel()[1:].astype(np.float64).mean(), rel=1e-6)


def write_geotiff(path, z, west, north, res, point=False):
    geokeys = (1, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 2 if point else 1, 2048, 0, 1, 4326)
    tie_x, tie_y = (west + res / 2, north - res / 2) if point else (west, north)
    tifffile.imwrite(
        path,
        z,
        extratags=[
            (33550, "d", 3, (res, res, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, tie_x, tie_y, 0.0), True),
            (34735, "H", len(geokeys), geokeys, True),
            (42113, "s", 0, "-32768", True),
        ],
    )
    return path


@pytest.mark.parametrize("point", [False, True])
def test_geotiff_block_average(tmp_path, point):
    res = 1 / 480  # GMTED2010 7.5"
    z_north_first = relief(480, 480, seed=3).astype(np.int16)
    z_north_first[5, 7] = -32768  # nodata
    path = write_geotiff(tmp_path / "gmted.tif", z_north_first, -94.0, 42.0, res, point=point)
    ds = dem.load_dem(path, GRID)
    z = z_north_first[::-1].astype(np.float64)  # south first, like the grid
    z[z == -32768] = np.nan
    blocks = z.reshape(20, 24, 20, 24)
    np.testing.assert_allclose(ds.elevation.values, np.nanmean(blocks, axis=(1, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds.elevation_std.values, np.nanstd(blocks, axis=(1, 3)), rtol=1e-4)


def test_cache_is_reused_and_keyed_by_the_file(tmp_path):
    path = write_etopo(tmp_path / "etopo.nc", -94.0, 41.0, 120, 120, 1 / 120, relief(120, 120, seed=4))
    cache = tmp_path / "cache"
    first = dem.load_dem(path, GRID, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".")
    stamp = files[0].stat().st_mtime_ns
    second = dem.load_dem(path, GRID, cache_dir=cache)
    assert files[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.elevation.values, second.elevation.values)
    # a changed DEM is a new cache entry with the new values
    write_etopo(path, -94.0, 41.0, 120, 120, 1 / 120, relief(120, 120, seed=5))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    third = dem.load_dem(path, GRID, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    assert not np.array_equal(third.elevation.values, first.elevation.values)


def test_damaged_cache_is_rebuilt(tmp_path):
    path = write_etopo(tmp_path / "etopo.nc", -94.0, 41.0, 120, 120, 1 / 120, relief(120, 120, seed=6))
    cache = tmp_path / "cache"
    good = dem.load_dem(path, GRID, cache_dir=cache)
    cached = next(cache.iterdir())
    cached.write_bytes(b"\x89HDF\r\n\x1a\n broken")
    again = dem.load_dem(path, GRID, cache_dir=cache)
    np.testing.assert_array_equal(good.elevation.values, again.elevation.values)


def test_dem_that_misses_the_grid(tmp_path):
    path = write_etopo(tmp_path / "etopo.nc", -94.0, 41.0, 60, 120, 1 / 120, relief(60, 120))  # only half the rows
    with pytest.raises(DataError, match="no DEM data in 200 of 400 grid cells"):
        dem.load_dem(path, GRID)
    far = write_etopo(tmp_path / "far.nc", 10.0, 10.0, 60, 60, 1 / 120, relief(60, 60))
    with pytest.raises(DataError, match="does not cover the grid"):
        dem.load_dem(far, GRID)


def test_not_a_dem(tmp_path):
    html = tmp_path / "etopo.nc"
    html.write_text("<!doctype html><title>Login</title>")
    with pytest.raises(DataError, match="HTML page saved as data"):
        dem.load_dem(html, GRID)
    other = tmp_path / "other.nc"
    with netCDF4.Dataset(other, "w") as nc:
        nc.createDimension("x", 3)
        nc.createVariable("height", "f4", ("x",))[:] = [1, 2, 3]
    with pytest.raises(DataError, match="no latitude variable"):
        dem.load_dem(other, GRID)


def test_identify_netcdf_and_geotiff(tmp_path):
    z = relief(120, 120, seed=7)
    z[3, 3] = -99999
    facts = identify(write_etopo(tmp_path / "etopo.nc", -94.0, 41.0, 120, 120, 1 / 120, z))
    valid = z[z != -99999].astype(np.float64)
    assert facts["source"] == "dem" and facts["shape"] == [120, 120] and facts["start"] is None
    assert facts["valid_fraction"] == pytest.approx(valid.size / z.size)
    assert facts["mean"] == pytest.approx(valid.mean(), rel=1e-6) and facts["max"] == pytest.approx(valid.max())
    tif = identify(write_geotiff(tmp_path / "gmted.tif", relief(48, 48).astype(np.int16), -94.0, 42.0, 1 / 480))
    assert tif["source"] == "dem" and tif["shape"] == [48, 48] and tif["valid_fraction"] == 1.0
