"""The twin's files against the real ones: IMERG V07 and DPR 2A V07 group for group, dataset for dataset;
GEOS-FP on the real grid; the DEM in the ETOPO layout; names and folders of the real servers."""

from __future__ import annotations

from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest

from nrt.grids import IMERG_GRID
from nrt.sources import dpr, geosfp, imerg
from nrt.twin import naming
from twin_helpers import make_tree

REAL_IMERG = "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5"
REAL_DPR = "2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5"
# Attributes whose values must be identical in the twin (the rest, e.g. LongName of DPR, too, where present).
KEY_ATTRS = ("DimensionNames", "_FillValue", "CodeMissingValue", "Units", "units", "LongName", "coordinates",
             "standard_name", "axis", "bounds", "calendar", "CLASS", "NAME")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("twin"))


def objects(group: h5py.Group) -> dict[str, h5py.HLObject]:
    found = {}
    group.visititems(lambda name, obj: found.__setitem__(name, obj))
    return found


def header_keys(value: bytes) -> list[str]:
    return [line.split("=", 1)[0] for line in value.decode().split("\n") if line]


def assert_same_object(real, twin, name: str, sizes: dict[str, int]) -> None:
    assert isinstance(twin, type(real)) or (isinstance(real, h5py.Dataset) == isinstance(twin, h5py.Dataset)), name
    for key in real.attrs:
        assert key in twin.attrs, f"{name}: attribute {key} missing"
        if key in KEY_ATTRS:
            a, b = real.attrs[key], twin.attrs[key]
            assert type(a) is type(b), f"{name}.{key}: {type(a)} vs {type(b)}"
            if isinstance(a, np.ndarray) or isinstance(a, np.generic):
                assert np.asarray(a).dtype == np.asarray(b).dtype, f"{name}.{key} dtype"
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{name}.{key}: {a!r} vs {b!r}"
    if isinstance(real, h5py.Dataset):
        assert real.dtype == twin.dtype or (real.dtype.kind == twin.dtype.kind == "S"), f"{name}: dtype {real.dtype} vs {twin.dtype}"
        assert ("DIMENSION_LIST" in real.attrs) == ("DIMENSION_LIST" in twin.attrs), f"{name}: dimension scales"
        dims = real.attrs.get("DimensionNames")
        if dims is not None:
            expected = tuple(sizes.get(d, n) for d, n in zip(dims.decode().split(","), real.shape))
            assert twin.shape == expected, f"{name}: shape {twin.shape}, expected {expected}"


def test_imerg_matches_the_real_v07_file_group_for_group(tree, gpm_dir):
    twin_path = next((tree / "pps/imerg/early").rglob("*.RT-H5"))
    with h5py.File(gpm_dir / REAL_IMERG, "r") as real, h5py.File(twin_path, "r") as twin:
        real_objects, twin_objects = objects(real), objects(twin)
        assert sorted(real_objects) == sorted(twin_objects)
        sizes = {"time": 1, "lon": 3600, "lat": 1800}
        for name, obj in real_objects.items():
            assert_same_object(obj, twin_objects[name], name, sizes)
        assert header_keys(real.attrs["FileHeader"]) == header_keys(twin.attrs["FileHeader"])
        assert real.attrs["FileInfo"] == twin.attrs["FileInfo"]
        assert twin["Grid"].attrs["GridHeader"] == real["Grid"].attrs["GridHeader"]
        header = twin.attrs["FileHeader"].decode()
        assert f"FileName={twin_path.name};" in header and "ProductVersion=V07B;" in header
        # The dimension scales point where the real ones do.
        precip = twin["Grid/precipitation"]
        assert [precip.dims[i][0].name for i in range(3)] == ["/Grid/time", "/Grid/lon", "/Grid/lat"]
        assert np.allclose(twin["Grid/lat"][:], IMERG_GRID.lats) and np.allclose(twin["Grid/lon"][:], IMERG_GRID.lons)


def test_imerg_is_chunked_like_nasa_and_writes_only_the_domain_chunks(tree):
    twin_path = next((tree / "pps/imerg/early").rglob("*.RT-H5"))
    with h5py.File(twin_path, "r") as f:
        precip = f["Grid/precipitation"]
        assert precip.chunks == (1, 145, 1800) and precip.compression == "gzip"
        assert f["Grid/probabilityLiquidPrecipitation"].chunks == (1, 291, 1800)
        # Iowa + 3° spans IMERG longitude columns 803..928: lon blocks 5 and 6 of 145, nothing else stored.
        assert precip.id.get_num_chunks() == 2
        assert f["Grid/Intermediate/IRprecipitation"].id.get_num_chunks() == 0
        assert precip[0, 0, 0] == np.float32(-9999.9)  # unwritten chunks read as the fill value
        lon = f["Grid/lon"][:]
        inside = precip[0, (lon > -96) & (lon < -91), :]
        assert (inside[:, (f["Grid/lat"][:] > 41) & (f["Grid/lat"][:] < 43)] >= 0).all()
    assert twin_path.stat().st_size < 2_000_000


def test_dpr_matches_the_real_v07_fs_layout(tree, gpm_dir):
    twin_path = next((tree / "pps/radar/DprL2").glob("*.RT-H5"))
    with h5py.File(gpm_dir / REAL_DPR, "r") as real, h5py.File(twin_path, "r") as twin:
        real_fs, twin_fs = objects(real["FS"]), objects(twin["FS"])
        assert sorted(real_fs) == sorted(twin_fs)
        nscan = twin["FS/Latitude"].shape[0]
        sizes = {"nscan": nscan, "nray": 49}
        for name, obj in real_fs.items():
            assert_same_object(obj, twin_fs[name], f"FS/{name}", sizes)
        assert sorted(real.attrs) == sorted(twin.attrs)
        for key in real.attrs:
            assert header_keys(real.attrs[key]) == header_keys(twin.attrs[key]), key
        assert header_keys(real["FS"].attrs["FS_SwathHeader"]) == header_keys(twin["FS"].attrs["FS_SwathHeader"])
        assert "AlgorithmRuntimeInfo" in twin
        # About 30 minutes of scans every 0.7 s, 49 rays.
        assert twin["FS/SLV/precipRateNearSurface"].shape == (nscan, 49) and 2560 <= nscan <= 2580
        seconds = twin["FS/ScanTime/SecondOfDay"][:]
        assert np.allclose(np.diff(seconds), 0.7, atol=0.002)


def test_geosfp_files_are_on_the_real_grid(tree):
    files = sorted((tree / naming.NCCS / "forecast").rglob("*.nc4"))
    assert {geosfp.collection_of(p.name) for p in files} == {geosfp.SLV, geosfp.FLX}
    wanted = {geosfp.SLV: {"TQV", "TQL", "T2M", "QV2M", "U10M", "V10M", "SLP"}, geosfp.FLX: {"PRECTOT", "PRECCON"}}
    for path in files:
        with netCDF4.Dataset(path) as nc:
            assert nc.dimensions["lon"].size == 1152 and nc.dimensions["lat"].size == 721
            assert np.allclose(nc["lon"][:2], [-180.0, -179.6875]) and np.allclose(nc["lat"][[0, -1]], [-90, 90])
            for var in wanted[geosfp.collection_of(path.name)]:
                v = nc[var]
                assert v.dimensions == ("time", "lat", "lon") and v.dtype == np.float32 and v.shape == (1, 721, 1152)
            values = nc["T2M"][0] if "T2M" in nc.variables else nc["PRECTOT"][0]
            assert np.ma.getmaskarray(values).mean() > 0.95  # only the twin's region is written


def test_dem_is_etopo_style(tree):
    with netCDF4.Dataset(tree / naming.DEM_FILE) as nc:
        assert {"lat", "lon", "z"} <= set(nc.variables)
        assert nc["z"].dimensions == ("lat", "lon") and nc["z"].units == "m"
        lat = nc["lat"][:]
        assert np.allclose(np.diff(lat), 0.01) and (np.diff(nc["lon"][:]) > 0).all()


def test_names_and_folders_are_the_real_servers(tree):
    names = [p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()]
    imerg_files = [n for n in names if n.startswith("pps/imerg/")]
    assert imerg_files and all(n.startswith("pps/imerg/early/202406/3B-HHR-E.MS.MRG.3IMERG.20240601-S") for n in imerg_files)
    assert all(imerg.parse_name(Path(n).name) is not None and n.endswith(".V07B.RT-H5") for n in imerg_files)
    gesdisc = [n for n in names if n.startswith("gesdisc/")]
    assert gesdisc and all(n.startswith("gesdisc/data/GPM_L3/GPM_3IMERGHHE.07/2024/153/") and n.endswith(".V07B.HDF5") for n in gesdisc)
    dpr_files = [n for n in names if n.startswith("pps/radar/")]
    assert dpr_files == ["pps/radar/DprL2/2A.GPM.DPR.V920211125.20240601-S120257-E123257.V07A.RT-H5"]
    assert dpr.parse_name(Path(dpr_files[0]).name) is not None
    fcst = [n for n in names if n.startswith("nccs/")]
    assert "nccs/datashare/gmao/geos-fp/forecast/Y2024/M06/D01/H12/GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_12+20240601_1230.V01.nc4" in fcst
    assert not [n for n in names if Path(n).name.startswith(".")]  # no temp files left behind
