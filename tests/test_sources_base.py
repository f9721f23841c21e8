"""`FilePattern`: one spec that parses and composes file names."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nrt.sources import dpr, geosfp, imerg
from nrt.sources.base import FilePattern

GEOS = FilePattern("GEOS.fp.fcst.{collection}.{init:%Y%m%d_%H}+{valid:%Y%m%d_%H%M}.{version}.nc4",
                   collection=r"tavg1_2d_(?:slv|flx)_Nx", version=r"V\d{2}")


def test_a_composed_name_parses_back_to_its_fields():
    name = GEOS.compose(collection="tavg1_2d_slv_Nx", init=datetime(2024, 6, 1, 6), valid=datetime(2024, 6, 1, 8, 30),
                        version="V01")
    assert name == "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_0830.V01.nc4"
    assert GEOS.parse(name) == {"collection": "tavg1_2d_slv_Nx", "init": datetime(2024, 6, 1, 6),
                                "valid": datetime(2024, 6, 1, 8, 30), "version": "V01"}


def test_a_datetime_spread_over_fields_and_a_zero_padded_int():
    name = "3B-HHR-E.MS.MRG.3IMERG.20240229-S233000-E235959.1410.V07B.RT-H5"
    fields = imerg.FILE_PATTERN.parse(name)
    assert fields["start"] == datetime(2024, 2, 29, 23, 30) and fields["minutes"] == 1410 and fields["run"] == "-E"
    assert imerg.filename(imerg.parse_name(name).start) == name  # the module composes with the same spec


@pytest.mark.parametrize("name", [
    "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240631_06+20240601_0830.V01.nc4",  # no June 31st
    "GEOS.fp.fcst.tavg1_2d_xyz_Nx.20240601_06+20240601_0830.V01.nc4",  # a collection the regex refuses
    "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_0830.V01.nc4.part",
])
def test_names_that_do_not_fit_parse_to_none(name):
    assert GEOS.parse(name) is None


def test_a_repeated_field_must_repeat_its_value():
    pattern = FilePattern("{kind}/{kind}.nc", kind="[a-z]+")
    assert pattern.parse("rain/rain.nc") == {"kind": "rain"}
    assert pattern.parse("rain/snow.nc") is None


def test_a_field_without_a_regex_or_spec_is_refused():
    with pytest.raises(ValueError, match="'what' needs a regex"):
        FilePattern("{what}.nc")


def test_an_optional_part_parses_to_none_when_absent_and_is_left_out_when_none():
    pattern = FilePattern("{kind}[.{orbit:06d}].h5", kind="[a-z]+")
    assert pattern.parse("rain.000144.h5") == {"kind": "rain", "orbit": 144}
    assert pattern.parse("rain.h5") == {"kind": "rain", "orbit": None}
    assert pattern.compose(kind="rain", orbit=None) == "rain.h5" and pattern.compose(kind="rain", orbit=7) == "rain.000007.h5"
    assert pattern.parse("rain.144.h5") is None


START, END = datetime(2022, 8, 18, 23, 41, 28), datetime(2022, 8, 19, 0, 11, 27)


@pytest.mark.parametrize("module, fields", [
    (dpr, {"algorithm": "V920211125", "start": START, "end": END, "orbit": None, "version": "V07A", "ext": "RT-H5"}),
    (dpr, {"algorithm": "V9-20211125", "start": START, "end": END, "orbit": 48812, "version": "V07A", "ext": "HDF5"}),
    (geosfp, {"stream": "fcst", "collection": geosfp.SLV, "init": datetime(2024, 6, 1, 6), "valid": datetime(2024, 6, 1, 8, 30),
              "version": "V01"}),
    (geosfp, {"stream": "asm", "collection": geosfp.FLX, "init": None, "valid": datetime(2024, 6, 1, 8, 30), "version": "V01"}),
])
def test_dpr_and_geosfp_names_compose_and_parse_back_to_the_same_fields(module, fields):
    name = module.FILE_PATTERN.compose(**fields)
    parsed = module.FILE_PATTERN.parse(name)
    if module is dpr:  # the name spells only the end's clock time
        assert parsed.pop("end") == datetime(1900, 1, 1, 0, 11, 27)
        fields = {k: v for k, v in fields.items() if k != "end"}
    assert parsed == fields
    rf = module.parse_name(name)
    assert rf is not None and rf.name == name


def test_module_names_use_the_pattern():
    utc = timezone.utc
    assert dpr.nrt_filename(START.replace(tzinfo=utc), END.replace(tzinfo=utc)) == \
        "2A.GPM.DPR.V920211125.20220818-S234128-E001127.V07A.RT-H5"
    assert geosfp.forecast_filename(geosfp.SLV, datetime(2024, 6, 1, 6, tzinfo=utc), datetime(2024, 6, 1, 8, 30, tzinfo=utc)) == \
        "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_0830.V01.nc4"
    assert geosfp.asm_filename(geosfp.FLX, datetime(2024, 6, 1, 8, 30, tzinfo=utc)) == "GEOS.fp.asm.tavg1_2d_flx_Nx.20240601_0830.V01.nc4"


def test_the_real_gpm_file_names_parse(gpm_dir):
    names = sorted(p.name for p in gpm_dir.rglob("*") if p.is_file() and p.name.startswith(("2A.GPM.DPR.", "3B-HHR")))
    assert len(names) >= 5
    for name in names:
        module = dpr if name.startswith("2A.") else imerg
        rf = module.parse_name(name)
        assert rf is not None, name
        fields = module.FILE_PATTERN.parse(name)
        assert module.FILE_PATTERN.compose(**fields) == name
