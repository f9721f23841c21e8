"""Grids pinned against the coordinates stored in real IMERG files, and the 0.05°/0.1° nesting."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from nrt.errors import ConfigError
from nrt.grids import IMERG_GRID, Domain, LatLonGrid, imerg_window, target_grid, upsample_factor

IMERG_FILES = [
    "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5",
    "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V06B.HDF5",
]
IOWA = Domain(-96.7, 40.3, -90.1, 43.6)
# float32 coordinates in the files are good to about 1e-5 degrees near ±180.
ATOL = 2e-5


@pytest.fixture(params=IMERG_FILES, ids=["V07A", "V06B"])
def imerg_coords(request, gpm_dir):
    path = gpm_dir / request.param
    with h5py.File(path, "r") as h5:
        grid = h5["Grid"]
        variable = "precipitation" if "precipitation" in grid else "precipitationCal"
        return {
            "path": path,
            "variable": variable,
            **{name: grid[name][:].astype(np.float64) for name in ("lat", "lon", "lat_bnds", "lon_bnds")},
        }


def test_imerg_grid_matches_the_file_centres_and_edges(imerg_coords):
    # The files are the south-west corner of the global grid, cut to its first cells.
    nlat, nlon = len(imerg_coords["lat"]), len(imerg_coords["lon"])
    np.testing.assert_allclose(IMERG_GRID.lats[:nlat], imerg_coords["lat"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(IMERG_GRID.lons[:nlon], imerg_coords["lon"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(IMERG_GRID.lat_bounds[:nlat], imerg_coords["lat_bnds"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(IMERG_GRID.lon_bounds[:nlon], imerg_coords["lon_bnds"], atol=ATOL, rtol=0)
    # ...and the rest of the grid follows the same rule up to the far edges of the globe.
    assert IMERG_GRID.shape == (1800, 3600)
    assert IMERG_GRID.extent == (-180.0, -90.0, 180.0, 90.0)
    assert IMERG_GRID.lats[-1] == 89.95 and IMERG_GRID.lons[-1] == 179.95


@pytest.mark.parametrize(
    "domain",
    [
        Domain(-180.0, -90.0, -179.0, -89.0),  # the whole cut-out, cell edges exactly on the box
        Domain(-179.75, -89.8, -179.5, -89.6),  # west edge between cells: snapped outward
        Domain(-179.93, -89.97, -179.41, -89.12),  # nothing aligned
        Domain(-179.35, -89.35, -179.25, -89.25),  # a single cell
    ],
)
def test_imerg_window_selects_exactly_the_file_cells_that_touch_the_domain(imerg_coords, domain):
    window = imerg_window(domain)
    # Independent answer from the file's own cell bounds: every cell overlapping the box by more
    # than the float32 noise of those bounds.
    lat_b, lon_b, tol = imerg_coords["lat_bnds"], imerg_coords["lon_bnds"], 1e-4
    rows = np.flatnonzero((lat_b[:, 1] > domain.south + tol) & (lat_b[:, 0] < domain.north - tol))
    cols = np.flatnonzero((lon_b[:, 1] > domain.west + tol) & (lon_b[:, 0] < domain.east - tol))
    assert window.lat_slice == slice(rows[0], rows[-1] + 1)
    assert window.lon_slice == slice(cols[0], cols[-1] + 1)
    np.testing.assert_allclose(window.grid.lats, imerg_coords["lat"][window.lat_slice], atol=ATOL, rtol=0)
    np.testing.assert_allclose(window.grid.lons, imerg_coords["lon"][window.lon_slice], atol=ATOL, rtol=0)
    # The hyperslab a reader takes from the (time, lon, lat) array, transposed, is (lat, lon) on the grid.
    with h5py.File(imerg_coords["path"], "r") as h5:
        block = h5["Grid"][imerg_coords["variable"]][0, window.lon_slice, window.lat_slice].T
    assert block.shape == window.grid.shape


def test_imerg_window_of_iowa_is_the_independently_computed_index_range():
    window = imerg_window(IOWA)
    # Cell k spans [-90 + 0.1 k, -90 + 0.1 (k + 1)); 40.3 and 43.6 are edges, so rows 1303..1335.
    assert window.lat_slice == slice(round((40.3 + 90) / 0.1), round((43.6 + 90) / 0.1))
    assert window.lon_slice == slice(round((-96.7 + 180) / 0.1), round((-90.1 + 180) / 0.1))
    assert window.grid.shape == (33, 66)
    np.testing.assert_allclose(window.grid.lats, IMERG_GRID.lats[window.lat_slice])
    np.testing.assert_allclose(window.grid.lons, IMERG_GRID.lons[window.lon_slice])


@pytest.mark.parametrize("domain", [IOWA, Domain(-96.73, 40.27, -90.04, 43.66), Domain(10.01, -5.02, 10.09, -4.97)])
def test_target_grid_nests_two_by_two_in_imerg(domain):
    target, window = target_grid(domain), imerg_window(domain)
    coarse = window.grid
    assert target.res == 0.05 and upsample_factor(coarse, target) == 2
    assert target.extent == coarse.extent  # same outer edges, snapped to 0.1°
    assert target.shape == (2 * coarse.nlat, 2 * coarse.nlon)
    w, s, e, n = target.extent
    assert w <= domain.west and s <= domain.south and e >= domain.east and n >= domain.north
    # Each pair of fine centres sits symmetrically about its coarse centre...
    np.testing.assert_allclose(target.lats.reshape(-1, 2).mean(axis=1), coarse.lats, atol=1e-9)
    np.testing.assert_allclose(target.lons.reshape(-1, 2).mean(axis=1), coarse.lons, atol=1e-9)
    # ...and fine cell 2i and 2i+1 lie inside coarse cell i.
    fine_b, coarse_b = target.lat_bounds, np.repeat(coarse.lat_bounds, 2, axis=0)
    assert np.all(fine_b[:, 0] >= coarse_b[:, 0] - 1e-9) and np.all(fine_b[:, 1] <= coarse_b[:, 1] + 1e-9)
    # Every edge is a multiple of 0.05° (in hundredths, to stay exact).
    edges = np.concatenate([target.lat_bounds.ravel(), target.lon_bounds.ravel()]) * 100
    np.testing.assert_allclose(edges / 5, np.round(edges / 5), atol=1e-6)


def test_iowa_target_grid_centres():
    grid = target_grid(IOWA)
    assert grid.shape == (66, 132)
    assert grid.lats[0] == 40.325 and grid.lats[-1] == 43.575
    assert grid.lons[0] == -96.675 and grid.lons[-1] == -90.125
    assert np.all(np.diff(grid.lats) > 0)  # latitude ascending


def test_buffered_domain_grows_and_clips_to_the_globe():
    assert IOWA.buffered(2.0) == Domain(-98.7, 38.3, -88.1, 45.6)
    assert Domain(170.0, 80.0, 179.0, 89.0).buffered(3.0) == Domain(167.0, 77.0, 180.0, 90.0)
    assert Domain(-179.0, -89.0, -170.0, -80.0).buffered(5.0) == Domain(-180.0, -90.0, -165.0, -75.0)
    window = imerg_window(Domain(170.0, 80.0, 179.0, 89.0).buffered(3.0))
    assert window.lat_slice.stop == 1800 and window.lon_slice.stop == 3600


@pytest.mark.parametrize("box", [(10, 0, 5, 1), (0, 10, 1, 5), (-181, 0, 1, 1), (0, 0, 1, 91)])
def test_impossible_domains_are_config_errors(box):
    with pytest.raises(ConfigError):
        Domain(*box)


def test_pyresample_area_rows_run_north_to_south_and_swath_keeps_our_order():
    grid = target_grid(IOWA)
    area = grid.area_definition()
    assert (area.height, area.width) == grid.shape
    np.testing.assert_allclose(area.area_extent, grid.extent, atol=1e-9)
    lons, lats = area.get_lonlats()
    np.testing.assert_allclose(lats[::-1, 0], grid.lats, atol=1e-6)
    np.testing.assert_allclose(lons[0], grid.lons, atol=1e-6)
    swath = grid.swath_definition()
    np.testing.assert_allclose(np.asarray(swath.lats)[:, 0], grid.lats)
    np.testing.assert_allclose(np.asarray(swath.lons)[0], grid.lons)


def test_km_per_pixel_is_the_mean_cell_size_at_the_central_latitude():
    grid = target_grid(IOWA)
    lat = math.radians((grid.lats[0] + grid.lats[-1]) / 2)
    d = math.radians(grid.res)
    radius = 6371.0
    # Haversine lengths of one cell's meridional and zonal sides at the central latitude.
    meridional = radius * d
    zonal = 2 * radius * math.asin(math.cos(lat) * math.sin(d / 2))
    assert grid.km_per_pixel() == pytest.approx((meridional + zonal) / 2, rel=1e-4)


def test_grid_coords_carry_cf_attributes():
    coords = LatLonGrid(0.1, 0.05, 0.05, 3, 4).coords()
    assert coords["lat"][2] == {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
    assert coords["lon"][2]["units"] == "degrees_east"
    np.testing.assert_allclose(coords["lon"][1], [0.05, 0.15, 0.25, 0.35])
