"""WRF-Hydro forcing: a synthetic Lambert conformal geo_em, the regridded rain's mass, the file layout, the CLI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Proj

from nrt.store import Catalog
from nrt.cli import main
from nrt.errors import DataError
from nrt.grids import LatLonGrid
from nrt.io import sha256_file
from nrt.products import write_ensemble
from nrt.products.wrf_hydro import export_wrf_hydro, read_geogrid, regrid

UTC = dt.timezone.utc
V = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
GRID = LatLonGrid(0.05, 40.525, -95.475, 40, 60)  # 40.5-42.5 N, 95.5-92.5 W
R_EARTH = 6_370_000.0  # WRF's sphere
DX = 1000.0
CENTRE = (-93.6, 41.55)


def write_geo_em(path: Path, ny=90, nx=110, map_proj=1) -> Path:
    """A WPS-style geo_em on a Lambert conformal grid tangent at 41.5 N (map factor ~1 across 90 km)."""
    proj = Proj(proj="lcc", lat_1=41.5, lat_2=41.5, lat_0=41.5, lon_0=-93.5, R=R_EARTH)
    x0, y0 = proj(*CENTRE)
    x = x0 + (np.arange(nx) - (nx - 1) / 2) * DX
    y = y0 + (np.arange(ny) - (ny - 1) / 2) * DX
    lon, lat = proj(*np.meshgrid(x, y), inverse=True)
    ds = xr.Dataset(
        {"XLAT_M": (("Time", "south_north", "west_east"), lat[None].astype(np.float32)),
         "XLONG_M": (("Time", "south_north", "west_east"), lon[None].astype(np.float32))},
        attrs={"MAP_PROJ": np.int32(map_proj), "TRUELAT1": 41.5, "TRUELAT2": 41.5, "STAND_LON": -93.5, "CEN_LAT": CENTRE[1],
               "CEN_LON": CENTRE[0], "DX": DX, "DY": DX},
    )
    ds.to_netcdf(path)
    return path


def blob(sigma_km=12.0) -> np.ndarray:
    """A rain cell (mm/h) centred in the geogrid, well inside it."""
    lon, lat = np.meshgrid(GRID.lons, GRID.lats)
    dx = (lon - CENTRE[0]) * 111.2 * np.cos(np.radians(CENTRE[1]))
    dy = (lat - CENTRE[1]) * 111.2
    return (20.0 * np.exp(-(dx**2 + dy**2) / (2 * sigma_km**2))).astype(np.float32)


def cell_areas_m2(grid: LatLonGrid) -> np.ndarray:
    south, north = np.radians(grid.lat_bounds[:, 0]), np.radians(grid.lat_bounds[:, 1])
    band = R_EARTH**2 * np.radians(grid.res) * (np.sin(north) - np.sin(south))
    return np.broadcast_to(band[:, None], grid.shape)


def test_regridding_conserves_the_rain_within_one_percent(tmp_path):
    geogrid = read_geogrid(write_geo_em(tmp_path / "geo_em.d01.nc"))
    rate = blob()
    on_geogrid = regrid(rate, GRID, geogrid)
    assert on_geogrid.shape == (90, 110) and np.isfinite(on_geogrid).all()
    source_mass = float((rate * cell_areas_m2(GRID)).sum())  # mm/h x m2
    target_mass = float(on_geogrid.sum() * DX * DX)  # map factor 1 within 1e-4 over this tangent-cone grid
    assert target_mass == pytest.approx(source_mass, rel=0.01)
    assert on_geogrid.max() == pytest.approx(rate.max(), rel=0.05)  # the peak stays where and what it was


def test_forcing_files_and_cli(tmp_path, cfg, capsys):
    geo_em = write_geo_em(tmp_path / "geo_em.d01.nc")
    members = np.stack([blob() * f for f in (0.5, 1.0, 1.5)])[:, None]
    with Catalog.from_config(cfg, migrate=True) as catalog:
        for k in range(2):
            valid = V + k * dt.timedelta(minutes=30)
            path = write_ensemble(cfg.product_dir / f"e{k}.nc", xr.DataArray(members, dims=("member", "time", "lat", "lon")), grid=GRID,
                                  valid_time=valid, forecast_reference_time=V - dt.timedelta(hours=2), lead=4 + k, quantize=False)
            catalog.register_product("ensemble", valid, V + dt.timedelta(hours=2), 4 + k, 3, str(path), path.stat().st_size, sha256_file(path))
    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    out = tmp_path / "forcing"
    code = main(["--config", str(config_file), "export", "wrf-hydro", "--geo-em", str(geo_em), "--valid", "2024-06-01T12:00Z",
                 "--until", "2024-06-01T13:00Z", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 1 and "no ensemble product for 2024-06-01T13:00:00Z" in err and "wrote 2 PRECIP_FORCING" in stdout
    with xr.open_dataset(out / "202406011230.PRECIP_FORCING.nc") as ds:
        rate = ds["precip_rate"]
        assert rate.dims == ("Time", "south_north", "west_east") and rate.attrs["units"] == "mm s-1"
        expected = regrid(blob(), GRID, read_geogrid(geo_em)) / 3600  # the ensemble mean is the 1.0 member
        np.testing.assert_allclose(rate.values[0], expected, rtol=1e-5)
        assert ds["Times"].values[0].tobytes().decode() == "2024-06-01_12:30:00"
    assert main(["--config", str(config_file), "export", "wrf-hydro", "--geo-em", str(geo_em), "--valid", "2024-06-01T12:00Z",
                 "--member", "2", "--out", str(tmp_path / "m2")]) == 0
    with xr.open_dataset(tmp_path / "m2" / "202406011200.PRECIP_FORCING.nc") as ds:
        np.testing.assert_allclose(ds["precip_rate"].values[0], 1.5 * expected, rtol=1e-5)


def test_geogrid_outside_the_domain_and_wrong_projections_are_named(tmp_path):
    with pytest.raises(DataError, match="MAP_PROJ = 3"):
        read_geogrid(write_geo_em(tmp_path / "merc.nc", map_proj=3))
    with pytest.raises(DataError, match="no XLAT_M"):
        xr.Dataset({"x": ("a", [1.0])}).to_netcdf(tmp_path / "junk.nc")
        read_geogrid(tmp_path / "junk.nc")
    big = read_geogrid(write_geo_em(tmp_path / "big.nc", ny=300, nx=400))  # 400 km wide: beyond the 250 km product grid
    ensemble = xr.DataArray(blob()[None, None], dims=("member", "time", "lat", "lon"),
                            coords={"lat": GRID.lats, "lon": GRID.lons, "time": [np.datetime64("2024-06-01T12:00")]})
    paths, outside = export_wrf_hydro(ensemble, big, tmp_path / "big")
    with xr.open_dataset(paths[0]) as ds:
        assert outside == int(np.isnan(ds["precip_rate"].values).sum()) > 0
