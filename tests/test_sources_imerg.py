"""IMERG naming, server layout and the hyperslab reader, checked against independent h5py reads of real files."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest

from nrt.errors import DataError
from nrt.grids import IMERG_GRID, Domain, imerg_window
from nrt.sources import imerg

V07 = "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5"
V06 = "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V06B.HDF5"
CUT = Domain(-180.0, -90.0, -179.0, -89.0)  # the real files are 10 x 10 cuts at the south-west corner


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


def independent(path, dataset, lon_slice=slice(None), lat_slice=slice(None)):
    with h5py.File(path, "r") as h5:
        raw = h5[dataset][0, lon_slice, lat_slice].astype(np.float32).T
    return np.where(raw >= 0, raw, np.nan)


# ---------------------------------------------------------------- names and layout

def test_filename_round_trip_and_layout():
    start = utc(2024, 6, 1, 12, 30)
    name = imerg.filename(start, "V07B")
    assert name == "3B-HHR-E.MS.MRG.3IMERG.20240601-S123000-E125959.0750.V07B.RT-H5"
    rf = imerg.parse_name(name)
    assert (rf.start, rf.end, rf.version) == (start, start + timedelta(minutes=30), "V07B")
    assert imerg.pps_relative_path(rf) == f"imerg/early/202406/{name}"
    assert imerg.pps_listing_path(start) == "text/imerg/early/202406/"
    archive = imerg.parse_name(imerg.filename(start, "V07C", server="gesdisc"))
    assert archive.name.endswith(".V07C.HDF5")
    assert imerg.gesdisc_relative_path(archive) == f"GPM_3IMERGHHE.07/2024/153/{archive.name}"


@pytest.mark.parametrize(
    "name",
    [
        "3B-HHR-E.MS.MRG.3IMERG.20240601-S123000-E125959.0720.V07B.RT-H5",  # minutes field disagrees with start
        "3B-HHR-E.MS.MRG.3IMERG.20240601-S121500-E124459.0735.V07B.RT-H5",  # not on the half-hour
        "3B-HHR.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5",  # the final run is never NRT
        "3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5.part",
        "../3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5",
    ],
)
def test_parse_name_refuses_inconsistent_names(name):
    assert imerg.parse_name(name) is None


def test_real_names_parse(gpm_dir):
    for name, version in ((V07, "V07A"), (V06, "V06B")):
        rf = imerg.parse_name(name)
        assert (rf.start, rf.version) == (utc(2000, 6, 1), version)


def test_expected_files_and_selection(cfg):
    t = utc(2024, 6, 1, 0, 10)  # newest granule S = floor(t - 4 h) = 2024-05-31 20:00
    expected = imerg.expected_files(imerg.settings(cfg), t)
    assert [rf.start for rf in expected] == [utc(2024, 5, 31, 19), utc(2024, 5, 31, 19, 30), utc(2024, 5, 31, 20)]
    assert imerg.list_url(imerg.settings(cfg), expected[0].start) == "http://127.0.0.1:8765/pps/text/imerg/early/202405/"
    listed = [
        imerg.parse_name(imerg.filename(utc(2024, 5, 31, 19), "V07B")),
        imerg.parse_name(imerg.filename(utc(2024, 5, 31, 19), "V07C")),
        imerg.parse_name(imerg.filename(utc(2024, 5, 31, 19, 30), "V06B")),  # version not allowed
    ]
    chosen, missing = imerg.select(imerg.settings(cfg), t, expected, listed)
    assert [rf.version for rf in chosen] == ["V07C"]
    assert len(missing) == 2 and all("not listed" in m for m in missing)
    assert imerg.remote_url(imerg.settings(cfg), chosen[0]).startswith("http://127.0.0.1:8765/pps/imerg/early/202405/3B-HHR-E")


# ---------------------------------------------------------------- reading real files

def test_read_real_v07_full_cut_matches_h5py(gpm_dir):
    ds = imerg.read_imerg([gpm_dir / V07], CUT, variables=("randomError", "probabilityLiquidPrecipitation"))
    assert ds.precipitation.dims == ("time", "lat", "lon") and ds.precipitation.shape == (1, 10, 10)
    assert ds.precipitation.dtype == np.float32 and ds.precipitation.attrs["units"] == "mm/h"
    np.testing.assert_array_equal(ds.precipitation.values[0], independent(gpm_dir / V07, "Grid/precipitation"))
    np.testing.assert_array_equal(ds.randomError.values[0], independent(gpm_dir / V07, "Grid/randomError"))
    np.testing.assert_array_equal(
        ds.probabilityLiquidPrecipitation.values[0], independent(gpm_dir / V07, "Grid/probabilityLiquidPrecipitation")
    )
    with h5py.File(gpm_dir / V07, "r") as h5:
        np.testing.assert_allclose(ds.lat.values, h5["Grid/lat"][:], atol=1e-4)
        np.testing.assert_allclose(ds.lon.values, h5["Grid/lon"][:], atol=1e-4)
    assert np.all(np.diff(ds.lat.values) > 0)
    # fill (-9999.9) is NaN, never 0: the three southernmost rows are fill in this granule
    assert np.isnan(ds.precipitation.values[0, :3]).all() and (ds.precipitation.values[0, 3:] == 0).all()
    assert ds.time.values[0] == np.datetime64("2000-06-01T00:00:00")


def test_read_real_sub_window_uses_the_files_own_coordinates(gpm_dir):
    domain = Domain(-179.7, -89.8, -179.3, -89.4)
    ds = imerg.read_imerg([gpm_dir / V07], domain, variables=("randomError",))
    assert ds.precipitation.shape == (1, 4, 4)
    np.testing.assert_allclose(ds.lat.values, [-89.75, -89.65, -89.55, -89.45])
    np.testing.assert_allclose(ds.lon.values, [-179.65, -179.55, -179.45, -179.35])
    np.testing.assert_array_equal(
        ds.randomError.values[0], independent(gpm_dir / V07, "Grid/randomError", lon_slice=slice(3, 7), lat_slice=slice(2, 6))
    )


def test_domain_outside_a_cut_file_is_a_data_error(gpm_dir):
    with pytest.raises(DataError, match="not the domain"):
        imerg.read_imerg([gpm_dir / V07], Domain(-96.7, 40.3, -90.1, 43.6))


def test_all_fill_v06_granule_is_refused(gpm_dir):
    # The real V06B cut holds only fill in precipitationCal.
    with pytest.raises(DataError, match=r"V06B\.HDF5: precipitation is all fill"):
        imerg.read_imerg([gpm_dir / V06], CUT)


def test_v06_layout_is_read_from_precipitationCal(gpm_dir, tmp_path):
    path = tmp_path / V06
    shutil.copy(gpm_dir / V06, path)
    path.chmod(0o644)
    with h5py.File(path, "r+") as h5:
        h5["Grid/precipitationCal"][0, 4, 2] = 3.5
    ds = imerg.read_imerg([path], CUT)
    assert ds.precipitation.values[0, 2, 4] == np.float32(3.5)
    assert np.isfinite(ds.precipitation.values).sum() == 1


# ---------------------------------------------------------------- real-size granules: hyperslab only

def write_global(path, start_values: np.ndarray, domain: Domain, version="V07B"):
    """A global (1, 3600, 1800) granule, chunked and compressed like NASA's; only the domain's chunks are written."""
    window = imerg_window(domain)
    with h5py.File(path, "w") as h5:
        h5.attrs["FileHeader"] = np.bytes_(f"AlgorithmID=3IMERGHH;ProductVersion={version};")
        grid = h5.create_group("Grid")
        grid["lat"] = IMERG_GRID.lats.astype(np.float32)
        grid["lon"] = IMERG_GRID.lons.astype(np.float32)
        for name in ("precipitation", "randomError"):
            ds = grid.create_dataset(
                name, shape=(1, 3600, 1800), dtype=np.float32, chunks=(1, 145, 1800), compression="gzip", fillvalue=np.float32(-9999.9)
            )
            ds[0, window.lon_slice, window.lat_slice] = start_values.T
    return window


def corrupt_chunk(path, dataset, coord):
    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info_by_coord(coord)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\x00garbage!" * (info.size // 9))


def test_global_granule_reads_only_the_window(tmp_path, cfg):
    domain = cfg.domain.box()
    window = imerg_window(domain)
    rng = np.random.default_rng(3)
    values = rng.gamma(0.5, 2.0, size=window.grid.shape).astype(np.float32)
    values[0, 0] = -9999.9
    path = tmp_path / imerg.filename(utc(2024, 6, 1, 12), "V07B")
    write_global(path, values, domain)
    # Write, then break, a chunk far from the domain (the dateline): a full read fails, the hyperslab does not.
    with h5py.File(path, "r+") as h5:
        h5["Grid/precipitation"][0, :145, :] = 0.0
    corrupt_chunk(path, "Grid/precipitation", (0, 0, 0))
    with h5py.File(path, "r") as h5, pytest.raises(OSError):
        h5["Grid/precipitation"][...]
    ds = imerg.read_imerg([path], domain)
    expected = np.where(values >= 0, values, np.nan)
    np.testing.assert_array_equal(ds.precipitation.values[0], expected)
    np.testing.assert_allclose(ds.lat.values, window.grid.lats)
    imerg.validate(path, **imerg.validate_settings(imerg.settings(cfg)))  # global size, named, data in the domain


def test_several_granules_stack_in_time_order(tmp_path, cfg):
    domain = cfg.domain.box()
    shape = imerg_window(domain).grid.shape
    paths = []
    for k, start in enumerate([utc(2024, 6, 1, 12, 30), utc(2024, 6, 1, 12)]):
        path = tmp_path / imerg.filename(start, "V07B")
        write_global(path, np.full(shape, k + 1.0, np.float32), domain)
        paths.append(path)
    ds = imerg.read_imerg(paths, domain, variables=("randomError",))
    assert list(ds.time.values) == [np.datetime64("2024-06-01T12:00"), np.datetime64("2024-06-01T12:30")]
    assert ds.precipitation.values[:, 0, 0].tolist() == [2.0, 1.0]
    assert ds.precipitation.shape == (2, *shape)


# ---------------------------------------------------------------- bad input

def test_truncated_file(gpm_dir, tmp_path):
    path = tmp_path / V07
    path.write_bytes((gpm_dir / V07).read_bytes()[:30_000])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        imerg.read_imerg([path], CUT)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_html_saved_as_data(tmp_path):
    path = tmp_path / imerg.filename(utc(2024, 6, 1), "V07B")
    path.write_text("<!DOCTYPE html>\n<html><body>The requested file was not found</body></html>\n")
    with pytest.raises(DataError, match="HTML page saved as data"):
        imerg.read_imerg([path], CUT)


def test_another_product_under_an_imerg_name(gpm_dir, tmp_path):
    path = tmp_path / V07
    shutil.copy(gpm_dir / "2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5", path)
    with pytest.raises(DataError, match=r"not an IMERG file \(AlgorithmID=2ADPR\)"):
        imerg.read_imerg([path], CUT)


def test_name_that_is_not_imerg(gpm_dir, tmp_path):
    path = tmp_path / "granule.HDF5"
    shutil.copy(gpm_dir / V07, path)
    with pytest.raises(DataError, match="not an IMERG half-hourly file name"):
        imerg.read_imerg([path], CUT)


def test_cut_file_fails_download_validation(gpm_dir, tmp_path, cfg):
    cfg.domain.west, cfg.domain.south, cfg.domain.east, cfg.domain.north = -180.0, -90.0, -179.0, -89.0
    with pytest.raises(DataError, match=r"expected \(1, 3600, 1800\)"):
        imerg.validate(gpm_dir / V07, **imerg.validate_settings(imerg.settings(cfg)))


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda v: v.__setitem__(slice(None), -9999.9) or v.__setitem__((3, 4), 1.0), r"holds data in only 1 of \d+ cells inside the domain"),
        (lambda v: v.__imul__(1000.0), r"reaches \d+ mm/h .* above the plausible 400 mm/h"),
    ],
)
def test_near_empty_or_implausible_granule_fails_validation(tmp_path, cfg, spoil, reason):
    """All fill but one pixel, or rates scaled by 1000, used to pass and produce NaN or absurd ensembles."""
    window = imerg_window(cfg.domain.box())
    values = np.random.default_rng(4).gamma(0.5, 2.0, size=window.grid.shape).astype(np.float32)
    values[0, 0] = 150.0  # a heavy but real rate
    path = tmp_path / imerg.filename(utc(2024, 6, 1, 12), "V07B")
    write_global(path, values, cfg.domain.box())
    imerg.validate(path, **imerg.validate_settings(imerg.settings(cfg)))
    spoil(values)
    write_global(path, values, cfg.domain.box())
    with pytest.raises(DataError, match=reason) as caught:
        imerg.validate(path, **imerg.validate_settings(imerg.settings(cfg)))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
