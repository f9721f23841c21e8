"""GEOS-FP naming, portal layout and the reader: time interpolation then bilinear regridding, on the real grid."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import netCDF4
import numpy as np
import pytest

from nrt.errors import DataError
from nrt.grids import Domain, target_grid
from nrt.sources import geosfp


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


LATS = geosfp.LAT0 + geosfp.DLAT * np.arange(geosfp.NLAT)
LONS = geosfp.LON0 + geosfp.DLON * np.arange(geosfp.NLON)


def linear_tqv(lat, lon, hours):
    return 20.0 + 0.5 * lat + 0.1 * lon + 2.0 * hours


def periodic_t2m(lat, lon, hours):
    return 280.0 + 10.0 * np.sin(np.radians(lon)) + 0.2 * lat + 0.5 * hours


def linear_prectot(lat, lon, hours):
    return 1e-5 * (3.0 + 0.01 * lat - 0.02 * lon + hours)


def write_file(path, valid: datetime, fields: dict, fill_all: str | None = None, nlon=geosfp.NLON):
    hours = (valid - utc(2024, 6, 1)).total_seconds() / 3600
    lon = LONS[:nlon]
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("time", 1)
        nc.createDimension("lat", geosfp.NLAT)
        nc.createDimension("lon", lon.size)
        nc.createVariable("lat", "f8", ("lat",))[:] = LATS
        nc.createVariable("lon", "f8", ("lon",))[:] = lon
        t = nc.createVariable("time", "i4", ("time",))
        t.units = f"minutes since {valid:%Y-%m-%d %H:%M:%S}"
        t[:] = 0
        lat2d, lon2d = np.meshgrid(LATS, lon, indexing="ij")
        for name, func in fields.items():
            var = nc.createVariable(name, "f4", ("time", "lat", "lon"), fill_value=np.float32(1e15))
            var.units = "kg m-2"
            var[0] = np.full(lat2d.shape, 1e15, np.float32) if name == fill_all else func(lat2d, lon2d, hours).astype(np.float32)
    return path


@pytest.fixture(scope="module")
def forecast(tmp_path_factory):
    """Forecast files (slv + flx) of the 2024-06-01 06z run for 11:30 and 12:30, named as on the portal."""
    root = tmp_path_factory.mktemp("geosfp")
    init = utc(2024, 6, 1, 6)
    files = {}
    for hour in (utc(2024, 6, 1, 11, 30), utc(2024, 6, 1, 12, 30)):
        slv = write_file(root / geosfp.forecast_filename(geosfp.SLV, init, hour), hour, {"TQV": linear_tqv, "T2M": periodic_t2m})
        flx = write_file(root / geosfp.forecast_filename(geosfp.FLX, init, hour), hour, {"PRECTOT": linear_prectot})
        files[hour] = [slv, flx]
    return files


def test_names_and_folders():
    init, valid = utc(2024, 6, 1, 6), utc(2024, 6, 1, 11, 30)
    name = geosfp.forecast_filename(geosfp.SLV, init, valid)
    assert name == "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_1130.V01.nc4"
    rf = geosfp.parse_name(name)
    assert (rf.start, rf.end, rf.subdir) == (utc(2024, 6, 1, 11), utc(2024, 6, 1, 12), "forecast/Y2024/M06/D01/H06")
    asm = geosfp.parse_name(geosfp.asm_filename(geosfp.FLX, valid))
    assert asm.name == "GEOS.fp.asm.tavg1_2d_flx_Nx.20240601_1130.V01.nc4" and asm.subdir == "das/Y2024/M06/D01"
    assert geosfp.parse_name("GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_1130.V01.nc4") is None  # forecast without init
    assert geosfp.parse_name("GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_12+20240601_1130.V01.nc4") is None  # valid < init


def test_expected_files_cover_the_bridge(cfg):
    t = utc(2024, 6, 1, 12)  # S = 08:00; valid 08:00 ... 12:00 -> hours 07:30 ... 12:30
    files = geosfp.expected_files(geosfp.settings(cfg), t)
    hours = sorted({rf.start + timedelta(minutes=30) for rf in files})
    assert hours == [utc(2024, 6, 1, 7, 30) + timedelta(hours=k) for k in range(6)]
    assert {geosfp.collection_of(rf.name) for rf in files} == {geosfp.SLV, geosfp.FLX}
    # published by 12:00 with 5 h latency: the 06z run (00z for hours before 06z would be used likewise)
    assert all("+20240601_" in rf.name and rf.subdir == "forecast/Y2024/M06/D01/H06" for rf in files)
    url = geosfp.remote_url(geosfp.settings(cfg), files[0])
    assert url == f"http://127.0.0.1:8765/nccs/datashare/gmao/geos-fp/forecast/Y2024/M06/D01/H06/{files[0].name}"


def test_time_then_bilinear_interpolation_is_exact_for_linear_fields(forecast):
    grid = target_grid(Domain(-96.7, 40.3, -90.1, 43.6))
    ds = geosfp.read_geosfp(forecast, utc(2024, 6, 1, 12), grid, ["TQV", "PRECTOT"])
    lon2d, lat2d = grid.lonlats()
    centre_hours = 12.25  # the half-hour 12:00-12:30 is centred at 12:15
    np.testing.assert_allclose(ds.TQV.values, linear_tqv(lat2d, lon2d, centre_hours), rtol=1e-5)
    np.testing.assert_allclose(ds.PRECTOT.values, linear_prectot(lat2d, lon2d, centre_hours), rtol=1e-5)
    assert ds.TQV.dims == ("lat", "lon") and ds.TQV.dtype == np.float32 and ds.TQV.attrs["units"] == "kg m-2"
    assert ds.time.values == np.datetime64("2024-06-01T12:00")


def test_longitudes_wrap_across_the_dateline(forecast):
    grid = target_grid(Domain(179.5, 10.0, 180.0, 11.0))
    ds = geosfp.read_geosfp(forecast, utc(2024, 6, 1, 11, 30), grid, ["T2M"])
    # centre 11:45 between 11:30 and 12:30; by hand: linear between the two columns around each target lon
    lon2d, lat2d = grid.lonlats()
    left = np.floor((lon2d - geosfp.LON0) / geosfp.DLON) * geosfp.DLON + geosfp.LON0
    w = (lon2d - left) / geosfp.DLON
    by_hand = (1 - w) * periodic_t2m(lat2d, left, 11.75) + w * periodic_t2m(lat2d, left + geosfp.DLON, 11.75)
    np.testing.assert_allclose(ds.T2M.values, by_hand, rtol=1e-5)


def test_missing_hour_and_variable(forecast):
    grid = target_grid(Domain(-94.0, 41.0, -93.0, 42.0))
    one_hour = {k: v for k, v in forecast.items() if k.hour == 11}
    with pytest.raises(DataError, match="GEOS-FP 2024-06-01T12:30Z: no file given"):
        geosfp.read_geosfp(one_hour, utc(2024, 6, 1, 12), grid, ["TQV"])
    with pytest.raises(DataError, match="no variable SLP"):
        geosfp.read_geosfp(forecast, utc(2024, 6, 1, 12), grid, ["SLP"])
    swapped = {utc(2024, 6, 1, 11, 30): forecast[utc(2024, 6, 1, 12, 30)], utc(2024, 6, 1, 12, 30): forecast[utc(2024, 6, 1, 11, 30)]}
    with pytest.raises(DataError, match="not 2024-06-01T11:30:00Z"):
        geosfp.read_geosfp(swapped, utc(2024, 6, 1, 12), grid, ["TQV"])


def test_validation_of_downloads(tmp_path, cfg, forecast):
    cfg.sources.geosfp.slv_variables = ["TQV", "T2M"]
    hour, init = utc(2024, 6, 1, 11, 30), utc(2024, 6, 1, 6)
    geosfp.validate(forecast[hour][0], **geosfp.validate_settings(geosfp.settings(cfg)))
    geosfp.validate(forecast[hour][1], **geosfp.validate_settings(geosfp.settings(cfg)))
    name = geosfp.forecast_filename(geosfp.SLV, init, hour)
    (tmp_path / "a").mkdir()
    missing = write_file(tmp_path / "a" / name, hour, {"TQV": linear_tqv})
    with pytest.raises(DataError, match="no variable T2M"):
        geosfp.validate(missing, **geosfp.validate_settings(geosfp.settings(cfg)))
    (tmp_path / "b").mkdir()
    fill = write_file(tmp_path / "b" / name, hour, {"TQV": linear_tqv, "T2M": periodic_t2m}, fill_all="T2M")
    with pytest.raises(DataError, match="T2M is all fill"):
        geosfp.validate(fill, **geosfp.validate_settings(geosfp.settings(cfg)))
    (tmp_path / "c").mkdir()
    small = write_file(tmp_path / "c" / name, hour, {"TQV": linear_tqv, "T2M": periodic_t2m}, nlon=576)
    with pytest.raises(DataError, match="grid 576 x 721"):
        geosfp.validate(small, **geosfp.validate_settings(geosfp.settings(cfg)))
    (tmp_path / "d").mkdir()
    html = tmp_path / "d" / name
    html.write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(DataError, match="HTML page"):
        geosfp.validate(html, **geosfp.validate_settings(geosfp.settings(cfg)))


def test_identify_reports_the_precipitation_field(forecast):
    from nrt.sources import identify

    hour = utc(2024, 6, 1, 11, 30)
    facts = identify(forecast[hour][1])
    expected = linear_prectot(*np.meshgrid(LATS, LONS, indexing="ij"), 11.5).astype(np.float32).astype(np.float64)
    assert facts["source"] == "geosfp" and facts["field"] == "PRECTOT" and facts["shape"] == [1, 721, 1152]
    assert facts["start"] == "2024-06-01T11:00:00Z" and facts["end"] == "2024-06-01T12:00:00Z"
    assert facts["valid_fraction"] == 1.0
    assert math.isclose(facts["mean"], expected.mean(), rel_tol=1e-5)
    assert math.isclose(facts["max"], expected.max(), rel_tol=1e-6)
