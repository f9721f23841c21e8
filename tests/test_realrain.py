"""Real-rain readers against raw values read independently, coordinates against documented extents, the 0.05°
averaging against block means, 30-min means, the event catalogue and the CLI."""

from __future__ import annotations

import gzip
import tarfile
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import xarray as xr

from nrt.errors import ConfigError, DataError
from nrt.realrain import READERS, get_reader
from nrt.realrain.frames import dbz_to_rate, rain_rate_frames
from nrt.realrain.regrid import Regridder, covering_grid, to_half_hours, to_target_grid


def t64(text: str) -> np.datetime64:
    return np.datetime64(text, "ns")


def brightest(values: np.ndarray) -> tuple[int, int]:
    return np.unravel_index(np.nanargmax(values), values.shape)


def near(da: xr.DataArray, row: int, col: int) -> tuple[float, float]:
    return float(da.lat[row, col]), float(da.lon[row, col])


def check_common(da: xr.DataArray, source: str) -> None:
    assert da.dims == ("time", "y", "x") and da.attrs["units"] == "mm h-1" and da.attrs["standard_name"] == "rainfall_rate"
    assert da.lat.dims == da.lon.dims == ("y", "x") and da.lat.attrs["units"] == "degrees_north"
    assert np.nanmin(da.values) >= 0, source


# --- readers, each on one real file -------------------------------------------------------------------------


def test_bom_accumulation_to_rate_time_and_centre(radar_dir):
    import netCDF4

    path = radar_dir / "bom/prcp-c10/66/2020/10/31/66_20201031_120000.prcp-c10.nc"
    da = get_reader("bom")(path)
    check_common(da, "bom")
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_maskandscale(False)
        packed = nc["precipitation"][:].astype(np.float64)  # short, 0.05 mm steps, -1 = fill
        start = datetime.fromtimestamp(int(nc["start_time"][:]), timezone.utc)
    row, col = brightest(np.where(packed == -1, np.nan, packed))
    assert da.values[0, row, col] == pytest.approx(6 * 0.05 * packed[row, col], rel=1e-6)  # 10-min mm -> mm/h
    assert np.array_equal(np.isnan(da.values[0]), packed == -1)
    assert da.time.values[0] == np.datetime64(start.replace(tzinfo=None), "ns") == t64("2020-10-31T11:50")
    # the grid is centred on the radar, the projection's origin (Mt Stapylton, 27.718 S 153.240 E)
    lat_c = (float(da.lat[255, 255]) + float(da.lat[256, 256])) / 2
    lon_c = (float(da.lon[255, 255]) + float(da.lon[256, 256])) / 2
    assert (lat_c, lon_c) == pytest.approx((-27.7178, 153.24), abs=0.005)


def test_saf_crr_rate_fill_and_region_centre(radar_dir):
    import netCDF4

    path = radar_dir / "saf/20180601/CRR/S_NWC_CRR_MSG4_Europe-VISIR_20180601T120000Z.nc"
    da = get_reader("saf_crr")(path)
    check_common(da, "saf")
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_maskandscale(False)
        raw = nc["crr_intensity"][:].astype(np.float64)
        nominal = nc.nominal_product_time
    fill = raw == 65535
    row, col = brightest(np.where(fill, np.nan, raw))
    assert da.values[0, row, col] == pytest.approx(0.1 * raw[row, col], rel=1e-6)
    assert np.isnan(da.values[0][fill]).all() and fill.sum() > 0
    assert str(da.time.values[0])[:19] == nominal[:19] == "2018-06-01T12:00:00"
    # region "Europe; CENTRE=42N,0E; SIZE=1019x2200"
    assert near(da, 509, 1100) == pytest.approx((42.0, 0.0), abs=0.05)


def test_knmi_raw_counts_corners_and_period_start(radar_dir):
    import h5py

    path = radar_dir / "KNMI/2010/08/RAD_NL25_RAP_5min_201008260300.h5"
    da = get_reader("knmi")(path)
    check_common(da, "knmi")
    with h5py.File(path) as f:
        raw = f["image1/image_data"][:].astype(np.float64)
        corners = f["geographic"].attrs["geo_product_corners"].reshape(4, 2)  # (lon, lat): LL, UL, UR, LR
        start = f["overview"].attrs["product_datetime_start"][0].decode()
    missing = raw == 65535
    row, col = brightest(np.where(missing, np.nan, raw))
    assert raw[row, col] > 0
    assert da.values[0, row, col] == pytest.approx(0.01 * raw[row, col] * 12, rel=1e-6)  # GEO = 0.01 PV mm in 5 min
    assert np.array_equal(np.isnan(da.values[0]), missing)
    assert start == "26-AUG-2010;02:55:00.000" and da.time.values[0] == t64("2010-08-26T02:55")
    # corner pixel centres lie within a pixel (~0.015°) of the documented corners
    assert near(da, -1, 0) == pytest.approx((corners[0, 1], corners[0, 0]), abs=0.02)
    assert near(da, 0, -1) == pytest.approx((corners[2, 1], corners[2, 0]), abs=0.02)


def test_mch_factor_and_swiss_grid(radar_dir):
    from nrt.realrain.pysteps_readers import pysteps_import

    path = radar_dir / "mch/20150515/AQC151351630F_00005.801.gif"
    da = get_reader("mch")(path)
    check_common(da, "mch")
    raw, metadata = pysteps_import(path, "import_mch_gif", product="AQC", unit="mm", accutime=5.0)
    assert metadata["unit"] == "mm"
    row, col = brightest(raw)
    assert da.values[0, row, col] == pytest.approx(12 * raw[row, col], rel=1e-6)
    assert da.time.values[0] == t64("2015-05-15T16:25")  # day 135 of 2015, 16:30 is the end of the 5 minutes
    # Bern, the Swiss grid's origin (600 000, 200 000) m = 46.9524 N 7.4396 E, is the corner of pixel (280, 345)
    lat = (float(da.lat[279, 344]) + float(da.lat[280, 345])) / 2
    lon = (float(da.lon[279, 344]) + float(da.lon[280, 345])) / 2
    assert (lat, lon) == pytest.approx((46.9524, 7.4396), abs=0.002)


def test_rmi_odim_rate_and_corners(radar_dir):
    import h5py

    path = radar_dir / "rmi/radqpe/20210704/20210704180000.rad.best.comp.rate.qpe.hdf"
    da = get_reader("rmi")(path)
    check_common(da, "rmi")
    with h5py.File(path) as f:
        raw = f["dataset1/data1/data"][:].astype(np.float64)
        assert f["dataset1/data1/what"].attrs["quantity"] == b"RATE"
        where = dict(f["where"].attrs)
    row, col = brightest(raw)
    assert da.values[0, row, col] == pytest.approx(raw[row, col], rel=1e-6)
    assert np.array_equal(np.isnan(da.values[0]), np.isnan(raw))
    assert da.time.values[0] == t64("2021-07-04T18:00")
    assert near(da, -1, 0) == pytest.approx((where["LL_lat"], where["LL_lon"]), abs=0.02)
    assert near(da, 0, -1) == pytest.approx((where["UR_lat"], where["UR_lon"]), abs=0.02)


def read_pgm_gz(path) -> tuple[dict, np.ndarray]:
    """Header comments and pixels of a gzipped binary PGM (P5), parsed here independently of pysteps."""
    raw = gzip.open(path).read()
    lines, pos, header = [], 0, {}
    while len(lines) < 4:  # magic, size, maxval (comments interleaved)
        end = raw.index(b"\n", pos)
        line = raw[pos:end].decode("latin-1")
        pos = end + 1
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(" ")
            header[key] = value
        else:
            lines.extend(line.split())
    width, height = int(lines[1]), int(lines[2])
    return header, np.frombuffer(raw[pos:pos + width * height], np.uint8).reshape(height, width)


def test_fmi_marshall_palmer_from_raw_bytes(radar_dir):
    path = radar_dir / "fmi/pgm/20160928/201609281530_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz"
    da = get_reader("fmi")(path)
    check_common(da, "fmi")
    assert "200 R^1.6" in da.attrs["z_r_relation"]
    header, pixels = read_pgm_gz(path)
    dbz = pixels * 0.5 - 32.0  # FMI's byte coding; 255 is no data
    echo = (pixels > 0) & (pixels < 255)
    row, col = brightest(np.where(echo, dbz, np.nan))
    expected = (10 ** (dbz[row, col] / 10) / 200) ** (1 / 1.6)
    assert da.values[0, row, col] == pytest.approx(expected, rel=1e-5)
    assert np.array_equal(np.isnan(da.values[0]), pixels == 255)
    assert (da.values[0][pixels == 0] == 0).all()  # -32 dBZ: no echo, no rain
    assert da.time.values[0] == t64("2016-09-28T15:30")
    west, south = map(float, header["bottomleft"].split())
    east, north = map(float, header["topright"].split())
    assert near(da, -1, 0) == pytest.approx((south, west), abs=0.02)
    assert near(da, 0, -1) == pytest.approx((north, east), abs=0.02)


def test_marshall_palmer_known_values():
    # Z = 200 R^1.6: R = 1 mm/h at 10 log10(200) dBZ, 10 mm/h at 10 log10(200 * 10^1.6)
    assert dbz_to_rate(np.array([10 * np.log10(200.0)]), -32.0)[0] == pytest.approx(1.0)
    assert dbz_to_rate(np.array([10 * np.log10(200.0 * 10**1.6)]), -32.0)[0] == pytest.approx(10.0)
    assert dbz_to_rate(np.array([-32.0]), -32.0)[0] == 0.0


def test_mrms_value_at_a_point_and_missing(radar_dir):
    import eccodes

    path = radar_dir / "mrms-qpe-01h/MRMS_GaugeCorr_QPE_01H_00.00_20160920-120000.grib2"
    da = get_reader("mrms")(path)
    check_common(da, "mrms")
    assert da.time.values[0] == t64("2016-09-20T11:00")
    values = da.values[0]
    row, col = brightest(values)
    lat, lon = near(da, row, col)
    with open(path, "rb") as fh:  # ecCodes' own nearest-point lookup, in its 0-360 longitudes
        handle = eccodes.codes_grib_new_from_file(fh)
        nearest = eccodes.codes_grib_find_nearest(handle, lat, lon % 360)[0]
        missing = int((eccodes.codes_get_values(handle) == -3).sum())
        eccodes.codes_release(handle)
    assert nearest["value"] == pytest.approx(values[row, col]) and nearest["distance"] < 0.2  # km
    assert int(np.isnan(values).sum()) == missing > 0
    assert near(da, 0, 0) == pytest.approx((54.995, -129.995), abs=1e-4)  # GRIB's first grid point
    assert near(da, -1, -1) == pytest.approx((20.005, -60.005), abs=1e-4)


def test_radolan_rw_ascii_and_grid(radar_dir):
    import wradlib

    from nrt.realrain.radolan import radolan_lonlat

    path = radar_dir / "radolan/rw/RW-20221018.tar.gz"
    with tarfile.open(path) as tar:
        raw = np.loadtxt(tar.extractfile("RW_20221018-1250.asc"), skiprows=6)
    da = get_reader("radolan_rw")(path)
    check_common(da, "rw")
    assert da.sizes["time"] == 24 and da.attrs["period_minutes"] == 60
    frame = da.sel(time=t64("2022-10-18T11:50")).values[::-1]  # back to the file's north-first rows
    row, col = brightest(np.where(raw < 0, np.nan, raw))
    assert frame[row, col] == pytest.approx(0.1 * raw[row, col], rel=1e-6)
    assert np.array_equal(np.isnan(frame), raw == -1)
    # DWD's documented 900 x 900 RADOLAN grid: lower-left corner 3.5889 E 46.9526 N, upper-left 2.0715 E 54.5877 N
    assert near(da, 0, 0) == pytest.approx((46.9526, 3.5889), abs=0.01)
    assert near(da, -1, 0) == pytest.approx((54.5877, 2.0715), abs=0.01)
    for shape in ((900, 900), (1100, 900)):  # cell centres as wradlib computes them
        centres = wradlib.georef.get_radolan_grid(*shape, wgs84=True, mode="center")
        lon, lat = radolan_lonlat(*shape)
        np.testing.assert_allclose(lon, centres[..., 0], atol=1e-5)
        np.testing.assert_allclose(lat, centres[..., 1], atol=1e-5)


def test_radolan_yw_binary_decoded_by_hand(radar_dir):
    path = radar_dir / "radolan/yw/raa01-yw2017.002_10000-1708160110-dwd---bin.gz"
    da = get_reader("radolan_yw")(path)
    check_common(da, "yw")
    raw = gzip.open(path).read()
    words = np.frombuffer(raw[raw.index(b"\x03") + 1:], "<u2").reshape(1100, 900)  # rows south to north
    assert b"E-02" in raw[: raw.index(b"\x03")]  # precision 0.01 mm
    nodata, clutter = (words & 0x2000) > 0, (words & 0x8000) > 0
    value = np.where(nodata | clutter, np.nan, (words & 0x0FFF) * 0.01)
    row, col = brightest(value)
    assert da.values[0, row, col] == pytest.approx(12 * value[row, col], rel=1e-6)
    assert np.array_equal(np.isnan(da.values[0]), nodata | clutter)
    assert da.time.values[0] == t64("2017-08-16T01:05")
    assert near(da, 0, 0) == pytest.approx((46.1929, 4.6759), abs=0.01)  # documented 1100 x 900 lower-left corner


def test_meteonet_hundredths_dates_and_zone_corner(radar_dir):
    path = radar_dir / "meteonet/rainfall_SE_2016_08.3.npz"
    da = get_reader("meteonet")(path)
    check_common(da, "meteonet")
    raw = np.load(path, allow_pickle=False)["data"]
    t, row, col = np.unravel_index(np.argmax(raw), raw.shape)
    assert da.values[t, row, col] == pytest.approx(raw[t, row, col] * 0.01 * 12, rel=1e-6)
    assert np.array_equal(np.isnan(da.values), raw == -1)
    times = da.time.values
    assert times.size == raw.shape[0] and (np.diff(times) > np.timedelta64(0)).all()
    # the pickled dates (read by hand with pickletools.dis) run from 2016-08-21 00:10 to 2016-08-31 00:30: period ends
    assert times[0] == t64("2016-08-21T00:05") and times[-1] == t64("2016-08-31T00:25")
    assert ((times - t64("2016-08-01")) % np.timedelta64(5, "m") == np.timedelta64(0)).all()
    assert near(da, 0, 0) == pytest.approx((46.25, 2.0)) and near(da, -1, -1) == pytest.approx((41.11, 9.83))


BAD_NAMES = {
    "bom": "66_20201031_120000.prcp-c10.nc",
    "saf_crr": "S_NWC_CRR_MSG4_Europe-VISIR_20180601T120000Z.nc",
    "knmi": "RAD_NL25_RAP_5min_201008260300.h5",
    "mch": "AQC151351630F_00005.801.gif",
    "mrms": "MRMS_GaugeCorr_QPE_01H_00.00_20160920-120000.grib2",
    "rmi": "20210704180000.rad.best.comp.rate.qpe.hdf",
    "fmi": "201609281530_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
    "radolan_rw": "RW-20221018.tar.gz",
    "radolan_yw": "raa01-yw2017.002_10000-1708160110-dwd---bin.gz",
    "meteonet": "rainfall_SE_2016_08.3.npz",
}


@pytest.mark.parametrize("source", sorted(READERS))
def test_bad_file_is_one_line_naming_it(tmp_path, source):
    path = tmp_path / BAD_NAMES[source]
    path.write_bytes(b"\x89HDF\r\n\x1a\n truncated" if source in ("knmi", "rmi") else b"not a radar file\n" * 8)
    with pytest.raises(DataError) as err:
        get_reader(source)(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- 0.05° averaging and half hours ---------------------------------------------------------------------------


def aligned_frames(values: np.ndarray, lat_top: float, lon_left: float) -> xr.DataArray:
    """A 0.01° lat/lon product whose pixels tile 0.05° cells exactly (5 x 5), rows north to south."""
    values = values.reshape(-1, *values.shape[-2:])
    ny, nx = values.shape[1:]
    lon, lat = np.meshgrid(lon_left + 0.005 + 0.01 * np.arange(nx), lat_top - 0.005 - 0.01 * np.arange(ny))
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return rain_rate_frames(values, [start + timedelta(minutes=5 * i) for i in range(values.shape[0])],
                            lon, lat, source="test", period=timedelta(minutes=5), conversion="none", files=["test"])


def block_means(values: np.ndarray, min_coverage: float) -> np.ndarray:
    """Independent 5 x 5 block means (rows flipped to latitude ascending) with the coverage rule."""
    ny, nx = values.shape
    blocks = values.reshape(ny // 5, 5, nx // 5, 5)
    valid = np.isfinite(blocks).sum(axis=(1, 3))
    with np.errstate(invalid="ignore"):
        mean = np.nansum(blocks, axis=(1, 3)) / valid
    return np.where(valid >= min_coverage * 25, mean, np.nan)[::-1]


def test_bucket_average_equals_block_means_and_keeps_nan():
    rng = np.random.default_rng(1)
    values = rng.gamma(0.5, 2.0, size=(40, 60))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:10, :10] = np.nan  # a whole corner without data
    frames = aligned_frames(values, 45.0, 10.0)
    grid = covering_grid(frames)
    assert grid.shape == (8, 12) and grid.lat0 == pytest.approx(44.625) and grid.lon0 == pytest.approx(10.025)
    out = to_target_grid(frames, Regridder.build(np.asarray(frames.lon), np.asarray(frames.lat), grid, "bucket", 0.5))
    assert out.dims == ("time", "lat", "lon") and (np.diff(out.lat.values) > 0).all()
    np.testing.assert_allclose(out.values[0], block_means(values, 0.5), rtol=1e-5, equal_nan=True)
    assert np.isnan(out.values[0, -2:, :2]).all()


def test_mrms_average_conserves_the_area_mean(radar_dir):
    """MRMS's 0.01° pixels tile 0.05° cells exactly: bucket means equal block means, and the cell mean over
    fully covered cells equals the mean of their pixels."""
    from nrt.realrain.events import crop

    da = crop(get_reader("mrms")(radar_dir / "mrms-qpe-01h/MRMS_GaugeCorr_QPE_01H_00.00_20160921-060000.grib2"),
              (-93.995, 42.005, -90.005, 44.995))  # pixel centres, so the window is exactly 4° x 3°
    values = da.values[0]
    assert values.shape == (300, 400) and np.nanmax(values) > 5
    grid = covering_grid(da)
    out = to_target_grid(da, Regridder.build(np.asarray(da.lon), np.asarray(da.lat), grid, "bucket", 0.5)).values[0]
    expected = block_means(values, 0.5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, equal_nan=True)
    full = block_means(values, 1.0)
    pixels = values.reshape(60, 5, 80, 5)[::-1][np.isfinite(full)[:, None, :, None].repeat(5, 1).repeat(5, 3)]
    assert np.nanmean(out[np.isfinite(full)]) == pytest.approx(pixels.mean(), rel=1e-5)


def test_half_hours_need_every_sub_period_and_propagate_nan():
    values = np.arange(12 * 10 * 10, dtype=np.float64).reshape(12, 10, 10)
    values[3, 0, 0] = np.nan
    frames = aligned_frames(values, 45.0, 10.0)  # 00:00 ... 00:55
    frames = frames.isel(time=[i for i in range(12) if i != 8])  # 00:40 missing: the second half hour is incomplete
    out = to_half_hours(frames)
    assert out.sizes["time"] == 1 and out.time.values[0] == t64("2024-01-01T00:00")
    assert out.attrs["averaging_period_minutes"] == 30
    np.testing.assert_allclose(out.values[0, 1:, 1:], values[:6].mean(axis=0)[1:, 1:])
    assert np.isnan(out.values[0, 0, 0])


def test_hourly_sources_stay_hourly_and_say_so():
    frames = aligned_frames(np.ones((2, 5, 5)), 45.0, 10.0).assign_attrs(period_minutes=60.0)
    out = to_half_hours(frames)
    assert out.sizes["time"] == 2 and out.attrs["averaging_period_minutes"] == 60 and "hourly" in out.attrs["frame_note"]


# --- catalogue and CLI --------------------------------------------------------------------------------------


def test_catalogue_covers_every_source_and_holds_out_whole_events():
    from nrt.realrain.events import load_catalogue

    catalogue = load_catalogue()
    sources = {e.source for e in catalogue.events.values()}
    assert sources == set(READERS)
    for source in sources:
        events = [e for e in catalogue.events.values() if e.source == source]
        held = [e for e in events if catalogue.is_held_out(e.name)]
        if len(events) > 1:
            assert held and len(held) < len(events), source  # something to train on, something held out
        for a in held:  # a held-out event never overlaps, nor comes within 30 min of, a training event of its region
            for b in events:
                if b not in held and b.region == a.region:
                    assert max(a.start - b.end, b.start - a.end).total_seconds() >= 1800, (a.name, b.name)


def test_catalogue_errors_name_the_key(tmp_path):
    from nrt.realrain.events import load_catalogue

    path = tmp_path / "rr.toml"
    event = '[[event]]\nname = "a"\nsource = "{src}"\nfiles = "x/*"\nstart = "2020-01-01T00:00Z"\nend = "2020-01-01T01:00Z"\n'
    path.write_text(event.format(src="nexrad"))
    with pytest.raises(ConfigError, match=r"event\[0\]\.source.*nexrad"):
        load_catalogue(path)
    path.write_text("[holdout]\nmch = [\"a\"]\n" + event.format(src="bom"))
    with pytest.raises(ConfigError, match=r"holdout\.mch.*source 'bom'"):
        load_catalogue(path)


def test_cli_list_and_inspect(radar_dir, capsys, monkeypatch):
    from nrt.cli import main

    monkeypatch.setenv("NRT_SHARED_DATA", str(radar_dir.parent))
    assert main(["realrain", "list"]) == 0
    out = capsys.readouterr().out
    assert "rmi-20210704-late" in out and "mch-20170131" in out
    assert main(["realrain", "inspect", "rmi-20210704-late", "--markdown"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| rmi-20210704-late"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "yes" and cells[3] == "2" and cells[4] == "30"  # 18:00-19:00: two half hours
    assert 0 < float(cells[6]) < 1 and float(cells[8]) > float(cells[7]) > 0
    assert main(["realrain", "inspect", "no-such-event"]) == 2


def test_nearest_regridding_takes_the_closest_pixel_within_the_radius():
    # 0.04° pixels (coarser than half a 0.05° cell): each cell takes its nearest pixel's value, none beyond 5 km
    lon, lat = np.meshgrid(10.02 + 0.04 * np.arange(25), 45.98 - 0.04 * np.arange(25))
    values = np.arange(lon.size, dtype=np.float64).reshape(lon.shape)
    values[0, 0] = np.nan
    frames = rain_rate_frames(values, [datetime(2024, 1, 1, tzinfo=timezone.utc)], lon, lat, source="test",
                              period=timedelta(minutes=15), conversion="none", files=["test"])
    grid = covering_grid(frames, bbox=(10.0, 45.0, 11.0, 46.0))
    out = to_target_grid(frames, Regridder.build(lon, lat, grid, "nearest", radius_m=5000.0)).values[0]
    cell_lon, cell_lat = grid.lonlats()
    for r, c in [(0, 0), (7, 11), (19, 19), (12, 3)]:
        d2 = (lon - cell_lon[r, c]) ** 2 * np.cos(np.radians(45.5)) ** 2 + (lat - cell_lat[r, c]) ** 2
        assert out[r, c] == pytest.approx(values.flat[np.argmin(d2)])
    assert np.isnan(out[-1, 0])  # the north-west cell's nearest pixel has no data
